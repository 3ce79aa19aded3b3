"""Turns a composed Hydra config into objects. The only module that calls ``hydra.utils.instantiate``.

Components never see the config: each receives explicit, typed arguments, so it can be built and
tested without Hydra. This module is where config meets code, in the order data flows:
data and augmentation -> network -> system -> trainer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import albumentations as A
import pytorch_lightning as pl
import torch
import torch.nn as nn
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from beedet.checkpointing import AtomicCheckpointIO, InitCheckpointError, load_checkpoint, load_initial_weights
from beedet.data.datamodule import BeeDataModule
from beedet.evaluation.results import DEFAULT_MAX_DETECTIONS
from beedet.evaluation.size_bins import record_box_areas, resolve_size_bins
from beedet.inference.test_time_flips import TestTimeFlips
from beedet.inference.tiling import Slicing
from beedet.models.backbones import weights_from_directory
from beedet.models.freezing import freeze_matching
from beedet.models.losses import class_weights_from_counts
from beedet.training.system import DetectionModule

log = logging.getLogger(__name__)


def build_augment(augment_cfg: DictConfig) -> A.Compose:
    """The training augmentation pipeline (an albumentations ``Compose`` with ``BboxParams``)."""
    return instantiate(augment_cfg, _convert_="all")


def build_datamodule(data_cfg: DictConfig, augment_cfg: DictConfig | None = None, **overrides: Any) -> BeeDataModule:
    """The data module, with the training augmentation wired in when one is given."""
    transform = build_augment(augment_cfg) if augment_cfg is not None else None
    return instantiate(data_cfg, train_transform=transform, **overrides, _convert_="all")


def build_network(
    model_cfg: DictConfig,
    num_classes: int,
    *,
    class_counts: Sequence[int] | None = None,
    weights_dir: str | os.PathLike | None = None,
    **overrides: Any,
) -> nn.Module:
    """The plain detection network. ``num_classes`` counts foreground classes (no background).

    ``weights_dir``: where ``pretrained_backbone`` takes its ImageNet weight file from instead of
    torch hub's cache or the network (``pretrained_dir``, a SageMaker job's ``pretrained`` channel;
    ``beedet.models.backbones.weights_from_directory`` says which file). None: torch hub.

    ``freeze_pattern`` in the model config (optional) is not a builder argument either: parameters
    whose names match it are frozen after building (``beedet.models.freezing``).

    ``class_weight_power`` in the model config is not a builder argument: when it is > 0 and
    ``class_counts`` (training boxes per class id) are given, it becomes the builder's
    ``class_weights`` (``beedet.models.losses.class_weights_from_counts``). Without counts (evaluation,
    prediction) the network is built without weights: they only change the training loss.
    """
    params = OmegaConf.to_container(model_cfg, resolve=True)
    power = float(params.pop("class_weight_power", None) or 0.0)
    freeze_pattern = params.pop("freeze_pattern", None)
    if power > 0 and class_counts is not None and "class_weights" not in overrides:
        overrides["class_weights"] = class_weights_from_counts(class_counts, power)
        log.info("class weights (class_weight_power=%g) for training box counts %s: %s", power, list(class_counts),
                 ", ".join(f"{w:.3g}" for w in overrides["class_weights"]))
    pretrained = overrides.get("pretrained_backbone", params.get("pretrained_backbone"))
    if weights_dir is not None and not pretrained:
        log.warning("pretrained_dir=%s is not used: this network does not start from pretrained weights "
                    "(model.pretrained_backbone is not true)", weights_dir)
    with weights_from_directory(weights_dir) if weights_dir is not None and pretrained else nullcontext():
        net = instantiate(params, num_classes=num_classes, **overrides, _convert_="all")
    if freeze_pattern:
        frozen = freeze_matching(net, freeze_pattern)
        log.info("model.freeze_pattern=%r freezes %d parameter tensors (%s ... %s)", freeze_pattern, len(frozen),
                 frozen[0], frozen[-1])
    return net


def build_system(
    cfg: DictConfig, net: nn.Module, class_names: list[str], *, size_bins: Sequence[float] | None = None
) -> DetectionModule:
    """The LightningModule around ``net``; the resolved config rides along into checkpoints.

    ``size_bins``: inner area edges (px^2) of the validation size bins, derived from the training
    data (:func:`build_system_for_data`; ``cfg.evaluation.size_bins`` says how). ``cfg.evaluation``
    gives ``max_detections`` and ``count_threshold``."""
    return DetectionModule(
        net=net,
        class_names=class_names,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        run_config=OmegaConf.to_container(cfg, resolve=True),
        slicing=build_slicing(cfg.get("slicing")),
        test_time_flips=build_test_time_flips(cfg.get("tta")),
        size_bins=size_bins,
        max_detections=cfg.evaluation.max_detections,
        count_threshold=cfg.evaluation.count_threshold,
    )


def build_system_for_data(cfg: DictConfig, datamodule: BeeDataModule) -> DetectionModule:
    """The network and its system, built for training on ``datamodule``'s loaded labels
    (``load_labels`` first): its class map sizes the head, its training boxes per class become
    loss weights (``model.class_weight_power``), and its training boxes' areas set the validation
    size bins (``evaluation.size_bins``), so that they describe the bees the model learns from,
    do not move with the validation data, and are saved in checkpoints.

    ``cfg.pretrained_dir``: where the network's ImageNet weights come from (:func:`build_network`'s
    ``weights_dir``). ``cfg.init_checkpoint``: an earlier beedet model whose weights the network
    starts from (``beedet.checkpointing.load_initial_weights``: a checkpoint, a model.tar.gz or
    a directory holding one; read before anything is built, and its class names must be the
    data's); the network is then built without ImageNet weights, which those replace. Only the
    weights: the optimizer, schedule and epochs start fresh (``ckpt_path`` resumes a run instead).
    Raises :class:`~beedet.checkpointing.InitCheckpointError` naming the file."""
    init = cfg.get("init_checkpoint")
    start = load_initial_weights(init, datamodule.class_names) if init else None
    train_report = datamodule.reports["train"]
    # Weights the checkpoint replaces are not downloaded (or asked for) first.
    extra = {"pretrained_backbone": False} if start is not None and "pretrained_backbone" in cfg.model else {}
    net = build_network(cfg.model, num_classes=datamodule.num_classes,
                        class_counts=[train_report.boxes_per_class[name] for name in datamodule.class_names],
                        weights_dir=None if start is not None else cfg.get("pretrained_dir"), **extra)
    size_bins = resolve_size_bins(cfg.evaluation.size_bins, record_box_areas(datamodule.train_records))
    system = build_system(cfg, net, datamodule.class_names, size_bins=size_bins)
    if start is not None:
        state_dict, source = start
        try:
            system.load_state_dict(state_dict)
        except RuntimeError as exc:  # missing, unexpected or differently shaped tensors
            raise InitCheckpointError(
                f"init_checkpoint {source}: its weights do not fit this run's network ({cfg.model.get('_target_')}): "
                f"{str(exc).strip()[:1500]}. Start from a model trained with the same model settings (its "
                f"config.yaml holds them), or train without init_checkpoint") from None
        log.info("init_checkpoint: the network starts from the weights of %s (a new optimizer and schedule)", source)
    return system


def build_slicing(slicing_cfg: DictConfig | None) -> Slicing | None:
    """Sliced inference settings, or None for whole-frame inference (``slicing=none`` is empty)."""
    if not slicing_cfg:
        return None
    return instantiate(slicing_cfg)


def build_test_time_flips(tta_cfg: DictConfig | None) -> TestTimeFlips | None:
    """Test-time flip settings (``conf/tta``), or None for none (``tta=none`` is empty; checkpoints
    from before test-time flips have no ``tta``)."""
    if not tta_cfg:
        return None
    return instantiate(tta_cfg, _convert_="all")


def build_trainer(cfg: DictConfig, **overrides: Any) -> pl.Trainer:
    """The Lightning Trainer with the configured callbacks and logger, saving checkpoints atomically."""
    callbacks = [instantiate(c) for c in cfg.callbacks.values()] if cfg.get("callbacks") else []
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger, plugins=[AtomicCheckpointIO()], **overrides)
    warn_if_bf16_is_emulated(trainer)
    return trainer


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions natively on this CPU (AVX512-BF16 or AMX)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def warn_if_bf16_is_emulated(trainer: pl.Trainer) -> None:
    """bf16-mixed on a CPU trains about 1.6x faster than 32-true where the CPU computes in bfloat16
    (2-core AVX512-BF16 box, honeybee recipe: 560 s against 894 s for 24,000 images, same AP50),
    and slower where it must emulate it: say so, rather than let a run crawl."""
    on_cpu = isinstance(trainer.accelerator, pl.accelerators.CPUAccelerator)
    if on_cpu and "bf16" in str(trainer.precision) and not cpu_has_native_bf16():
        log.warning(
            "trainer.precision=%s on a CPU without native bfloat16 (no AVX512-BF16 or AMX): it is emulated and "
            "slower than trainer.precision=32-true, which this CPU should use",
            trainer.precision,
        )


def load_system(
    ckpt_path: str | os.PathLike, slicing: DictConfig | None = None, tta: DictConfig | None = None
) -> tuple[DetectionModule, DictConfig]:
    """Rebuild the trained system from a beedet checkpoint; returns it (in eval mode) and its run config.

    ``slicing`` replaces the checkpoint's inference slicing (a ``conf/slicing`` config, resolved
    against the checkpoint's own config, so ``${model.image_size}`` means the trained model's);
    ``tta`` its test-time flips (a ``conf/tta`` config; empty: none). None keeps the checkpoint's."""
    # Tensors and plain data only, and a stored config naming only trusted _target_s: a checkpoint
    # from elsewhere cannot run code here (beedet.checkpointing).
    checkpoint, payload = load_checkpoint(ckpt_path)
    stored_config = payload.config
    run_cfg = OmegaConf.create(stored_config)
    stored_flips = build_test_time_flips(run_cfg.get("tta"))
    for key, replacement in (("slicing", slicing), ("tta", tta)):
        if replacement is not None:
            run_cfg = OmegaConf.merge(run_cfg, {key: None})
            run_cfg[key] = replacement
    # The weights come from the checkpoint: never download ImageNet weights to overwrite them.
    extra = {"pretrained_backbone": False} if "pretrained_backbone" in run_cfg.model else {}
    net = build_network(run_cfg.model, num_classes=len(payload.class_names), **extra)
    system = DetectionModule(
        net=net,
        class_names=payload.class_names,
        optimizer=instantiate(run_cfg.optimizer),
        run_config=stored_config,
        slicing=build_slicing(run_cfg.get("slicing")),
        test_time_flips=build_test_time_flips(run_cfg.get("tta")),
        # Evaluate as the training run validated: its size bins, maxDets and count threshold
        # (None in checkpoints older than counting: then it is chosen on the data evaluated).
        size_bins=payload.size_bins,
        max_detections=OmegaConf.select(run_cfg, "evaluation.max_detections", default=DEFAULT_MAX_DETECTIONS),
        count_threshold=payload.count_threshold,
    )
    system.load_state_dict(checkpoint["state_dict"])
    if tta is not None and system.test_time_flips != stored_flips and payload.count_threshold is not None:
        # Flips average each object's score over the views (an error one view makes alone keeps a
        # fraction of it): a threshold chosen on one kind of score counts wrong on the other.
        log.warning(
            "%s: its count threshold %.2f was chosen on validation %s test-time flips %s, and this run predicts %s: "
            "scores are on another scale, so counts may be off. evaluate.py reports the best threshold for its data "
            "beside it (count_threshold= applies one); beedet.predict and serving take score_threshold=",
            ckpt_path, payload.count_threshold, "with" if stored_flips else "without",
            list(stored_flips.views) if stored_flips else "", system.inference_mode,
        )
    return system.eval(), run_cfg


# beedet.predict and beedet.serve run the network in float32 (float images, no autocast).
SERVING_PRECISION = "32-true"


def evaluation_precision(override: str | None, train_cfg: DictConfig) -> dict[str, str]:
    """The Lightning precision to evaluate a checkpoint in, as metrics.json's ``precision``:
    ``used``, ``source`` (``serving``, or ``override``: evaluate's ``precision=``) and ``training``
    (the checkpoint's trainer.precision). Without an override it is :data:`SERVING_PRECISION`,
    whatever the training run used, so the metrics describe the boxes users get from
    ``beedet.predict`` and ``beedet.serve``."""
    training = str(OmegaConf.select(train_cfg, "trainer.precision", default=None) or SERVING_PRECISION)
    if override is not None:
        return {"used": str(override), "source": "override", "training": training}
    return {"used": SERVING_PRECISION, "source": "serving", "training": training}

