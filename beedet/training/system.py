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

from collections import OrderedDict
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
from torchvision.models.detection.ssd import SSD
from torchvision.ops import box_iou

from beedet.checkpointing import PAYLOAD_KEY, CheckpointPayload
from beedet.data.dataset import images_to_float
from beedet.data.records import ImageRecord
from beedet.evaluation.coco_metrics import evaluate_records
from beedet.evaluation.counting import FIXED_COUNT_THRESHOLD, CountMetrics, choose_count_threshold, count_metrics
from beedet.evaluation.detection_quality import detection_quality, f1_curve, match_by_class
from beedet.evaluation.results import DEFAULT_MAX_DETECTIONS, CocoMetrics, ValidationResult
from beedet.inference.test_time_flips import TestTimeFlips, detect_with_flips
from beedet.inference.tiling import Slicing, detect_sliced, detect_sliced_frames, resize_long_side, tile_grid

OptimizerFactory = Callable[..., Optimizer]
SchedulerFactory = Callable[..., LRScheduler]

#: COCO summary keys logged in the headline group, and COCO's area-range keys (see _log_validation).
_HEADLINE_STATS = ("mAP", "AP50")
_COCO_AREA_STATS = ("AP_small", "AP_medium", "AP_large", "AR_small", "AR_medium", "AR_large")
_SHOWN_OR_AREA_STATS = frozenset(_HEADLINE_STATS + _COCO_AREA_STATS)

#: With sliced validation, a ground-truth box belongs to a tile's loss when at least this share of
#: its area lies inside the tile: the ``min_visibility`` of conf/augment/tiled.yaml and scaled.yaml,
#: which decide the same for the training crops.
TILE_MIN_VISIBILITY = 0.3


class DetectionModule(pl.LightningModule):
    """Trains and validates a detection network.

    Args:
        net: a torchvision-style detector (``SSD``): ``net(images, targets)`` returns a loss dict
            in training mode, ``net(images)`` returns per-image detections in eval mode.
        class_names: name of each class id (0-based, no background entry).
        optimizer: builds the optimizer from the parameters (a ``functools.partial``).
        scheduler: builds an lr schedule from ``(optimizer, total_steps, time_fraction)``, stepped
            every batch; ``time_fraction`` is None, or with ``trainer.max_time`` a callable giving
            the share of the time budget spent (``beedet.training.schedules``).
        run_config: the resolved run config, stored in checkpoints so that ``evaluate.py`` and
            ``beedet.predict`` can rebuild exactly this network and data. The module never reads it.
        slicing: predict every image as overlapping tiles (``beedet.inference.tiling``) instead of squashing
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
        test_time_flips: also predict every network input mirrored and fuse the views by score
            voting (``beedet.inference.test_time_flips``), in :meth:`detect` and so everywhere
            ``slicing`` applies; one more forward pass per view. None: the input alone.

    After each validation epoch ``last_validation`` holds its :class:`ValidationResult`: the COCO
    metrics, the count errors at the threshold in use and those at the best threshold for that
    validation set (the same object when ``count_threshold`` is None), precision / recall / F1
    and the confusion matrix at the threshold in use, the F1-confidence curve, the counts and
    quality at :attr:`fixed_count_threshold` and the validation loss. ``last_validation_step`` is
    the optimizer step whose weights it validated; None before any validation and after Lightning's
    sanity check (a few batches, not the whole set).

    What validation logs (one group per intent, so TensorBoard opens on what matters):

    * ``val/``: the headline numbers: ``mAP`` (checkpoints monitor it), ``AP50``, ``loss``,
      ``precision``, ``recall``, ``F1`` and ``count_MAE`` at :attr:`fixed_count_threshold`
      (comparable across epochs), ``count_MAE_tuned`` and ``count_threshold_tuned`` (the best
      threshold for that epoch's validation set and its MAE: optimistic, for reference).
    * ``val_detail/``: the rest of COCO's summary (``AP75``, ``AR1``, ``AR10``,
      ``AR<max_detections>``), the loss terms, count RMSE and bias at the fixed threshold.
    * ``val_per_class/<metric>/<class>``: ``AP``, ``AP50``, ``precision``, ``recall``, ``F1``,
      ``count_MAE``; a class without ground truth has no AP, AP50 or recall line.
    * ``val_per_size/<metric>/<bin>``: ``AP``, ``AP50``, ``recall50`` per size bin. COCO's
      small/medium/large (32 px, 96 px edges) are not logged when size bins replace them (bees
      fall nearly all in "small", which then repeats mAP, and medium/large are -1 all run); without
      size bins they are logged as ``AP/COCO_small`` etc., except those without ground truth (-1).
    * Logged for the SageMaker metric lines and callbacks only, not in TensorBoard (they repeat a
      line): ``val/recall50_smallest`` (the smallest size bin's recall50) and ``val/count_threshold``
      (the fixed threshold: a flat line).
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
        test_time_flips: TestTimeFlips | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.class_names = list(class_names)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.run_config = run_config
        self.slicing = slicing
        self.test_time_flips = test_time_flips
        self.size_bins = [float(edge) for edge in size_bins] if size_bins else None
        self.max_detections = int(max_detections)
        self.count_threshold = None if count_threshold is None else float(count_threshold)
        self.last_validation: ValidationResult | None = None
        self.last_validation_step: int | None = None
        # Per image: (image id, truth, prediction, loss sums or None); see validation_step.
        self._val_outputs: list[tuple[int, dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray | None]] = []

    @property
    def fixed_count_threshold(self) -> float:
        """The score threshold of the per-epoch curves: ``count_threshold`` when one is set, else
        ``beedet.evaluation.counting.FIXED_COUNT_THRESHOLD``, never one chosen on val."""
        return FIXED_COUNT_THRESHOLD if self.count_threshold is None else self.count_threshold

    # ---- the label-convention boundary --------------------------------------------------------
    @staticmethod
    def _to_network_targets(targets: Sequence[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
        return [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]

    @property
    def inference_mode(self) -> str:
        """How :meth:`detect` predicts, for log lines: "sliced inference with test-time flips ['h']"."""
        flips = self.test_time_flips
        return (("sliced" if self.slicing is not None else "whole-frame") + " inference"
                + (f" with test-time flips {list(flips.views)}" if flips is not None else ""))

    @torch.no_grad()
    def detect(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Detections for float (3, H, W) images in [0, 1] (or uint8 (3, H, W), made float on the
        device) of any size: per image ``boxes`` (N, 4) xyxy in that image's pixels, ``scores`` (N,),
        ``labels`` (N,) 0-based class ids. Slices each image into tiles when ``slicing`` is set.
        Keeps the network's train/eval mode."""
        was_training = self.net.training
        self.net.eval()
        try:
            images = images_to_float([img.to(self.device) for img in images])
            if self.slicing is None:
                return self._detect_whole(images)
            return self._detect_sliced(images)
        finally:
            self.net.train(was_training)

    def _detect_sliced(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Sliced detections of ``images`` (already on the device). On a GPU the tiles of all the
        images share forward passes (``detect_sliced_frames``), so that a frame's 9 inputs do not
        make a batch of their own: one frame per pass left an H200 at 0.10 validation batches/s
        (issue 17; the batched path is not yet measured there). On a CPU each frame goes alone, its
        tiles in one pass: batches across frames gave 0.76x the frames/s on 2 cores
        (bench/sliced_inference.py). The detections are the same either way."""
        if self.device.type == "cpu":
            return [detect_sliced(self._detect_whole, image, self.slicing) for image in images]
        return detect_sliced_frames(self._detect_whole, images, self.slicing)

    def _detect_whole(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Each image squashed to the input, boxes mapped back: one eval-mode forward pass, or one
        per view with ``test_time_flips`` (the views fused, ``beedet.inference.test_time_flips``)."""
        if self.test_time_flips is not None:
            return detect_with_flips(self._forward_detect, images, self.test_time_flips)
        return self._forward_detect(images)

    def _forward_detect(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        outputs = self.net(images)
        return [{"boxes": o["boxes"], "scores": o["scores"], "labels": o["labels"] - 1} for o in outputs]

    # ---- training -----------------------------------------------------------------------------
    def training_step(self, batch: tuple[list[Tensor], list[dict[str, Tensor]]], batch_idx: int) -> Tensor:
        """One step on a batch already on the device. Training batches hold uint8 (3, H, W) images
        (``beedet.data.dataset``: a quarter of float32's bytes to pin and copy); they become float32
        in [0, 1] here, on the device, as the network wants them. Float images pass as they are."""
        images, targets = batch
        images = images_to_float(images)
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
        # "name" is the tag LearningRateMonitor logs the rate under (its default: "lr-AdamW").
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"}}

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
        detections, losses = self._detect_with_loss(images, targets)
        for target, det, loss in zip(targets, detections, losses):
            truth = {k: target[k].cpu().numpy() for k in ("boxes", "labels", "orig_size")}
            pred = {k: v.float().cpu().numpy() if k != "labels" else v.cpu().numpy() for k, v in det.items()}
            self._val_outputs.append((int(target["image_id"]), truth, pred, loss))

    # ---- validation loss ----------------------------------------------------------------------
    # The network returns losses only in training mode, where batch norm would normalise with the
    # validation batch's statistics and move its running averages. Instead the eval-mode network
    # runs its parts as SSD.forward does (transform, backbone, head, anchors) once, and both the
    # loss (SSD's anchor matching and compute_loss) and the detections (its post-processing) are
    # read from that one pass: no second forward, no batch-norm state touched, the detections
    # identical to detect()'s (with test-time flips, that pass is the unflipped view's). With
    # slicing, detections come from detect_sliced and the loss from one more pass over the same
    # tiles (see _tile_loss_inputs).

    @torch.no_grad()
    def _detect_with_loss(
        self, images: list[Tensor], targets: Sequence[dict[str, Tensor]]
    ) -> tuple[list[dict[str, Tensor]], list[np.ndarray | None]]:
        """:meth:`detect`'s detections of float (3, H, W) ``images`` and, per image, the loss sums
        float64 (3,) = (classification, box regression, positive anchors): torchvision's SSD loss
        times max(1, positive anchors) of that image, so that sums over images divided by their
        positive anchors give the loss of them all as one batch. ``targets``: per image ``boxes``
        (N, 4) xyxy pixels of that image, ``labels`` (N,) 0-based. Losses are None for a network
        that is not a torchvision ``SSD``."""
        if not isinstance(self.net, SSD):
            return self.detect(images), [None] * len(images)
        was_training = self.net.training
        self.net.eval()
        try:
            images = images_to_float([img.to(self.device) for img in images])
            truth = [{key: value.to(self.device) for key, value in t.items()} for t in self._to_network_targets(targets)]
            if self.slicing is None:
                outputs, sums = self._ssd_pass(images, truth, postprocess=True)
                detections = [{"boxes": o["boxes"], "scores": o["scores"], "labels": o["labels"] - 1} for o in outputs]
                if self.test_time_flips is not None:  # the input's own view is this pass's: the others vote with it
                    detections = detect_with_flips(self._forward_detect, images, self.test_time_flips, unflipped=detections)
                return detections, sums
            detections = self._detect_sliced(images)
            return detections, [self._sliced_loss(image, target) for image, target in zip(images, truth)]
        finally:
            self.net.train(was_training)

    def _ssd_pass(
        self, images: list[Tensor], targets: list[dict[str, Tensor]], *, postprocess: bool
    ) -> tuple[list[dict[str, Tensor]], list[np.ndarray]]:
        """One eval-mode pass of the SSD: with ``postprocess`` its detections (network labels
        1..C, input-image pixels, as ``net(images)`` returns them) and per image the loss sums of
        :meth:`_detect_with_loss`. ``targets`` in the network's labels (1..C)."""
        net = self.net
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        batch, resized = net.transform(images, targets)  # eval mode: the fixed input size, as in training
        features = net.backbone(batch.tensors)
        if isinstance(features, Tensor):
            features = OrderedDict([("0", features)])
        feature_list = list(features.values())
        head_outputs = net.head(feature_list)
        anchors = net.anchor_generator(batch, feature_list)
        rows = []
        for i, (target, image_anchors) in enumerate(zip(resized, anchors)):
            if target["boxes"].numel() == 0:
                matched = torch.full((image_anchors.size(0),), -1, dtype=torch.int64, device=image_anchors.device)
            else:
                matched = net.proposal_matcher(box_iou(target["boxes"], image_anchors))
            # compute_loss divides by the batch's positive anchors and mines negatives per image, so
            # one image at a time times its max(1, positives) gives sums that add up over images.
            one = {key: value[i : i + 1] for key, value in head_outputs.items()}
            loss = net.compute_loss([target], one, [image_anchors], [matched])
            positives = (matched >= 0).sum()
            scale = positives.clamp(min=1).to(loss["classification"].dtype)
            rows.append(torch.stack([loss["classification"] * scale, loss["bbox_regression"] * scale, positives.to(scale.dtype)]))
        sums = list(torch.stack(rows).double().cpu().numpy())  # one device sync per batch
        if not postprocess:
            return [], sums
        detections = net.postprocess_detections(head_outputs, anchors, batch.image_sizes)
        return net.transform.postprocess(detections, batch.image_sizes, original_sizes), sums

    def _sliced_loss(self, image: Tensor, target: dict[str, Tensor]) -> np.ndarray:
        """The loss sums of one frame over the inputs sliced validation shows the network."""
        pieces = self._tile_loss_inputs(image, target["boxes"], target["labels"])
        total = np.zeros(3)
        for start in range(0, len(pieces), self.slicing.batch_size):
            chunk = pieces[start : start + self.slicing.batch_size]
            _, sums = self._ssd_pass([crop for crop, _ in chunk], [t for _, t in chunk], postprocess=False)
            total += np.sum(sums, axis=0)
        return total

    def _tile_loss_inputs(self, image: Tensor, boxes: Tensor, labels: Tensor) -> list[tuple[Tensor, dict[str, Tensor]]]:
        """The network inputs of sliced validation for one float (3, H, W) frame with ground truth
        ``boxes`` (N, 4) xyxy frame pixels and ``labels`` (N,): the tiles ``detect_sliced`` cuts
        (after the ``long_side`` resize), each with the boxes that lie at least
        :data:`TILE_MIN_VISIBILITY` inside it, clipped to it, in its pixels (the rule the training
        crops follow), plus the whole frame when ``slicing.full_frame``. The loss of sliced
        validation is of what the network sees there, not of the frame squashed whole, which
        tiled training never shows it."""
        slicing = self.slicing
        if slicing.long_side is not None:
            image, (sx, sy) = resize_long_side(image, slicing.long_side)
            boxes = boxes * boxes.new_tensor([sx, sy, sx, sy])
        height, width = int(image.shape[-2]), int(image.shape[-1])
        tiles = tile_grid(width, height, slicing.tile_size, slicing.overlap)
        whole = {"boxes": boxes, "labels": labels}
        if len(tiles) == 1 and not slicing.full_frame:
            return [(image, whole)]
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        pieces = []
        for x0, y0, x1, y1 in tiles.tolist():
            offset = boxes.new_tensor([x0, y0, x0, y0])
            clipped = torch.maximum(torch.minimum(boxes, boxes.new_tensor([x1, y1, x1, y1])), offset)
            inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
            keep = (inside > 0) & (inside >= TILE_MIN_VISIBILITY * area)
            pieces.append((image[:, y0:y1, x0:x1], {"boxes": clipped[keep] - offset, "labels": labels[keep]}))
        if slicing.full_frame:
            pieces.append((image, whole))
        return pieces

    @staticmethod
    def _mean_loss(outputs: list) -> dict[str, float] | None:
        """The validation loss of all images as one batch (their loss sums over their positive
        anchors), or None when the network gives none."""
        sums = [item[3] for item in outputs if len(item) > 3 and item[3] is not None]
        if not sums:
            return None
        classification, box, positives = np.sum(sums, axis=0)
        scale = max(1.0, float(positives))
        return {"total": float(classification + box) / scale, "classification": float(classification) / scale,
                "box": float(box) / scale}

    # ---- validation epoch end ------------------------------------------------------------------
    def on_validation_epoch_end(self) -> None:
        outputs = self._gather(self._val_outputs)
        self._val_outputs = []
        if not outputs:
            return
        metrics = self._evaluate(outputs)
        counts, oracle_counts = self._count(outputs)
        fixed = self.fixed_count_threshold
        fixed_counts = counts if counts.threshold == fixed else self._count_at(outputs, fixed)
        truths = [item[1] for item in outputs]
        predictions = [item[2] for item in outputs]
        # One per-class matching serves every threshold (better-scored detections match first).
        matches = match_by_class(truths, predictions, len(self.class_names), max_detections=self.max_detections)
        quality = detection_quality(truths, predictions, self.class_names, counts.threshold, matches=matches)
        fixed_quality = quality if fixed == counts.threshold else detection_quality(
            truths, predictions, self.class_names, fixed, matches=matches)
        self.last_validation = ValidationResult(
            metrics, counts, oracle_counts, quality=quality, f1_curve=f1_curve(matches, self.class_names),
            fixed_counts=fixed_counts, fixed_quality=fixed_quality, loss=self._mean_loss(outputs),
        )
        trainer = self._trainer  # None when called without one (tests, scripts)
        self.last_validation_step = None if trainer is None or trainer.sanity_checking else trainer.global_step
        self._log_validation(self.last_validation)

    def _log_validation(self, result: ValidationResult) -> None:
        """Log ``result`` under the groups of the class docstring. Every rank logs the same numbers
        (all ranks evaluated the gathered set), so checkpoint and early-stopping callbacks agree
        across processes without another reduction."""
        metrics, stats = result.metrics, result.metrics.stats
        counts = result.fixed_counts or result.counts
        quality = result.fixed_quality
        self.log("val/mAP", float(stats["mAP"]), prog_bar=True)
        headline = {"val/AP50": stats["AP50"], "val/count_MAE": counts.overall["MAE"],
                    "val/count_MAE_tuned": result.oracle_counts.overall["MAE"],
                    "val/count_threshold_tuned": result.oracle_counts.threshold}
        if quality is not None:
            headline.update({"val/precision": quality.overall.precision, "val/recall": quality.overall.recall,
                             "val/F1": quality.overall.f1})
        detail = {f"val_detail/{key}": value for key, value in stats.items() if key not in _SHOWN_OR_AREA_STATS}
        detail.update({"val_detail/count_RMSE": counts.overall["RMSE"], "val_detail/count_bias": counts.overall["bias"]})
        if result.loss is not None:
            headline["val/loss"] = result.loss["total"]
            detail.update({"val_detail/loss_classification": result.loss["classification"],
                           "val_detail/loss_box": result.loss["box"]})
        per_class: dict[str, Any] = {}
        for name in self.class_names:
            per_class[f"val_per_class/AP/{name}"] = metrics.per_class_AP.get(name)
            per_class[f"val_per_class/AP50/{name}"] = metrics.per_class_AP50.get(name)
            if quality is not None:
                values = quality.per_class[name]
                per_class.update({f"val_per_class/precision/{name}": values.precision,
                                  f"val_per_class/recall/{name}": values.recall, f"val_per_class/F1/{name}": values.f1})
            per_class[f"val_per_class/count_MAE/{name}"] = counts.per_class[name]["MAE"]
        per_size: dict[str, Any] = {}
        for size_bin in metrics.size_bins:
            per_size.update({f"val_per_size/AP/{size_bin.name}": size_bin.AP, f"val_per_size/AP50/{size_bin.name}": size_bin.AP50,
                             f"val_per_size/recall50/{size_bin.name}": size_bin.recall50})
        if not metrics.size_bins:
            # COCO's own area ranges, only where this split has ground truth in them (else -1 all run).
            for key in _COCO_AREA_STATS:
                metric, area = key.split("_")
                if stats.get(key, -1.0) >= 0:
                    per_size[f"val_per_size/{metric}/COCO_{area}"] = stats[key]
        for group in (headline, detail, per_class, per_size):
            self.log_dict({key: float(value) for key, value in group.items() if value is not None})
        # For the SageMaker metric lines (beedet.sagemaker.metrics), not TensorBoard: each repeats a line.
        hidden = {"val/count_threshold": counts.threshold}
        smallest = metrics.size_bins[0] if metrics.size_bins else None
        if smallest is not None and smallest.recall50 is not None:
            hidden["val/recall50_smallest"] = smallest.recall50
        self.log_dict({key: float(value) for key, value in hidden.items()}, logger=False)

    def _gather(self, outputs: list) -> list:
        """All ranks' validation outputs, each image once (DistributedSampler pads with repeats)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[list] = [None] * dist.get_world_size()  # type: ignore[list-item]
            dist.all_gather_object(gathered, outputs)
            outputs = [item for part in gathered for item in part]
        unique = {item[0]: item for item in outputs}
        return [unique[k] for k in sorted(unique)]

    def _evaluate(self, outputs: list) -> CocoMetrics:
        records, predictions = [], []
        for image_id, truth, pred, *_ in outputs:
            height, width = (int(v) for v in truth["orig_size"])
            records.append(ImageRecord(f"val-{image_id}", width, height, truth["boxes"], truth["labels"]))
            predictions.append(pred)
        return evaluate_records(records, predictions, self.class_names, area_bins=self.size_bins, max_detections=self.max_detections)

    def _count(self, outputs: list) -> tuple[CountMetrics, CountMetrics]:
        """Count errors at the threshold in use and at the best one for these images."""
        truth_labels = [item[1]["labels"] for item in outputs]
        predictions = [item[2] for item in outputs]
        best = choose_count_threshold(truth_labels, predictions, len(self.class_names))
        oracle = count_metrics(truth_labels, predictions, self.class_names, best)
        if self.count_threshold is None or self.count_threshold == best:
            return oracle, oracle
        return count_metrics(truth_labels, predictions, self.class_names, self.count_threshold), oracle

    def _count_at(self, outputs: list, threshold: float) -> CountMetrics:
        return count_metrics([item[1]["labels"] for item in outputs], [item[2] for item in outputs], self.class_names, threshold)

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
