"""Train a bee detector.

    python train.py                                   # synthetic bees, no network needed
    python train.py +experiment=honeybee_ssd300_resnet50 trainer=gpu
    python train.py run_dir=outputs/synthetic/<stamp> ckpt_path=last   # resume a killed run
    python train.py --base_network resnet-50 --use_pretrained_model 0 --epochs 2   # the built-in detector's names

As SageMaker's script-mode entry point it reads the job's `--key value` hyperparameters and SM_*
variables (beedet/sagemaker/training_job.py). The run directory is printed last.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from beedet.assembly import build_datamodule, build_system_for_data, build_trainer
from beedet.reporting.run_report import count_threshold_source, hparams_for_logging, report_data, report_run
from beedet.sagemaker.training_job import job_failure_reported, script_arguments
from beedet.training.best_checkpoint import validate_best_checkpoint


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    # workers=True also seeds each DataLoader worker, so augmentation is reproducible per seed.
    pl.seed_everything(cfg.seed, workers=True)

    with job_failure_reported():  # in a SageMaker job, why the run stopped becomes the job's FailureReason
        # Labels first: the class map sizes the head; bad records are reported (or stop a strict run) before training.
        datamodule = build_datamodule(cfg.data, cfg.augment)
        datamodule.load_labels()
        report_data(run_dir, datamodule)

        system = build_system_for_data(cfg, datamodule)
        trainer = build_trainer(cfg)
        trainer.fit(system, datamodule=datamodule, ckpt_path=cfg.ckpt_path)

        # Report the best checkpoint, not the last epoch: the file a user deploys, which evaluate.py must
        # reproduce. Validated once more, logged once under best/ (not as one more val/ point).
        best = validate_best_checkpoint(trainer, system, datamodule)
        if trainer.is_global_zero:
            report_run(run_dir, system.last_validation, system.class_names, [datamodule.reports["val"]],
                       checkpoint=best.path, count_threshold_source=count_threshold_source(cfg.evaluation.count_threshold),
                       extra=best.summary(), title="beedet training run: best checkpoint on the validation split",
                       logger=trainer.logger, hparams=hparams_for_logging(cfg, HydraConfig.get().runtime.choices))
            print(f"run dir: {run_dir}")
        return float(system.last_validation.metrics.stats["mAP"])


if __name__ == "__main__":
    # `--key value` hyperparameters (a SageMaker job's, or typed locally) become Hydra overrides.
    sys.argv[1:] = script_arguments(sys.argv[1:])
    main()
