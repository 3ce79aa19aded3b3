"""Evaluate a trained checkpoint: COCO metrics, a readable report, and overlay images.

    python evaluate.py ckpt=outputs/synthetic/<stamp>/checkpoints/best.ckpt
    python evaluate.py ckpt=... data=honeybee data.root=../shared/data/honeybee-mini
    python evaluate.py ckpt=... val_subset=unseen   # only val images from videos/cameras not in train

Without data=..., the checkpoint's own validation split. Writes metrics.json, report.md (with
count_plot.png and pr_curves.png) and overlays/ into its run dir (printed last).
"""

from __future__ import annotations

from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from beedet.assembly import build_datamodule, evaluation_precision, load_system
from beedet.reporting.overlays import write_overlays
from beedet.reporting.run_report import count_threshold_source, report_run


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    system, train_cfg = load_system(cfg.ckpt, cfg.get("slicing"), cfg.get("tta"))
    # No augmentation here: validation images go in as stored, boxes come back in their pixels.
    subset = {"val_subset": cfg.val_subset} if cfg.get("val_subset") else {}
    datamodule = build_datamodule(cfg.get("data") or train_cfg.data, batch_size=cfg.batch_size,
                                  num_workers=cfg.num_workers, **subset)
    datamodule.load_labels()
    if datamodule.class_names != system.class_names:
        raise ValueError(f"the data's classes {datamodule.class_names} differ from the checkpoint's {system.class_names}")

    # Count at the checkpoint's threshold (chosen on its own validation split) unless told otherwise.
    source = count_threshold_source(OmegaConf.select(train_cfg, "evaluation.count_threshold"), checkpoint=True,
                                    stored=system.count_threshold, override=cfg.count_threshold)
    if cfg.count_threshold is not None:
        system.count_threshold = float(cfg.count_threshold)
    # Float32 by default, as predict and serve run: the metrics describe the boxes users get.
    precision = evaluation_precision(cfg.precision, train_cfg)
    trainer = pl.Trainer(accelerator=cfg.accelerator, devices=1, precision=precision["used"], logger=False,
                         enable_checkpointing=False, enable_model_summary=False)
    trainer.validate(system, datamodule=datamodule, verbose=False)
    metrics = report_run(run_dir, system.last_validation, system.class_names, [datamodule.reports["val"]],
                         checkpoint=str(Path(cfg.ckpt).resolve()), count_threshold_source=source,
                         title=f"beedet evaluation in {precision['used']} precision", extra={"precision": precision})
    write_overlays(system, datamodule.val_dataset, datamodule.val_records, run_dir / "overlays", cfg.num_overlays,
                   cfg.score_threshold, pool=cfg.overlay_pool)
    print(f"run dir: {run_dir}")
    return float(metrics["mAP"])


if __name__ == "__main__":
    main()
