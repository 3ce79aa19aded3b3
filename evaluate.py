"""Evaluate a trained checkpoint: COCO metrics, a readable report, and overlay images.

    python evaluate.py ckpt=outputs/synthetic/<stamp>/checkpoints/best.ckpt
    python evaluate.py ckpt=... data=honeybee data.root=../shared/data/honeybee-mini

Writes metrics.json, report.md and overlays/ into its run dir (printed on the last line).
With no data=..., it evaluates on the checkpoint's own validation split, so the numbers match
the metrics.json of the training run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from beedet.assembly import build_datamodule, load_system
from beedet.reporting import final_metrics, metrics_markdown
from beedet.visualize import overlay_predictions, save_image

log = logging.getLogger("beedet.evaluate")


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    system, train_cfg = load_system(cfg.ckpt)
    data_cfg = cfg.data if cfg.get("data") is not None else train_cfg.data
    # No augmentation here: validation images go in as stored, boxes come back in their pixels.
    datamodule = build_datamodule(data_cfg, batch_size=cfg.batch_size, num_workers=cfg.num_workers)
    datamodule.load_labels()
    if datamodule.class_names != system.class_names:
        raise ValueError(f"the data's classes {datamodule.class_names} differ from the checkpoint's {system.class_names}")

    # The training run's precision by default: bf16 validation numbers differ from fp32 ones.
    precision = cfg.precision or train_cfg.trainer.get("precision", "32-true")
    trainer = pl.Trainer(accelerator=cfg.accelerator, devices=1, precision=precision, logger=False, enable_checkpointing=False, enable_model_summary=False)
    trainer.validate(system, datamodule=datamodule, verbose=False)
    metrics = final_metrics(system.last_metrics, checkpoint=str(Path(cfg.ckpt).resolve()))
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (run_dir / "report.md").write_text(metrics_markdown(metrics, system.class_names, [datamodule.reports["val"]]))

    # Overlays of the first images that contain objects: misses and false positives at a glance.
    overlay_dir = run_dir / "overlays"
    overlay_dir.mkdir(exist_ok=True)
    dataset = datamodule.val_dataset
    chosen = [i for i, r in enumerate(datamodule.val_records) if r.num_boxes][: cfg.num_overlays]
    for i in chosen:
        image, target = dataset[i]
        (prediction,) = system.detect([image])
        drawn = overlay_predictions(image, target, prediction, system.class_names, cfg.score_threshold)
        # Index first: val images from different folders may share a file name.
        save_image(drawn, overlay_dir / f"{i:05d}_{datamodule.val_records[i].image_path.stem}.jpg")

    log.info("mAP %.4f  AP50 %.4f  AP75 %.4f", metrics["mAP"], metrics["AP50"], metrics["AP75"])
    print(f"run dir: {run_dir}")
    return float(metrics["mAP"])


if __name__ == "__main__":
    main()
