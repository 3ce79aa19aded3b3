"""Train a bee detector.

    python train.py                                   # synthetic bees, no network needed
    python train.py +experiment=honeybee_ssd300_resnet50 trainer=gpu
    python train.py -m optimizer.lr=0.001,0.003,0.01   # a Hydra sweep
    python train.py run_dir=outputs/synthetic/<stamp> ckpt_path=last   # resume a killed run
    python train.py --base_network resnet-50 --epochs 2 --mini_batch_size 8   # the built-in detector's names

As a SageMaker training job's entry point it takes the job's `--key value` hyperparameters
(`--experiment honeybee_tiled --trainer.max_epochs 50`) and the SM_* variables instead, and leaves
the model artifact in SM_MODEL_DIR (beedet/sagemaker/training_job.py, beedet/sagemaker/artifact.py).

Everything configurable lives in conf/; everything that does work lives in beedet/. The run
directory (checkpoints/, tensorboard/, metrics.json, report.md with count_plot.png, data_report.md)
is printed on the last line.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from beedet.assembly import build_datamodule, build_system_for_data, build_trainer
from beedet.reporting import count_threshold_source, hparams_for_logging, report_run
from beedet.sagemaker.artifact import write_model_artifact
from beedet.sagemaker.environment import SageMakerEnvironment, running_under_sagemaker
from beedet.sagemaker.training_job import script_arguments

log = logging.getLogger("beedet.train")


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    # workers=True also seeds each DataLoader worker, so augmentation is reproducible per seed.
    pl.seed_everything(cfg.seed, workers=True)

    # Labels first: the class map sizes the network's head, and bad records must be reported
    # (or stop a strict run) before any training time is spent.
    datamodule = build_datamodule(cfg.data, cfg.augment)
    datamodule.load_labels()
    for split, report in datamodule.reports.items():
        log.info("%s data:\n%s", split, report)
    (run_dir / "data_report.md").write_text(datamodule.reports_markdown())

    system = build_system_for_data(cfg, datamodule)
    trainer = build_trainer(cfg)
    trainer.fit(system, datamodule=datamodule, ckpt_path=cfg.ckpt_path)

    # Report the best checkpoint, not the last epoch: that is the file a user deploys, and
    # evaluate.py on it must reproduce these numbers.
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    trainer.validate(system, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    if trainer.is_global_zero:
        metrics = report_run(
            run_dir, system.last_validation, system.class_names, [datamodule.reports["val"]], checkpoint=best,
            count_threshold_source=count_threshold_source(cfg.evaluation.count_threshold),
            title="beedet training run: best checkpoint on the validation split",
            logger=trainer.logger, hparams=hparams_for_logging(cfg, HydraConfig.get().runtime.choices),
        )
        log.info("val mAP %.4f  AP50 %.4f  AP75 %.4f", metrics["mAP"], metrics["AP50"], metrics["AP75"])
        if running_under_sagemaker():
            # What SageMaker keeps as model.tar.gz: the checkpoint plus the serving code.
            write_model_artifact(SageMakerEnvironment.from_env().model_dir, best)
        print(f"run dir: {run_dir}")
    return float(system.last_validation.metrics.stats["mAP"])


if __name__ == "__main__":
    # A SageMaker job's `--key value` hyperparameters and SM_* variables (or the same hyperparameters
    # typed locally) become Hydra overrides before Hydra parses the command line.
    sys.argv[1:] = script_arguments(sys.argv[1:])
    main()
