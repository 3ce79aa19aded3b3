"""The detection system: a LightningModule around a plain torchvision SSD network.

The network (``beedet.models``) knows nothing about training; this module owns what surrounds it:
the loss bookkeeping, the optimizer and schedule, validation with COCO metrics, and the one place
where dataset class ids meet torchvision's background convention.

Label contract at this boundary:
    dataset / metrics / users:  class ids 0..C-1, 0 is the first real class ("bee")
    torchvision SSD:            labels 1..C, 0 is background
``_to_network_targets`` adds 1 on the way in; ``detect`` subtracts 1 on the way out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from beedet.data.records import ImageRecord
from beedet.evaluation.coco import CocoMetrics, evaluate_records

OptimizerFactory = Callable[..., Optimizer]
SchedulerFactory = Callable[..., LRScheduler]


class DetectionModule(pl.LightningModule):
    """Trains and validates a detection network.

    Args:
        net: a torchvision-style detector (``SSD``): ``net(images, targets)`` returns a loss dict
            in training mode, ``net(images)`` returns per-image detections in eval mode.
        class_names: name of each class id (0-based, no background entry).
        optimizer: builds the optimizer from the parameters (a ``functools.partial``).
        scheduler: builds an lr schedule from ``(optimizer, total_steps)``; stepped every batch.
        run_config: the resolved run config, stored in checkpoints so that ``evaluate.py`` and
            ``beedet.predict`` can rebuild exactly this network and data. The module never reads it.
    """

    def __init__(
        self,
        net: nn.Module,
        class_names: Sequence[str],
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.class_names = list(class_names)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.run_config = run_config
        self.last_metrics: CocoMetrics | None = None
        self._val_outputs: list[tuple[int, dict[str, np.ndarray], dict[str, np.ndarray]]] = []

    # ---- the label-convention boundary --------------------------------------------------------
    @staticmethod
    def _to_network_targets(targets: Sequence[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
        return [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]

    @torch.no_grad()
    def detect(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Detections for float (3, H, W) images in [0, 1]: per image ``boxes`` (N, 4) xyxy in that
        image's pixels, ``scores`` (N,), ``labels`` (N,) 0-based class ids. Keeps train/eval mode."""
        was_training = self.net.training
        self.net.eval()
        try:
            outputs = self.net([img.to(self.device) for img in images])
        finally:
            self.net.train(was_training)
        return [{"boxes": o["boxes"], "scores": o["scores"], "labels": o["labels"] - 1} for o in outputs]

    # ---- training -----------------------------------------------------------------------------
    def training_step(self, batch: tuple[list[Tensor], list[dict[str, Tensor]]], batch_idx: int) -> Tensor:
        images, targets = batch
        losses = self.net(images, self._to_network_targets(targets))
        loss = losses["classification"] + losses["bbox_regression"]
        n = len(images)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/loss_classification", losses["classification"], batch_size=n)
        self.log("train/loss_box", losses["bbox_regression"], batch_size=n)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        total_steps = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer, total_steps=total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- validation ---------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_outputs = []

    def validation_step(self, batch: tuple[list[Tensor], list[dict[str, Tensor]]], batch_idx: int) -> None:
        images, targets = batch
        for target, det in zip(targets, self.detect(images)):
            truth = {k: target[k].cpu().numpy() for k in ("boxes", "labels", "orig_size")}
            pred = {k: v.float().cpu().numpy() if k != "labels" else v.cpu().numpy() for k, v in det.items()}
            self._val_outputs.append((int(target["image_id"]), truth, pred))

    def on_validation_epoch_end(self) -> None:
        outputs = self._gather(self._val_outputs)
        self._val_outputs = []
        if not outputs:
            return
        self.last_metrics = self._evaluate(outputs)
        stats = self.last_metrics.stats
        # Every rank logs the same numbers (all ranks evaluated the gathered set), so checkpoint
        # and early-stopping callbacks agree across processes without another reduction.
        self.log("val/mAP", float(stats["mAP"]), prog_bar=True)
        self.log_dict({f"val/{k}": float(v) for k, v in stats.items() if k != "mAP"})
        for name, ap in self.last_metrics.per_class_AP.items():
            if ap is not None:
                self.log(f"val/AP/{name}", float(ap))
        for name, ap in self.last_metrics.per_class_AP50.items():
            if ap is not None:
                self.log(f"val/AP50/{name}", float(ap))

    def _gather(self, outputs: list) -> list:
        """All ranks' validation outputs, each image once (DistributedSampler pads with repeats)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[list] = [None] * dist.get_world_size()  # type: ignore[list-item]
            dist.all_gather_object(gathered, outputs)
            outputs = [item for part in gathered for item in part]
        unique = {image_id: (image_id, truth, pred) for image_id, truth, pred in outputs}
        return [unique[k] for k in sorted(unique)]

    def _evaluate(self, outputs: list) -> CocoMetrics:
        records, predictions = [], []
        for image_id, truth, pred in outputs:
            height, width = (int(v) for v in truth["orig_size"])
            records.append(ImageRecord(f"val-{image_id}", width, height, truth["boxes"], truth["labels"]))
            predictions.append(pred)
        return evaluate_records(records, predictions, self.class_names)

    # ---- prediction and checkpoints -----------------------------------------------------------
    def predict_step(self, batch: tuple[list[Tensor], list[dict[str, Tensor]]], batch_idx: int) -> list[dict[str, Tensor]]:
        images, _ = batch
        return self.detect(images)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["beedet"] = {"class_names": self.class_names, "config": self.run_config}
