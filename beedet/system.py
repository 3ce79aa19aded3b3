"""The detection system: a LightningModule around a plain torchvision SSD network.

The network (``beedet.models``) knows nothing about training; this module owns what surrounds it:
the loss bookkeeping, the optimizer and schedule, validation with COCO and counting metrics, and
the one place where dataset class ids meet torchvision's background convention.

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
from pytorch_lightning.callbacks import Timer
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from beedet.checkpointing import PAYLOAD_KEY, CheckpointPayload
from beedet.data.records import ImageRecord
from beedet.evaluation.coco_metrics import evaluate_records
from beedet.evaluation.counting import CountMetrics, choose_count_threshold, count_metrics
from beedet.evaluation.results import DEFAULT_MAX_DETECTIONS, CocoMetrics, ValidationResult
from beedet.tiling import Slicing, detect_sliced

OptimizerFactory = Callable[..., Optimizer]
SchedulerFactory = Callable[..., LRScheduler]


class DetectionModule(pl.LightningModule):
    """Trains and validates a detection network.

    Args:
        net: a torchvision-style detector (``SSD``): ``net(images, targets)`` returns a loss dict
            in training mode, ``net(images)`` returns per-image detections in eval mode.
        class_names: name of each class id (0-based, no background entry).
        optimizer: builds the optimizer from the parameters (a ``functools.partial``).
        scheduler: builds an lr schedule from ``(optimizer, total_steps, time_fraction)``, stepped
            every batch; ``time_fraction`` is None, or with ``trainer.max_time`` a callable giving
            the share of the time budget spent (``beedet.schedules``).
        run_config: the resolved run config, stored in checkpoints so that ``evaluate.py`` and
            ``beedet.predict`` can rebuild exactly this network and data. The module never reads it.
        slicing: predict every image as overlapping tiles (``beedet.tiling``) instead of squashing
            it whole into the network's input; validation, ``evaluate.py``, ``beedet.predict`` and
            serving all go through :meth:`detect`, so they all slice alike. None: whole images.
        size_bins: inner edges (px^2 of the stored images, increasing) of the size bins whose AP
            and recall validation reports, usually the training boxes' area terciles
            (``beedet.evaluation.size_bins.size_bin_edges``); None or empty: none. Saved in checkpoints.
        max_detections: detections per image that COCO evaluation keeps (its largest maxDets).
        count_threshold: the score threshold for counting objects. None: after each validation,
            choose the one that counts best on that validation set
            (``beedet.evaluation.counting.choose_count_threshold``); a number: always apply it.
            The threshold in use is saved in checkpoints.

    After each validation epoch ``last_validation`` holds its :class:`ValidationResult`: the COCO
    metrics, the count errors at the threshold in use and those at the best threshold for that
    validation set (the same object when ``count_threshold`` is None).
    """

    def __init__(
        self,
        net: nn.Module,
        class_names: Sequence[str],
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        run_config: dict[str, Any] | None = None,
        slicing: Slicing | None = None,
        size_bins: Sequence[float] | None = None,
        max_detections: int = DEFAULT_MAX_DETECTIONS,
        count_threshold: float | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.class_names = list(class_names)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.run_config = run_config
        self.slicing = slicing
        self.size_bins = [float(edge) for edge in size_bins] if size_bins else None
        self.max_detections = int(max_detections)
        self.count_threshold = None if count_threshold is None else float(count_threshold)
        self.last_validation: ValidationResult | None = None
        self._val_outputs: list[tuple[int, dict[str, np.ndarray], dict[str, np.ndarray]]] = []

    # ---- the label-convention boundary --------------------------------------------------------
    @staticmethod
    def _to_network_targets(targets: Sequence[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
        return [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]

    @torch.no_grad()
    def detect(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Detections for float (3, H, W) images in [0, 1] of any size: per image ``boxes`` (N, 4)
        xyxy in that image's pixels, ``scores`` (N,), ``labels`` (N,) 0-based class ids. Slices
        each image into tiles when ``slicing`` is set. Keeps the network's train/eval mode."""
        was_training = self.net.training
        self.net.eval()
        try:
            images = [img.to(self.device) for img in images]
            if self.slicing is None:
                return self._detect_whole(images)
            return [detect_sliced(self._detect_whole, image, self.slicing) for image in images]
        finally:
            self.net.train(was_training)

    def _detect_whole(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """One eval-mode forward pass: each image squashed to the input, boxes mapped back."""
        outputs = self.net(images)
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
        scheduler = self.scheduler_factory(optimizer, total_steps=total_steps, time_fraction=self._time_budget_fraction())
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _time_budget_fraction(self) -> Callable[[], float] | None:
        """With ``trainer.max_time``, a callable giving the share of that time spent training (from
        Lightning's Timer, which a resumed run restores), so schedules fit the time budget."""
        timer = next((c for c in self.trainer.callbacks if isinstance(c, Timer)), None)
        remaining = timer.time_remaining() if timer is not None else None
        if remaining is None:
            return None
        budget = max(timer.time_elapsed() + remaining, 1e-9)  # the max_time duration, fixed
        return lambda: timer.time_elapsed() / budget

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
        metrics = self._evaluate(outputs)
        counts, oracle_counts = self._count(outputs)
        self.last_validation = ValidationResult(metrics, counts, oracle_counts)
        stats = metrics.stats
        # Every rank logs the same numbers (all ranks evaluated the gathered set), so checkpoint
        # and early-stopping callbacks agree across processes without another reduction.
        self.log("val/mAP", float(stats["mAP"]), prog_bar=True)
        self.log_dict({f"val/{k}": float(v) for k, v in stats.items() if k != "mAP"})
        for name, ap in metrics.per_class_AP.items():
            if ap is not None:
                self.log(f"val/AP/{name}", float(ap))
        for name, ap in metrics.per_class_AP50.items():
            if ap is not None:
                self.log(f"val/AP50/{name}", float(ap))
        for size_bin in metrics.size_bins:
            if size_bin.AP is not None:
                self.log(f"val/AP_size/{size_bin.name}", float(size_bin.AP))
        smallest = metrics.size_bins[0] if metrics.size_bins else None
        if smallest is not None and smallest.recall50 is not None:
            self.log("val/recall50_smallest", float(smallest.recall50))
        self.log_dict({f"val/count/{key}": counts.overall[key] for key in ("MAE", "RMSE", "bias")})
        self.log("val/count/threshold", counts.threshold)
        self.log_dict({f"val/count_MAE/{name}": values["MAE"] for name, values in counts.per_class.items()})

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
        return evaluate_records(records, predictions, self.class_names, area_bins=self.size_bins, max_detections=self.max_detections)

    def _count(self, outputs: list) -> tuple[CountMetrics, CountMetrics]:
        """Count errors at the threshold in use and at the best one for these images."""
        truth_labels = [truth["labels"] for _, truth, _ in outputs]
        predictions = [pred for _, _, pred in outputs]
        best = choose_count_threshold(truth_labels, predictions, len(self.class_names))
        oracle = count_metrics(truth_labels, predictions, self.class_names, best)
        if self.count_threshold is None or self.count_threshold == best:
            return oracle, oracle
        return count_metrics(truth_labels, predictions, self.class_names, self.count_threshold), oracle

    # ---- prediction and checkpoints -----------------------------------------------------------
    def predict_step(self, batch: tuple[list[Tensor], list[dict[str, Tensor]]], batch_idx: int) -> list[dict[str, Tensor]]:
        images, _ = batch
        return self.detect(images)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[PAYLOAD_KEY] = CheckpointPayload.from_config(
            self.run_config or {},
            self.class_names,
            # The threshold in use: the configured one, or the one chosen on the latest validation.
            count_threshold=self.count_threshold if self.last_validation is None else self.last_validation.counts.threshold,
            size_bins=self.size_bins,
        ).to_plain()
