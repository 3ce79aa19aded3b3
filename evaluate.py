"""Evaluate a trained checkpoint: COCO metrics, a readable report, and overlay images.

    python evaluate.py ckpt=outputs/synthetic/<stamp>/checkpoints/best.ckpt
    python evaluate.py ckpt=... data=honeybee data.root=../shared/data/honeybee-mini
    python evaluate.py ckpt=... val_subset=unseen   # only val images from videos/cameras not in train

Writes metrics.json, report.md (with count_plot.png and pr_curves.png) and overlays/ into its run dir (printed on the
last line). Objects are counted at the checkpoint's count threshold (count_threshold=0.4 overrides).
With no data=..., it evaluates on the checkpoint's own validation split.

The model runs in float32, the precision beedet.predict and beedet.serve answer in, so the metrics
describe the boxes users get; a run trained in bf16-mixed (the GPU trainers) validated in bf16, and
its own metrics.json differs from these in the last digits. precision=bf16-mixed reproduces it.
metrics.json's ``precision`` and report.md say which precision was used.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from beedet.assembly import build_datamodule, load_system
from beedet.reporting import final_metrics, write_run_report
from beedet.system import DetectionModule
from beedet.visualize import overlay_predictions, save_image

log = logging.getLogger("beedet.evaluate")


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    system, train_cfg = load_system(cfg.ckpt, cfg.get("slicing"))
    data_cfg = cfg.data if cfg.get("data") is not None else train_cfg.data
    # No augmentation here: validation images go in as stored, boxes come back in their pixels.
    subset = {"val_subset": cfg.val_subset} if cfg.get("val_subset") else {}
    datamodule = build_datamodule(data_cfg, batch_size=cfg.batch_size, num_workers=cfg.num_workers, **subset)
    datamodule.load_labels()
    if datamodule.class_names != system.class_names:
        raise ValueError(f"the data's classes {datamodule.class_names} differ from the checkpoint's {system.class_names}")

    threshold_source = count_threshold_source(system, train_cfg, cfg.count_threshold)

    precision = evaluation_precision(cfg.precision, train_cfg)
    trainer = pl.Trainer(accelerator=cfg.accelerator, devices=1, precision=precision["used"], logger=False,
                         enable_checkpointing=False, enable_model_summary=False)
    trainer.validate(system, datamodule=datamodule, verbose=False)
    metrics = final_metrics(
        system.last_metrics, checkpoint=str(Path(cfg.ckpt).resolve()), counts=system.last_counts,
        oracle_counts=system.last_oracle_counts, count_threshold_source=threshold_source,
    )
    metrics["precision"] = precision
    write_run_report(run_dir, metrics, system.class_names, [datamodule.reports["val"]], counts=system.last_counts,
                     pr_curves=system.last_metrics.pr_curves)

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

    counting = metrics["counting"]
    log.info("mAP %.4f  AP50 %.4f  AP75 %.4f  count MAE %.3f at score >= %.2f (%s), in %s precision", metrics["mAP"],
             metrics["AP50"], metrics["AP75"], counting["all"]["MAE"], counting["threshold"], counting["threshold_source"],
             precision["used"])
    print(f"run dir: {run_dir}")
    return float(metrics["mAP"])


# beedet.predict and beedet.serve run the network in float32 (float images, no autocast).
SERVING_PRECISION = "32-true"


def evaluation_precision(override: str | None, train_cfg: DictConfig) -> dict[str, str]:
    """The Lightning precision to evaluate in, as metrics.json's ``precision``: ``used``, ``source``
    (``serving``, or ``override``: evaluate's ``precision=``) and ``training`` (the checkpoint's
    trainer.precision). Without an override it is :data:`SERVING_PRECISION`, whatever the training
    run used, so the metrics describe the boxes beedet.predict and beedet.serve answer with."""
    training = str(OmegaConf.select(train_cfg, "trainer.precision", default=None) or SERVING_PRECISION)
    if override is not None:
        return {"used": str(override), "source": "override", "training": training}
    return {"used": SERVING_PRECISION, "source": "serving", "training": training}


def count_threshold_source(system: DetectionModule, train_cfg: DictConfig, override: float | None) -> str:
    """Set the system's count threshold for this evaluation and say where it comes from:
    ``override`` (evaluate's count_threshold) when given, else the checkpoint's, else (a checkpoint
    from before counting) the best one for the data evaluated."""
    if override is not None:
        system.count_threshold = float(override)
        return "evaluate count_threshold override"
    if system.count_threshold is None:
        return "chosen on this data: the checkpoint has no count threshold"
    if OmegaConf.select(train_cfg, "evaluation.count_threshold") is None:
        return "checkpoint: chosen on its training run's validation split"
    return "checkpoint: fixed by its training config evaluation.count_threshold"


if __name__ == "__main__":
    main()
