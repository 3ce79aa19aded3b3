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

from beedet.assembly import build_datamodule, build_network, build_system, build_trainer
from beedet.evaluation.coco import record_box_areas, resolve_size_bins
from beedet.reporting import final_metrics, hparams_for_logging, write_run_report
from beedet.sagemaker.artifact import write_model_artifact
from beedet.sagemaker.environment import SageMakerEnvironment, running_under_sagemaker
from beedet.sagemaker.training_job import local_arguments, sagemaker_argv

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
    (run_dir / "data_report.md").write_text("\n\n".join(r.to_markdown() for r in datamodule.reports.values()))

    # Training box counts per class id: model.class_weight_power > 0 turns them into loss weights.
    net = build_network(cfg.model, num_classes=datamodule.num_classes,
                        class_counts=[datamodule.reports["train"].boxes_per_class[name] for name in datamodule.class_names])
    # Size bins for validation AP: from the training boxes' areas, so they describe the bees the
    # model learnt from and do not move with the validation data (saved in the checkpoint).
    size_bins = resolve_size_bins(cfg.evaluation.size_bins, record_box_areas(datamodule.train_records))
    system = build_system(cfg, net, datamodule.class_names, size_bins=size_bins)
    trainer = build_trainer(cfg)
    trainer.fit(system, datamodule=datamodule, ckpt_path=cfg.ckpt_path)

    # Report the best checkpoint, not the last epoch: that is the file a user deploys, and
    # evaluate.py on it must reproduce these numbers.
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    trainer.validate(system, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    threshold_source = (
        "chosen on this validation split" if cfg.evaluation.count_threshold is None else "training config evaluation.count_threshold"
    )
    metrics = final_metrics(
        system.last_metrics, checkpoint=best, counts=system.last_counts, oracle_counts=system.last_oracle_counts,
        count_threshold_source=threshold_source,
    )
    if trainer.is_global_zero:
        write_run_report(
            run_dir, metrics, system.class_names, [datamodule.reports["val"]], counts=system.last_counts,
            pr_curves=system.last_metrics.pr_curves, title="beedet training run: best checkpoint on the validation split",
        )
        if trainer.logger is not None:
            final = {f"hp/{k}": metrics[k] for k in ("mAP", "AP50", "AP75")}
            final["hp/count_MAE"] = metrics["counting"]["all"]["MAE"]
            trainer.logger.log_hyperparams(hparams_for_logging(cfg, HydraConfig.get().runtime.choices), final)
            trainer.logger.finalize("success")
        log.info("val mAP %.4f  AP50 %.4f  AP75 %.4f", metrics["mAP"], metrics["AP50"], metrics["AP75"])
        if running_under_sagemaker():
            # What SageMaker keeps as model.tar.gz: the checkpoint plus the serving code.
            write_model_artifact(SageMakerEnvironment.from_env().model_dir, best)
        print(f"run dir: {run_dir}")
    return float(metrics["mAP"])


if __name__ == "__main__":
    if running_under_sagemaker():
        # A SageMaker training job passes `--key value` hyperparameters (or only `train`, to an
        # image of its own) and says where data, checkpoints and outputs live in SM_* variables:
        # all of it becomes Hydra overrides before Hydra parses the command line.
        sys.argv[1:] = sagemaker_argv(sys.argv[1:])
    else:
        # `python train.py --base_network resnet-50 --epochs 2`: a SageMaker built-in detector job's
        # hyperparameters (or beedet's own keys as --key value) run locally exactly as in a job.
        sys.argv[1:] = local_arguments(sys.argv[1:])
    main()
