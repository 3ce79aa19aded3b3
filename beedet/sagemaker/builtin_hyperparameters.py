"""The hyperparameters of SageMaker's built-in Object Detection algorithm, as beedet config overrides.

A job (or a notebook) written for the built-in algorithm passes names such as ``base_network``,
``mini_batch_size`` and ``lr_scheduler_step``. :func:`translate` turns each into Hydra overrides
of ``conf/train.yaml`` and says what it did; names beedet has no use for (``label_width``,
``num_training_samples``, ``kv_store``) are accepted and each gets a log line saying why it has no
effect, so nothing is silently ignored. A value beedet cannot honour raises
:class:`BuiltinHyperparameterError` naming the hyperparameter, the value and what is supported.

Names that are not built-in names (beedet's own dotted keys, ``experiment``) pass through
untouched, so both may be mixed in one job.

Each name means what it meant in the built-in algorithm, with its ranges and its defaults. Source:
the algorithm's documentation, "Object Detection Hyperparameters"
(https://docs.aws.amazon.com/sagemaker/latest/dg/object-detection-api-config.html; the same text is
``doc_source/object-detection-api-config.md`` of github.com/awsdocs/amazon-sagemaker-developer-guide),
and, where it says "see MXNet's API", MXNet 1.x's optimizers:

* Defaults: when a job uses any built-in name, every documented name it leaves out takes the
  built-in's default (:attr:`BuiltinHyperparameter.default`): a job that gives only ``num_classes``
  trains the built-in's VGG-16 SSD300 from ImageNet weights, SGD at 0.001 for 30 epochs. A default
  yields to a beedet key the job sets directly (``trainer.max_epochs``, ``model=...``: a beedet
  model chosen by key also keeps its own image size and weights), and to a beedet ``experiment``,
  whose recipe then fills what the job leaves out. A job without built-in names keeps beedet's
  defaults; so does one whose only built-in name is ``optimizer`` (also beedet's config group).
  ``num_classes`` and ``num_training_samples`` are required by the built-in; beedet derives both
  from the data, so neither is required here.
* ``overlap_threshold`` is the IoU at which the built-in's ``validation:mAP`` counts a detection.
  beedet prints ``validation:mAP`` at IoU 0.5 (its AP50; ``beedet.sagemaker.metrics``), so 0.5 (the
  default) maps onto nothing and any other value stops the job (see :func:`translate`).
* ``momentum`` is sgd's only and ``weight_decay`` sgd's and rmsprop's ("ignored for other
  optimizers"): elsewhere they are accepted, logged as having no effect, and adam and adadelta run
  without weight decay. MXNet's AdaDelta has no learning rate, so with ``optimizer=adadelta``
  ``learning_rate`` and the lr schedule have no effect either (torch's Adadelta runs at lr 1.0,
  MXNet's update).
* Early stopping watches the built-in's ``validation:mAP`` (beedet's ``val/AP50``), by its relative
  tolerance alone.

Where beedet cannot do what the built-in did (VGG-16 at 512 px, ``dist_async``, another evaluation
IoU), the job stops with the reason; an ImageNet base that cannot be loaded stops the job when the
network is built, before training (``beedet.models.backbones.PretrainedWeightsError``, naming the
``pretrained`` and ``model`` channels; it is also the job's failure reason).

The table (:data:`BUILTIN_HYPERPARAMETERS`) is the documentation: the README's migration table is
written from it and ``tests/test_builtin_hyperparameters.py`` walks it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from beedet.sagemaker.hyperparameters import EXPERIMENT_KEY, HyperparameterError

log = logging.getLogger("beedet.sagemaker")

# The built-in algorithm's optimizers -> beedet's conf/optimizer options (torch.optim classes).
OPTIMIZERS = {"sgd": "sgd", "adam": "adam", "rmsprop": "rmsprop", "adadelta": "adadelta"}
# The built-in's momentum is sgd's ("ignored for other optimizers"); its weight decay sgd's and
# rmsprop's (its documentation: "ignored for other optimizers"); beedet's rmsprop keeps momentum 0.
_WITH_MOMENTUM = ("sgd",)
_WITH_WEIGHT_DECAY = ("sgd", "rmsprop")
# MXNet 1.x's AdaDelta updates by rho and epsilon alone (no learning rate): torch's Adadelta at
# lr 1.0 (conf/optimizer/adadelta.yaml) is the same update.
_WITHOUT_LEARNING_RATE = ("adadelta",)
# Built-in names that are beedet config groups too (a beedet job may send optimizer=sgd): given
# alone, they do not bring the built-in's other defaults. A built-in job always has num_classes.
_SHARED_WITH_BEEDET = ("optimizer",)
# The IoU at which beedet's validation:mAP counts a detection (beedet.sagemaker.metrics: val/AP50).
_METRIC_IOU = 0.5
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
    # The built-in's documented default, as the value text a job would send; it is what a job that
    # uses built-in names gets for this name when it leaves it out. None: no default (required,
    # or nothing: no frozen layers, no kv_store, no lr steps).
    default: str | None = None

    @property
    def default_cell(self) -> str:
        """The README's default column."""
        if self.name in REQUIRED:
            return "required (beedet: from the data)"
        return f"`{self.default}`" if self.default is not None else "(none)"


# Required by the built-in; beedet reads both from the data (the head's classes, the image count).
REQUIRED = ("num_classes", "num_training_samples")


BUILTIN_HYPERPARAMETERS: tuple[BuiltinHyperparameter, ...] = (
    BuiltinHyperparameter("base_network", "`model`", "`vgg-16` -> `ssd300_vgg16`; `resnet-50` -> `ssd300_resnet50` "
                          "(`ssd512_resnet50` with `image_shape=512`)", default="vgg-16"),
    BuiltinHyperparameter("use_pretrained_model", "`model.pretrained_backbone`", "`1`: ImageNet weights for the base "
                          "network from the job's `pretrained` channel, else the torch hub cache (downloaded when "
                          "online); a job that cannot load them stops before training, naming the ways to supply them. "
                          "With a `model` channel (incremental training) the network starts from that model instead",
                          default="1"),
    BuiltinHyperparameter("num_classes", "`data.num_classes`", "the head gets this many classes; the data may use "
                          "fewer ids (unused ones are named `class_<i>`), never more"),
    BuiltinHyperparameter("num_training_samples", "(none)", "beedet counts the training images itself; accepted "
                          "and logged"),
    BuiltinHyperparameter("epochs", "`trainer.max_epochs`", "", default="30"),
    BuiltinHyperparameter("mini_batch_size", "`data.batch_size`", "per device (the built-in's is split across "
                          "GPUs): divide by the GPUs per instance for the same global batch", default="32"),
    BuiltinHyperparameter("learning_rate", "`optimizer.lr`", "in (0, 1]; beedet warms up over "
                          "`scheduler.warmup_steps` (100) steps first. No effect with `adadelta` (MXNet's has no "
                          "learning rate: torch's runs at 1.0, the same update)", default="0.001"),
    BuiltinHyperparameter("optimizer", "`optimizer`", "`sgd` (plain momentum, not Nesterov), `adam`, `rmsprop`, "
                          "`adadelta`: the torch.optim classes", default="sgd"),
    BuiltinHyperparameter("momentum", "`optimizer.momentum`", "in (0, 1]; sgd only, as in the built-in: with other "
                          "optimizers accepted and logged as having no effect", default="0.9"),
    BuiltinHyperparameter("weight_decay", "`optimizer.weight_decay`", "in (0, 1); sgd and rmsprop only, as in the "
                          "built-in: `adam` and `adadelta` run without weight decay (logged)", default="0.0005"),
    BuiltinHyperparameter("lr_scheduler_step", "`scheduler=warmup_multistep`, `scheduler.milestones`", "epochs "
                          "(`'3,6'`) become fractions of `epochs`; steps at or after the last epoch never happen, "
                          "as in the built-in; none: a constant lr"),
    BuiltinHyperparameter("lr_scheduler_factor", "`scheduler.gamma`", "in (0, 1); with `scheduler=warmup_multistep`",
                          default="0.1"),
    BuiltinHyperparameter("image_shape", "`model.image_size`", "300 and 512 pick the native SSD300/SSD512 "
                          "configs; other sizes >= 300 need `base_network=resnet-50`", default="300"),
    BuiltinHyperparameter("overlap_threshold", "(none)", "the IoU at which `validation:mAP` counts a detection: "
                          "beedet's is AP50, so `0.5` only; another value stops the job (beedet also reports COCO's "
                          "AP75 and mAP@[.5:.95]). Anchor matching stays `model.iou_thresh`", default="0.5"),
    BuiltinHyperparameter("nms_threshold", "`model.nms_thresh`", "", default="0.45"),
    BuiltinHyperparameter("label_width", "(none)", "pads RecordIO labels for MXNet's batching; beedet reads "
                          "labels of any length. Accepted and logged", default="350"),
    BuiltinHyperparameter("freeze_layer_pattern", "`model.freeze_pattern`", "a regex over beedet's parameter "
                          "names (`backbone.trunk.layer1.`, not MXNet's `conv1_`); one that matches nothing is an "
                          "error listing names"),
    BuiltinHyperparameter("early_stopping", "`callbacks=[default,early_stopping]`", "on `val/AP50` (the built-in's "
                          "`validation:mAP`)", default="False"),
    BuiltinHyperparameter("early_stopping_min_epochs", "`trainer.min_epochs`", "with `early_stopping=True`",
                          default="10"),
    BuiltinHyperparameter("early_stopping_patience", "`callbacks.early_stopping.patience`", "with "
                          "`early_stopping=True`", default="5"),
    BuiltinHyperparameter("early_stopping_tolerance", "`callbacks.early_stopping.relative_min_delta`",
                          "relative to the best mAP, as in the built-in (`min_delta` 0)", default="0.0"),
    BuiltinHyperparameter("kv_store", "(none)", "`device`/`dist_sync`: beedet synchronises gradients with DDP "
                          "(torchrun across instances); `dist_async` is not supported"),
)
NAMES = frozenset(h.name for h in BUILTIN_HYPERPARAMETERS)
_EARLY_STOPPING_OPTIONS = ("early_stopping_min_epochs", "early_stopping_patience", "early_stopping_tolerance")


# The beedet keys (and config groups) each built-in name sets: a default yields to a job that sets
# one of them directly. A model chosen by key keeps its own size and weights (a slim or MobileNet
# model has no 300 px or ImageNet switch). (``optimizer`` is a built-in name: never a beedet key here.)
_SETS: dict[str, tuple[str, ...]] = {
    "base_network": ("model",),
    "image_shape": ("model", "model.image_size"),
    "use_pretrained_model": ("model", "model.pretrained_backbone"),
    "nms_threshold": ("model.nms_thresh",),
    "mini_batch_size": ("data.batch_size",),
    "epochs": ("trainer.max_epochs",),
    "learning_rate": ("optimizer.lr",),
    "momentum": ("optimizer.momentum",),
    "weight_decay": ("optimizer.weight_decay",),
    "lr_scheduler_factor": ("scheduler", "scheduler.gamma"),
    "early_stopping": ("callbacks",),
    "early_stopping_min_epochs": ("trainer.min_epochs",),
    "early_stopping_patience": ("callbacks.early_stopping.patience",),
    "early_stopping_tolerance": ("callbacks.early_stopping.relative_min_delta",),
}


def builtin_defaults(given: Mapping[str, str], remaining: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The built-in's defaults a job that uses built-in names (``given``) gets for the names it
    leaves out, given its other hyperparameters (``remaining``), and notes on those that yield."""
    if EXPERIMENT_KEY in remaining:
        return {}, [f"{EXPERIMENT_KEY}={remaining[EXPERIMENT_KEY]}: the built-in's defaults are not applied; the "
                    f"experiment's settings stand for the built-in names the job leaves out"]
    if set(given) <= set(_SHARED_WITH_BEEDET):
        return {}, [f"{', '.join(f'{k}={v}' for k, v in given.items())} alone (also a beedet config group) does not "
                    f"bring the built-in's other defaults; any other built-in name does"]
    implied: dict[str, str] = {}
    yielded: list[str] = []
    for h in BUILTIN_HYPERPARAMETERS:
        if h.default is None or h.name in given:
            continue
        direct = [key for key in _SETS.get(h.name, ()) if key in remaining]
        if direct:
            yielded.append(f"{h.name} ({direct[0]}={remaining[direct[0]]} is set directly)")
        else:
            implied[h.name] = h.default
    notes = [f"the built-in's defaults yield to beedet keys the job sets: {', '.join(yielded)}"] if yielded else []
    return implied, notes


def translate(hyperparameters: Mapping[str, str], *, default_epochs: int) -> Translation:
    """Map the built-in names in ``hyperparameters`` (``{name: value text}``) onto beedet overrides,
    with the built-in's defaults for the names left out (:func:`builtin_defaults`) when any is given.
    ``default_epochs``: beedet's ``trainer.max_epochs``, used to place ``lr_scheduler_step`` when
    neither ``epochs`` nor its default applies. Raises :class:`BuiltinHyperparameterError`."""
    given = {k: v.strip() for k, v in hyperparameters.items() if k in NAMES}
    remaining = {k: v for k, v in hyperparameters.items() if k not in NAMES}
    if not given:
        return Translation([], dict(remaining), [])
    implied, notes = builtin_defaults(given, remaining)
    values = {**implied, **given}
    out: list[tuple[str, str, bool]] = []  # (built-in name, override, yields to the same key set directly)
    ignored: set[str] = set()  # names that have no effect with the job's optimizer, as in the built-in

    def emit(name: str, override: str, *, yields: bool = False) -> None:
        out.append((name, override, yields or name in implied))

    def value(name: str, parse: Callable[[str], object], expected: str):
        try:
            return parse(values[name])
        except (TypeError, ValueError):
            raise BuiltinHyperparameterError(f"built-in hyperparameter {name}={values[name]!r}: expected {expected}") from None

    def shown(name: str) -> str:
        return f"{name}={values[name]}" + (" (the built-in's default)" if name in implied else "")

    # Model: base_network and image_shape together pick the config.
    shape = value("image_shape", _positive_int, "a positive integer (the square input side)") if "image_shape" in values else None
    if shape is not None and shape < 300:
        raise BuiltinHyperparameterError(f"built-in hyperparameter image_shape={shape}: the built-in algorithm and "
                                         f"beedet's SSD configs need >= 300")
    if "base_network" in values:
        network = values["base_network"].lower()
        if network not in _NETWORKS:
            raise BuiltinHyperparameterError(f"built-in hyperparameter base_network={values['base_network']!r}: "
                                             f"expected 'vgg-16' or 'resnet-50'")
        sizes = _NETWORKS[network]
        size = shape or 300
        if size in sizes:
            emit("base_network", f"model={sizes[size]}")
        elif network == "resnet-50":
            emit("base_network", f"model={sizes[300]}")
            emit("image_shape", f"model.image_size={size}")
        else:
            raise BuiltinHyperparameterError(f"built-in hyperparameter image_shape={size} with {shown('base_network')}: "
                                             f"beedet's VGG-16 SSD is SSD300 only; use image_shape=300, or "
                                             f"base_network=resnet-50 for any size >= 300")
    elif shape is not None:
        emit("image_shape", f"model.image_size={shape}")
    if "use_pretrained_model" in values:
        emit("use_pretrained_model",
             f"model.pretrained_backbone={str(value('use_pretrained_model', _flag, '0 or 1')).lower()}")
    if "overlap_threshold" in values:
        iou = value("overlap_threshold", _fraction, "a number in (0, 1]")
        if iou != _METRIC_IOU:
            raise BuiltinHyperparameterError(
                f"built-in hyperparameter overlap_threshold={values['overlap_threshold']!r}: it is the IoU at which the "
                f"built-in's validation:mAP counts a detection, and beedet reports validation:mAP at IoU "
                f"{_METRIC_IOU} only (its AP50, the built-in's default). Leave overlap_threshold out or set it to "
                f"{_METRIC_IOU}; beedet also logs COCO's val:AP75 and val:mAP (IoUs 0.5 to 0.95). Anchor matching is "
                f"a separate beedet setting, model.iou_thresh")
    if "nms_threshold" in values:
        emit("nms_threshold", f"model.nms_thresh={value('nms_threshold', _fraction, 'a number in (0, 1]')}")
    if "freeze_layer_pattern" in values:
        emit("freeze_layer_pattern", f"++model.freeze_pattern={_quote(values['freeze_layer_pattern'])}")

    # Data.
    if "num_classes" in values:
        emit("num_classes", f"++data.num_classes={value('num_classes', _positive_int, 'a positive integer')}")
    if "mini_batch_size" in values:
        emit("mini_batch_size", f"data.batch_size={value('mini_batch_size', _positive_int, 'a positive integer')}")
        notes.append(f"{shown('mini_batch_size')} is beedet's batch per device (the built-in splits it across an "
                     "instance's GPUs)")
    if "num_training_samples" in given:
        value("num_training_samples", _positive_int, "a positive integer")
        notes.append(f"num_training_samples={given['num_training_samples']} has no effect: beedet counts the "
                     f"training images itself (the data report logs the count)")
    if "label_width" in values:
        value("label_width", _positive_int, "a positive integer")
        if "label_width" in given:
            notes.append(f"label_width={given['label_width']} has no effect: it pads RecordIO labels for MXNet's "
                         f"batching, and beedet reads labels of any length")

    # Optimisation. The optimizer decides what learning_rate, momentum and weight_decay do.
    epochs = value("epochs", _positive_int, "a positive integer") if "epochs" in values else None
    if epochs is not None:
        emit("epochs", f"trainer.max_epochs={epochs}")
    optimizer = None
    if "optimizer" in values:
        optimizer = values["optimizer"].lower()
        if optimizer not in OPTIMIZERS:
            raise BuiltinHyperparameterError(f"built-in hyperparameter optimizer={values['optimizer']!r}: expected "
                                             f"one of {', '.join(OPTIMIZERS)}")
        emit("optimizer", f"optimizer={OPTIMIZERS[optimizer]}")
        if optimizer == "sgd":
            emit("optimizer", "optimizer.nesterov=false")  # the built-in's SGD is plain momentum SGD
    if "learning_rate" in values:
        lr = value("learning_rate", _fraction, "a number in (0, 1]")
        if optimizer in _WITHOUT_LEARNING_RATE:
            ignored.add("learning_rate")
            if "learning_rate" in given:
                notes.append(f"learning_rate={given['learning_rate']} has no effect with optimizer={optimizer}: "
                             f"MXNet's AdaDelta (the built-in's) has no learning rate; torch's Adadelta runs at "
                             f"lr 1.0, the same update")
        else:
            emit("learning_rate", f"optimizer.lr={lr}")
    if "momentum" in values:
        momentum = value("momentum", _fraction, "a number in (0, 1]")
        if optimizer is None or optimizer in _WITH_MOMENTUM:
            emit("momentum", f"optimizer.momentum={momentum}")
        else:  # beedet's adam and adadelta have none; its rmsprop keeps momentum 0
            ignored.add("momentum")
            if "momentum" in given:
                notes.append(f"momentum={given['momentum']} has no effect with optimizer={optimizer}: the "
                             f"built-in's momentum is sgd's only (ignored for other optimizers)")
    if "weight_decay" in values:
        decay = value("weight_decay", _open_unit, "a number in (0, 1)")
        if optimizer is None or optimizer in _WITH_WEIGHT_DECAY:
            emit("weight_decay", f"optimizer.weight_decay={decay}")
        else:  # adam, adadelta: none, unless the job sets optimizer.weight_decay itself
            ignored.add("weight_decay")
            emit("weight_decay", "optimizer.weight_decay=0.0", yields=True)
            if "weight_decay" in given:
                notes.append(f"weight_decay={given['weight_decay']} has no effect with optimizer={optimizer}: the "
                             f"built-in applies weight decay to sgd and rmsprop only, so {optimizer} runs without")
    if "lr_scheduler_step" in values or "lr_scheduler_factor" in values:
        scheduling = next((n for n in ("lr_scheduler_step", "lr_scheduler_factor") if n in given), "lr_scheduler_factor")
        emit(scheduling, "scheduler=warmup_multistep")
        total = epochs or default_epochs
        steps = value("lr_scheduler_step", _epoch_list, "comma-separated epochs, e.g. '3,6'") if "lr_scheduler_step" in values else []
        kept = [s for s in steps if s < total]
        if optimizer in _WITHOUT_LEARNING_RATE and steps:
            notes.append(f"lr_scheduler_step={values['lr_scheduler_step']} has no effect with optimizer={optimizer}: "
                         f"MXNet's AdaDelta has no learning rate to step")
            kept = []
        elif len(kept) < len(steps):
            notes.append(f"lr_scheduler_step epochs {[s for s in steps if s >= total]} are at or after the last "
                         f"epoch ({total}), so the lr never drops there (as in the built-in)")
        emit(scheduling, "scheduler.milestones=[" + ",".join(f"{s / total:.6g}" for s in kept) + "]")
        if "lr_scheduler_factor" in values:
            emit("lr_scheduler_factor",
                 f"scheduler.gamma={value('lr_scheduler_factor', _open_unit, 'a number in (0, 1)')}")

    # Early stopping, on the built-in's validation:mAP (AP50) and its relative tolerance alone.
    if "early_stopping" in values and value("early_stopping", _flag, "True or False"):
        emit("early_stopping", "callbacks=[default,early_stopping]")
        emit("early_stopping", "callbacks.early_stopping.monitor=val/AP50", yields=True)
        emit("early_stopping", "callbacks.early_stopping.min_delta=0.0", yields=True)
        if "early_stopping_min_epochs" in values:
            emit("early_stopping_min_epochs",
                 f"++trainer.min_epochs={value('early_stopping_min_epochs', _positive_int, 'a positive integer')}")
        if "early_stopping_patience" in values:
            emit("early_stopping_patience", "callbacks.early_stopping.patience="
                 f"{value('early_stopping_patience', _positive_int, 'a positive integer')}")
        if "early_stopping_tolerance" in values:
            emit("early_stopping_tolerance", "callbacks.early_stopping.relative_min_delta="
                 f"{value('early_stopping_tolerance', _unit, 'a number in [0, 1]')}")
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

    # A default (or a consequence such as adam's zero weight decay) yields to the key set directly.
    kept_out = [(name, o) for name, o, yields in out if not (yields and o.split("=", 1)[0].lstrip("+") in remaining)]
    applied = [name for name in implied if name in ignored or any(name == n for n, _ in kept_out)]
    if applied:
        notes.insert(0, "the built-in's defaults for the names the job leaves out: " + ", ".join(
            f"{name}={implied[name]}" + (f" (no effect with {optimizer})" if name in ignored else "") for name in applied))
    overrides = [o for _, o in kept_out]
    # The built-in algorithm's metric names too, so a tuning job's objective (validation:mAP) still reads.
    overrides.append("callbacks.metric_log_lines.builtin_names=true")
    # And its endpoint's answer to plain application/json, so the clients written for it keep working.
    overrides.append("endpoint_json=builtin")
    return Translation(overrides, dict(remaining), notes)


def log_notes(translation: Translation) -> None:
    for note in translation.notes:
        log.warning("built-in hyperparameter: %s", note)


def _positive_int(text: str) -> int:
    number = float(text)
    if not number.is_integer() or number < 1:
        raise ValueError(text)
    return int(number)


def _unit(text: str) -> float:
    number = float(text)
    if not 0.0 <= number <= 1.0:
        raise ValueError(text)
    return number


def _open_unit(text: str) -> float:
    number = float(text)
    if not 0.0 < number < 1.0:
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
