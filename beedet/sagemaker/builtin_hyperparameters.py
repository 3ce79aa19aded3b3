"""The hyperparameters of SageMaker's built-in Object Detection algorithm, as beedet config overrides.

A job (or a notebook) written for the built-in algorithm passes names such as ``base_network``,
``mini_batch_size`` and ``lr_scheduler_step``. :func:`translate` turns each into Hydra overrides
of ``conf/train.yaml`` and says what it did; names beedet has no use for (``label_width``,
``num_training_samples``, ``kv_store``) are accepted and each gets a log line saying why it has no
effect, so nothing is silently ignored. A value beedet cannot honour raises
:class:`BuiltinHyperparameterError` naming the hyperparameter, the value and what is supported.

Names that are not built-in names (beedet's own dotted keys, ``experiment``) pass through
untouched, so both may be mixed in one job. Only the names given are mapped: a name left out keeps
beedet's default, not the built-in algorithm's (``README.md`` lists both).

The table (:data:`BUILTIN_HYPERPARAMETERS`) is the documentation: the README's migration table is
written from it and ``tests/test_builtin_hyperparameters.py`` walks it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from beedet.sagemaker.hyperparameters import HyperparameterError

log = logging.getLogger("beedet.sagemaker")

# The built-in algorithm's optimizers -> beedet's conf/optimizer options (torch.optim classes).
OPTIMIZERS = {"sgd": "sgd", "adam": "adam", "rmsprop": "rmsprop", "adadelta": "adadelta"}
# Optimizers whose torch class takes a momentum argument.
_WITH_MOMENTUM = ("sgd", "rmsprop")
# base_network -> the model config for each image_shape beedet builds natively.
_NETWORKS = {"vgg-16": {300: "ssd300_vgg16"}, "resnet-50": {300: "ssd300_resnet50", 512: "ssd512_resnet50"}}


class BuiltinHyperparameterError(HyperparameterError):
    """A built-in algorithm hyperparameter has a value beedet cannot honour; the message names it."""


@dataclass(frozen=True)
class Translation:
    """What the built-in names in a job's hyperparameters became."""

    overrides: list[str]        # Hydra overrides, in a fixed order
    remaining: dict[str, str]   # the job's other hyperparameters, untouched
    notes: list[str]            # one line per name accepted without effect, or mapped with a caveat


@dataclass(frozen=True)
class BuiltinHyperparameter:
    name: str
    beedet: str                 # the beedet key(s) it sets, for the README
    notes: str                  # how it maps and what differs, for the README


BUILTIN_HYPERPARAMETERS: tuple[BuiltinHyperparameter, ...] = (
    BuiltinHyperparameter("base_network", "`model`", "`vgg-16` -> `ssd300_vgg16`; `resnet-50` -> `ssd300_resnet50` "
                          "(`ssd512_resnet50` with `image_shape=512`)"),
    BuiltinHyperparameter("use_pretrained_model", "`model.pretrained_backbone`", "`1`: ImageNet weights for the base "
                          "network from the torch hub cache (downloaded when online)"),
    BuiltinHyperparameter("num_classes", "`data.num_classes`", "the head gets this many classes; the data may use "
                          "fewer ids (unused ones are named `class_<i>`), never more"),
    BuiltinHyperparameter("num_training_samples", "(none)", "beedet counts the training images itself; accepted "
                          "and logged"),
    BuiltinHyperparameter("epochs", "`trainer.max_epochs`", ""),
    BuiltinHyperparameter("mini_batch_size", "`data.batch_size`", "per device (the built-in's is split across "
                          "GPUs): divide by the GPUs per instance for the same global batch"),
    BuiltinHyperparameter("learning_rate", "`optimizer.lr`", "beedet warms up over `scheduler.warmup_steps` "
                          "(100) steps first"),
    BuiltinHyperparameter("optimizer", "`optimizer`", "`sgd` (plain momentum, not Nesterov), `adam`, `rmsprop`, "
                          "`adadelta`: the torch.optim classes"),
    BuiltinHyperparameter("momentum", "`optimizer.momentum`", "sgd and rmsprop only"),
    BuiltinHyperparameter("weight_decay", "`optimizer.weight_decay`", ""),
    BuiltinHyperparameter("lr_scheduler_step", "`scheduler=warmup_multistep`, `scheduler.milestones`", "epochs "
                          "(`'3,6'`) become fractions of `epochs`; steps at or after the last epoch never happen, "
                          "as in the built-in"),
    BuiltinHyperparameter("lr_scheduler_factor", "`scheduler.gamma`", "with `scheduler=warmup_multistep`"),
    BuiltinHyperparameter("image_shape", "`model.image_size`", "300 and 512 pick the native SSD300/SSD512 "
                          "configs; other sizes >= 300 need `base_network=resnet-50`"),
    BuiltinHyperparameter("overlap_threshold", "`model.iou_thresh`", "anchor-to-box IoU for a positive match "
                          "(beedet's bee configs use 0.35: bees are small)"),
    BuiltinHyperparameter("nms_threshold", "`model.nms_thresh`", ""),
    BuiltinHyperparameter("label_width", "(none)", "pads RecordIO labels for MXNet's batching; beedet reads "
                          "labels of any length. Accepted and logged"),
    BuiltinHyperparameter("freeze_layer_pattern", "`model.freeze_pattern`", "a regex over beedet's parameter "
                          "names (`backbone.trunk.layer1.`, not MXNet's `conv1_`); one that matches nothing is an "
                          "error listing names"),
    BuiltinHyperparameter("early_stopping", "`callbacks=[default,early_stopping]`", "on `val/mAP`"),
    BuiltinHyperparameter("early_stopping_min_epochs", "`trainer.min_epochs`", ""),
    BuiltinHyperparameter("early_stopping_patience", "`callbacks.early_stopping.patience`", ""),
    BuiltinHyperparameter("early_stopping_tolerance", "`callbacks.early_stopping.relative_min_delta`",
                          "relative to the best mAP, as in the built-in"),
    BuiltinHyperparameter("kv_store", "(none)", "`device`/`dist_sync`: beedet synchronises gradients with DDP "
                          "(torchrun across instances); `dist_async` is not supported"),
)
NAMES = frozenset(h.name for h in BUILTIN_HYPERPARAMETERS)
_EARLY_STOPPING_OPTIONS = ("early_stopping_min_epochs", "early_stopping_patience", "early_stopping_tolerance")


def translate(hyperparameters: Mapping[str, str], *, default_epochs: int) -> Translation:
    """Map the built-in names in ``hyperparameters`` (``{name: value text}``) onto beedet overrides.
    ``default_epochs``: beedet's ``trainer.max_epochs``, used to place ``lr_scheduler_step`` when
    the job gives no ``epochs``. Raises :class:`BuiltinHyperparameterError`."""
    given = {k: v.strip() for k, v in hyperparameters.items() if k in NAMES}
    remaining = {k: v for k, v in hyperparameters.items() if k not in NAMES}
    if not given:
        return Translation([], dict(remaining), [])
    out: list[str] = []
    notes: list[str] = []

    def value(name: str, parse: Callable[[str], object], expected: str):
        try:
            return parse(given[name])
        except (TypeError, ValueError):
            raise BuiltinHyperparameterError(f"built-in hyperparameter {name}={given[name]!r}: expected {expected}") from None

    # Model: base_network and image_shape together pick the config.
    shape = value("image_shape", _positive_int, "a positive integer (the square input side)") if "image_shape" in given else None
    if shape is not None and shape < 300:
        raise BuiltinHyperparameterError(f"built-in hyperparameter image_shape={shape}: the built-in algorithm and "
                                         f"beedet's SSD configs need >= 300")
    if "base_network" in given:
        network = given["base_network"].lower()
        if network not in _NETWORKS:
            raise BuiltinHyperparameterError(f"built-in hyperparameter base_network={given['base_network']!r}: "
                                             f"expected 'vgg-16' or 'resnet-50'")
        sizes = _NETWORKS[network]
        size = shape or 300
        if size in sizes:
            out.append(f"model={sizes[size]}")
        elif network == "resnet-50":
            out += [f"model={sizes[300]}", f"model.image_size={size}"]
        else:
            raise BuiltinHyperparameterError(f"built-in hyperparameter image_shape={size} with base_network=vgg-16: "
                                             f"beedet's VGG-16 SSD is SSD300 only; use image_shape=300, or "
                                             f"base_network=resnet-50 for any size >= 300")
    elif shape is not None:
        out.append(f"model.image_size={shape}")
    if "use_pretrained_model" in given:
        out.append(f"model.pretrained_backbone={str(value('use_pretrained_model', _flag, '0 or 1')).lower()}")
    if "overlap_threshold" in given:
        out.append(f"model.iou_thresh={value('overlap_threshold', _fraction, 'a number in (0, 1]')}")
    if "nms_threshold" in given:
        out.append(f"model.nms_thresh={value('nms_threshold', _fraction, 'a number in (0, 1]')}")
    if "freeze_layer_pattern" in given:
        out.append(f"++model.freeze_pattern={_quote(given['freeze_layer_pattern'])}")

    # Data.
    if "num_classes" in given:
        out.append(f"++data.num_classes={value('num_classes', _positive_int, 'a positive integer')}")
    if "mini_batch_size" in given:
        out.append(f"data.batch_size={value('mini_batch_size', _positive_int, 'a positive integer')}")
        notes.append("mini_batch_size is beedet's batch per device (the built-in splits it across an "
                     "instance's GPUs)")
    if "num_training_samples" in given:
        value("num_training_samples", _positive_int, "a positive integer")
        notes.append(f"num_training_samples={given['num_training_samples']} has no effect: beedet counts the "
                     f"training images itself (the data report logs the count)")
    if "label_width" in given:
        value("label_width", _positive_int, "a positive integer")
        notes.append(f"label_width={given['label_width']} has no effect: it pads RecordIO labels for MXNet's "
                     f"batching, and beedet reads labels of any length")

    # Optimisation.
    epochs = value("epochs", _positive_int, "a positive integer") if "epochs" in given else None
    if epochs is not None:
        out.append(f"trainer.max_epochs={epochs}")
    optimizer = None
    if "optimizer" in given:
        optimizer = given["optimizer"].lower()
        if optimizer not in OPTIMIZERS:
            raise BuiltinHyperparameterError(f"built-in hyperparameter optimizer={given['optimizer']!r}: expected "
                                             f"one of {', '.join(OPTIMIZERS)}")
        out.append(f"optimizer={OPTIMIZERS[optimizer]}")
        if optimizer == "sgd":
            out.append("optimizer.nesterov=false")  # the built-in's SGD is plain momentum SGD
    if "learning_rate" in given:
        out.append(f"optimizer.lr={value('learning_rate', _positive_float, 'a positive number')}")
    if "momentum" in given:
        momentum = value("momentum", _unit, "a number in [0, 1]")
        if optimizer is not None and optimizer not in _WITH_MOMENTUM:
            raise BuiltinHyperparameterError(f"built-in hyperparameter momentum={momentum} with optimizer={optimizer}: "
                                             f"{optimizer} has no momentum (sgd and rmsprop do)")
        out.append(f"optimizer.momentum={momentum}")
    if "weight_decay" in given:
        out.append(f"optimizer.weight_decay={value('weight_decay', _non_negative_float, 'a number >= 0')}")
    if "lr_scheduler_step" in given or "lr_scheduler_factor" in given:
        out.append("scheduler=warmup_multistep")
        total = epochs or default_epochs
        steps = value("lr_scheduler_step", _epoch_list, "comma-separated epochs, e.g. '3,6'") if "lr_scheduler_step" in given else []
        kept = [s for s in steps if s < total]
        if len(kept) < len(steps):
            notes.append(f"lr_scheduler_step epochs {[s for s in steps if s >= total]} are at or after the last "
                         f"epoch ({total}), so the lr never drops there (as in the built-in)")
        out.append("scheduler.milestones=[" + ",".join(f"{s / total:.6g}" for s in kept) + "]")
        if "lr_scheduler_factor" in given:
            out.append(f"scheduler.gamma={value('lr_scheduler_factor', _unit, 'a number in [0, 1]')}")

    # Early stopping.
    if "early_stopping" in given and value("early_stopping", _flag, "True or False"):
        out.append("callbacks=[default,early_stopping]")
        if "early_stopping_min_epochs" in given:
            out.append(f"++trainer.min_epochs={value('early_stopping_min_epochs', _positive_int, 'a positive integer')}")
        if "early_stopping_patience" in given:
            out.append(f"callbacks.early_stopping.patience={value('early_stopping_patience', _positive_int, 'a positive integer')}")
        if "early_stopping_tolerance" in given:
            out.append(f"callbacks.early_stopping.relative_min_delta={value('early_stopping_tolerance', _unit, 'a number in [0, 1]')}")
    else:
        for name in _EARLY_STOPPING_OPTIONS:
            if name in given:
                notes.append(f"{name}={given[name]} has no effect without early_stopping=True (as in the built-in)")

    if "kv_store" in given:
        store = given["kv_store"].lower()
        if store not in ("device", "local", "dist_sync", "dist_device_sync"):
            raise BuiltinHyperparameterError(f"built-in hyperparameter kv_store={given['kv_store']!r}: beedet trains "
                                             f"with synchronous DDP only; use dist_sync (or leave kv_store out)")
        notes.append(f"kv_store={given['kv_store']} has no counterpart: beedet synchronises gradients with DDP "
                     f"(torchrun starts one process per GPU on every instance)")

    # The built-in algorithm's metric names too, so a tuning job's objective (validation:mAP) still reads.
    out.append("callbacks.metric_log_lines.builtin_names=true")
    # And its endpoint's answer to plain application/json, so the clients written for it keep working.
    out.append("endpoint_json=builtin")
    return Translation(out, dict(remaining), notes)


def log_notes(translation: Translation) -> None:
    for note in translation.notes:
        log.warning("built-in hyperparameter: %s", note)


def _positive_int(text: str) -> int:
    number = float(text)
    if not number.is_integer() or number < 1:
        raise ValueError(text)
    return int(number)


def _positive_float(text: str) -> float:
    number = float(text)
    if not number > 0:
        raise ValueError(text)
    return number


def _non_negative_float(text: str) -> float:
    number = float(text)
    if not number >= 0:
        raise ValueError(text)
    return number


def _unit(text: str) -> float:
    number = float(text)
    if not 0.0 <= number <= 1.0:
        raise ValueError(text)
    return number


def _fraction(text: str) -> float:
    number = float(text)
    if not 0.0 < number <= 1.0:
        raise ValueError(text)
    return number


def _flag(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true"):
        return True
    if lowered in ("0", "false"):
        return False
    raise ValueError(text)


def _epoch_list(text: str) -> list[int]:
    steps = [_positive_int(part) for part in text.strip().strip("'\"").split(",") if part.strip()]
    if steps != sorted(set(steps)):
        raise ValueError(text)
    return steps


def _quote(text: str) -> str:
    return "'" + text.replace("'", "\\'") + "'"
