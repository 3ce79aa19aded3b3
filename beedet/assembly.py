"""Turns a composed Hydra config into objects. The only module that calls ``hydra.utils.instantiate``.

Components never see the config: each receives explicit, typed arguments, so it can be built and
tested without Hydra. This module is where config meets code, in the order data flows:
data and augmentation -> network -> system -> trainer.
"""

from __future__ import annotations

import os
from typing import Any

import albumentations as A
import pytorch_lightning as pl
import torch.nn as nn
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from beedet.checkpointing import AtomicCheckpointIO, load_checkpoint
from beedet.data.datamodule import BeeDataModule
from beedet.system import DetectionModule


def build_augment(augment_cfg: DictConfig) -> A.Compose:
    """The training augmentation pipeline (an albumentations ``Compose`` with ``BboxParams``)."""
    return instantiate(augment_cfg, _convert_="all")


def build_datamodule(data_cfg: DictConfig, augment_cfg: DictConfig | None = None, **overrides: Any) -> BeeDataModule:
    """The data module, with the training augmentation wired in when one is given."""
    transform = build_augment(augment_cfg) if augment_cfg is not None else None
    return instantiate(data_cfg, train_transform=transform, **overrides, _convert_="all")


def build_network(model_cfg: DictConfig, num_classes: int, **overrides: Any) -> nn.Module:
    """The plain detection network. ``num_classes`` counts foreground classes (no background)."""
    return instantiate(model_cfg, num_classes=num_classes, **overrides, _convert_="all")


def build_system(cfg: DictConfig, net: nn.Module, class_names: list[str]) -> DetectionModule:
    """The LightningModule around ``net``; the resolved config rides along into checkpoints."""
    return DetectionModule(
        net=net,
        class_names=class_names,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        run_config=OmegaConf.to_container(cfg, resolve=True),
    )


def build_trainer(cfg: DictConfig, **overrides: Any) -> pl.Trainer:
    """The Lightning Trainer with the configured callbacks and logger, saving checkpoints atomically."""
    callbacks = [instantiate(c) for c in cfg.callbacks.values()] if cfg.get("callbacks") else []
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    return instantiate(cfg.trainer, callbacks=callbacks, logger=logger, plugins=[AtomicCheckpointIO()], **overrides)


def load_system(ckpt_path: str | os.PathLike) -> tuple[DetectionModule, DictConfig]:
    """Rebuild the trained system from a beedet checkpoint; returns it (in eval mode) and its run config."""
    checkpoint = load_checkpoint(ckpt_path)
    if "beedet" not in checkpoint:
        raise ValueError(f"{ckpt_path} is not a beedet checkpoint (no 'beedet' entry)")
    class_names = checkpoint["beedet"]["class_names"]
    run_cfg = OmegaConf.create(checkpoint["beedet"]["config"])
    # The weights come from the checkpoint: never download ImageNet weights to overwrite them.
    extra = {"pretrained_backbone": False} if "pretrained_backbone" in run_cfg.model else {}
    net = build_network(run_cfg.model, num_classes=len(class_names), **extra)
    system = DetectionModule(net=net, class_names=class_names, optimizer=instantiate(run_cfg.optimizer), run_config=checkpoint["beedet"]["config"])
    system.load_state_dict(checkpoint["state_dict"])
    return system.eval(), run_cfg
