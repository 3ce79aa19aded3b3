"""Checkpoints that are never half-written, and never run code when read.

A run killed while saving (OOM killer, spot interruption, Ctrl-C) must leave the previous
``last.ckpt`` intact, or resuming is impossible. Lightning writes checkpoints through a
``CheckpointIO`` plugin; this one writes to a temporary file in the same directory, fsyncs it, and
renames it over the target, which POSIX makes atomic.

Reading is the other half: :func:`load_checkpoint` unpickles tensors and plain data only and
refuses stored configs that name classes beedet does not trust, because a checkpoint downloaded
or shared is a program otherwise. Its plain-data payload is one typed class,
:class:`CheckpointPayload`. :func:`load_initial_weights` reads the same way the weights a run
starts from (``init_checkpoint``: a checkpoint, or a model artifact as a training job leaves it).
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import posixpath
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any

import torch
import yaml
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with write-to-temp-then-rename saves (local filesystems)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            # mkstemp creates 0600; give the file the permissions a plain open() would.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# ---- reading checkpoints from anywhere -------------------------------------------------------
# A checkpoint is a pickle, and a pickle is a program. Everything beedet reads from a checkpoint
# (evaluate.py, beedet.predict, serving, the SageMaker artifact writer) goes through
# load_checkpoint, which lets torch unpickle only tensors and plain data (weights_only=True), and
# then checks what plain data can still smuggle into the stored run config, which assembly and
# evaluate.py instantiate (network, optimizer, slicing, data): Hydra ``_target_`` names, which must
# be on one explicit list, and OmegaConf interpolations (``${oc.create:...}`` builds new nodes when
# resolved, ``${oc.env:...}`` reads the environment), which a saved config never holds because runs
# save it resolved. Resuming a run from its own last.ckpt in its own run directory keeps Lightning's
# loader (trainer.fit(ckpt_path=...)).

PAYLOAD_KEY = "beedet"
PAYLOAD_FORMAT = 2

# Every ``_target_`` a stored config may name: beedet's own that conf/ names (plus the data sources
# a user's data config may name, and the artifact callback a SageMaker job adds), and the torch,
# Lightning and albumentations classes conf/ names. tests/test_checkpoint_safety.py keeps this list
# and conf/ in step. Being defined in beedet is not enough: beedet.checkpointing.convert_checkpoint
# unpickles, beedet.sagemaker.launch.main starts paid jobs.
TRUSTED_BEEDET_TARGETS = frozenset({
    "beedet.data.augment.build_pipeline",
    "beedet.training.averaging.ExponentialMovingAverage",
    *(f"beedet.training.callbacks.{name}" for name in (
        "AugmentationPreview", "CountPlot", "PRCurves", "PredictionOverlays", "RelativeEarlyStopping",
        "ValidationQuality")),
    "beedet.data.datamodule.BeeDataModule",
    *(f"beedet.data.sources.{name}" for name in (
        "CocoSource", "ImageJsonSource", "LabelStudioSource", "ManifestSource", "RecordIOSource", "SyntheticSource",
        "VocSource", "YoloSource", "source_for_path")),
    *(f"beedet.models.ssd.{name}" for name in ("ssd300_vgg16", "ssd_resnet", "ssd_resnet_slim",
                                              "ssdlite320_mobilenet_v3_large")),
    "beedet.sagemaker.artifact.ModelArtifact",
    "beedet.sagemaker.metrics.MetricLogLines",
    *(f"beedet.training.schedules.{name}" for name in ("warmup_constant", "warmup_cosine", "warmup_multistep")),
    "beedet.training.tensorboard_run.run_name",
    "beedet.training.throughput.SpeedMonitor",
    "beedet.training.final_validation.ValidateFinalWeights",
    "beedet.inference.tiling.Slicing",
    "beedet.inference.test_time_flips.TestTimeFlips",
})
TRUSTED_FOREIGN_TARGETS = frozenset({
    *(f"albumentations.{name}" for name in (
        "Affine", "AtLeastOneBBoxRandomCrop", "ColorJitter", "GaussNoise", "GaussianBlur", "HorizontalFlip",
        "LongestMaxSize", "Mosaic", "MotionBlur", "OneOf", "PadIfNeeded", "RandomBrightnessContrast", "RandomCrop",
        "RandomResizedCrop", "RandomRotate90", "RandomScale", "Resize", "SaltAndPepper", "Sequential",
        "VerticalFlip")),
    "pytorch_lightning.Trainer",
    "pytorch_lightning.callbacks.LearningRateMonitor",
    "pytorch_lightning.callbacks.ModelCheckpoint",
    "pytorch_lightning.loggers.TensorBoardLogger",
    *(f"torch.optim.{name}" for name in ("Adadelta", "Adam", "AdamW", "RMSprop", "SGD")),
})
TRUSTED_TARGETS = TRUSTED_BEEDET_TARGETS | TRUSTED_FOREIGN_TARGETS

# Old ``_target_`` -> new, for every beedet name a stored config may hold that has since moved
# (when the flat beedet/ modules were grouped into training/, inference/ and data/). A checkpoint
# written before a move names the old place; CheckpointPayload.from_plain renames its stored config
# as it reads it, before the trust check and before anything is built, so such checkpoints (and the
# model artifacts holding them) still load, evaluate, export and serve, and a converted or
# re-packed one is written with the new names. Only the new names are trusted; an old name is never
# imported. tests/test_checkpoint_safety.py checks that every new name is trusted and importable.
RENAMED_TARGETS: Mapping[str, str] = MappingProxyType({
    "beedet.augment.build_pipeline": "beedet.data.augment.build_pipeline",
    "beedet.averaging.ExponentialMovingAverage": "beedet.training.averaging.ExponentialMovingAverage",
    "beedet.callbacks.AugmentationPreview": "beedet.training.callbacks.AugmentationPreview",
    "beedet.callbacks.CountPlot": "beedet.training.callbacks.CountPlot",
    "beedet.callbacks.PRCurves": "beedet.training.callbacks.PRCurves",
    "beedet.callbacks.PredictionOverlays": "beedet.training.callbacks.PredictionOverlays",
    "beedet.callbacks.RelativeEarlyStopping": "beedet.training.callbacks.RelativeEarlyStopping",
    "beedet.callbacks.ValidationQuality": "beedet.training.callbacks.ValidationQuality",
    "beedet.schedules.warmup_constant": "beedet.training.schedules.warmup_constant",
    "beedet.schedules.warmup_cosine": "beedet.training.schedules.warmup_cosine",
    "beedet.schedules.warmup_multistep": "beedet.training.schedules.warmup_multistep",
    "beedet.tensorboard_run.run_name": "beedet.training.tensorboard_run.run_name",
    "beedet.throughput.SpeedMonitor": "beedet.training.throughput.SpeedMonitor",
    "beedet.tiling.Slicing": "beedet.inference.tiling.Slicing",
    "beedet.training.time_limit.ValidateAtTimeLimit": "beedet.training.final_validation.ValidateFinalWeights",
})


class UntrustedCheckpoint(ValueError):
    """A checkpoint that beedet refuses to load: pickled objects beyond tensors and plain data,
    or a stored config naming a ``_target_`` beedet does not trust."""


@dataclass(frozen=True)
class CheckpointPayload:
    """What a beedet checkpoint holds beside the weights, as plain data (``checkpoint["beedet"]``).

    ``class_names``: the name of each class id (0-based, no background). ``config_yaml``: the
    resolved run config as YAML text. ``count_threshold``: the score threshold for counting (None:
    not chosen yet). ``size_bins``: inner area edges (px^2) of the validation size bins, or None.
    Written by :meth:`to_plain` (``DetectionModule.on_save_checkpoint``), read by :meth:`from_plain`
    (:func:`load_checkpoint`): one writer, one reader.
    """

    class_names: list[str]
    config_yaml: str
    count_threshold: float | None = None
    size_bins: list[float] | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any], class_names: Sequence[str], *, count_threshold: float | None,
                    size_bins: Sequence[float] | None) -> CheckpointPayload:
        return cls(list(class_names), yaml.safe_dump(config, sort_keys=False), count_threshold,
                   None if size_bins is None else [float(b) for b in size_bins])

    @property
    def config(self) -> dict[str, Any]:
        """The run config as plain containers (parsed with ``yaml.safe_load``: no tags, no objects)."""
        config = yaml.safe_load(self.config_yaml)
        return config if isinstance(config, dict) else {}

    def to_plain(self) -> dict[str, Any]:
        return {"format": PAYLOAD_FORMAT, "class_names": list(self.class_names), "config_yaml": self.config_yaml,
                "count_threshold": self.count_threshold, "size_bins": self.size_bins}

    @classmethod
    def from_plain(cls, entry: Any, source: str | os.PathLike) -> CheckpointPayload:
        """Read ``checkpoint["beedet"]``; raises ``ValueError`` naming ``source`` when it is malformed.

        Format 1 (beedet before this class: the config as a dict) holds the same plain data and is
        read the same way. ``_target_`` s that have moved since the checkpoint was written are
        renamed (:data:`RENAMED_TARGETS`, :func:`renamed_targets`)."""
        if not isinstance(entry, dict):
            raise ValueError(f"{source}: the '{PAYLOAD_KEY}' entry is a {type(entry).__name__}, not a dict")
        if entry.get("format", 1) == 1 and isinstance(entry.get("config"), dict):
            entry = {**entry, "config_yaml": yaml.safe_dump(entry["config"], sort_keys=False)}
        elif entry.get("format") != PAYLOAD_FORMAT:
            raise ValueError(f"{source}: unknown beedet checkpoint format {entry.get('format')!r}; "
                             f"this beedet reads formats 1 and {PAYLOAD_FORMAT}")
        names, text = entry.get("class_names"), entry.get("config_yaml")
        threshold, bins = entry.get("count_threshold"), entry.get("size_bins")
        if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
            raise ValueError(f"{source}: class_names must be a non-empty list of strings, got {names!r}")
        if not isinstance(text, str):
            raise ValueError(f"{source}: config_yaml must be text, got {type(text).__name__}")
        if threshold is not None and not isinstance(threshold, (int, float)):
            raise ValueError(f"{source}: count_threshold must be a number or null, got {threshold!r}")
        if bins is not None and not (isinstance(bins, list) and all(isinstance(b, (int, float)) for b in bins)):
            raise ValueError(f"{source}: size_bins must be a list of numbers or null, got {bins!r}")
        return cls(list(names), renamed_targets(text), None if threshold is None else float(threshold),
                   None if bins is None else [float(b) for b in bins])


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], CheckpointPayload]:
    """Read a beedet checkpoint on the CPU without running any code it might carry.

    Returns the checkpoint dict (``state_dict`` and the rest, tensors and plain data only) and its
    payload, whose stored config names only trusted ``_target_`` s and holds no interpolation
    (:func:`untrusted_targets`).
    Raises ``FileNotFoundError``, :class:`UntrustedCheckpoint` (pickled objects or foreign
    targets; nothing has run) or ``ValueError`` (not a beedet checkpoint).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return _read_checkpoint(path, path)


def _read_checkpoint(file: Path | IO[bytes], path: str | os.PathLike) -> tuple[dict[str, Any], CheckpointPayload]:
    """:func:`load_checkpoint` of ``file`` (a path, or a checkpoint's bytes), named ``path`` in messages."""
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UntrustedCheckpoint(
            f"{path} holds pickled objects other than tensors and plain data, so beedet will not load it "
            f"(that could run code). If it is an older checkpoint you trust, convert it once: "
            f"python -m beedet.checkpointing {path} <converted.ckpt>   (torch: {first_line})") from None
    if not isinstance(checkpoint, dict) or PAYLOAD_KEY not in checkpoint:
        raise ValueError(f"{path} is not a beedet checkpoint (no '{PAYLOAD_KEY}' entry)")
    payload = CheckpointPayload.from_plain(checkpoint[PAYLOAD_KEY], path)
    foreign = untrusted_targets(payload.config)
    if foreign:
        raise UntrustedCheckpoint(
            f"{path}: its stored config holds {', '.join(sorted(set(foreign)))}, which beedet does not trust (a "
            f"_target_ must be one of the {len(TRUSTED_TARGETS)} beedet, torch, Lightning and albumentations names "
            f"beedet's conf/ uses, and a saved config holds no ${{...}} interpolation); nothing was built")
    return checkpoint, payload


# The checkpoint inside a model artifact (beedet.sagemaker.artifact writes it, serving reads it).
ARTIFACT_CHECKPOINT = "model.ckpt"
# Names of a model artifact archive (a training job's model.tar.gz).
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


class InitCheckpointError(ValueError):
    """The weights a run was asked to start from (``init_checkpoint``, a SageMaker job's ``model``
    channel) cannot start it: nothing beedet reads there, other classes than the data's, or weights
    that do not fit the network. The message names the file. Raised before training."""


def load_initial_weights(source: str | os.PathLike, class_names: Sequence[str]) -> tuple[dict[str, Any], str]:
    """The ``state_dict`` of the beedet checkpoint in ``source``, read as :func:`load_checkpoint`
    reads (tensors and plain data, trusted targets only), for a run on data of ``class_names``.
    Returns it and the file it came from, for messages (``<archive>:model.ckpt`` inside an archive).

    ``source``: a checkpoint file (``best.ckpt``); a model artifact archive as a training job leaves
    it (``model.tar.gz``, :data:`ARCHIVE_SUFFIXES`), whose ``model.ckpt`` (else its only ``.ckpt``)
    is read without extracting anything; or a directory holding ``model.ckpt`` (an extracted
    artifact), else exactly one archive or ``.ckpt`` file (a SageMaker ``model`` channel).
    Raises :class:`InitCheckpointError` when nothing there can be read, or when the checkpoint's
    class names are not ``class_names`` in the same order (the head's outputs would mean other
    classes); :class:`UntrustedCheckpoint` as :func:`load_checkpoint` does."""
    path = Path(source)
    if path.is_dir():
        path = _checkpoint_in_directory(path)
    if not path.is_file():
        hint = " (an S3 URI is given to a SageMaker job as its `model` channel: +channels.model=...)" \
            if str(source).startswith("s3:/") else ""
        raise InitCheckpointError(f"init_checkpoint {source}: no such file or directory{hint}")
    try:
        if path.name.lower().endswith(ARCHIVE_SUFFIXES):
            name, data = _checkpoint_in_archive(path)
            checkpoint, payload = _read_checkpoint(io.BytesIO(data), name)
        else:
            name = str(path)
            checkpoint, payload = load_checkpoint(path)
    except (UntrustedCheckpoint, InitCheckpointError):
        raise
    except (ValueError, OSError, RuntimeError, EOFError, tarfile.TarError) as exc:
        raise InitCheckpointError(f"init_checkpoint {source}: cannot read a beedet checkpoint from {path}: {exc}") from exc
    if list(payload.class_names) != list(class_names):
        raise InitCheckpointError(
            f"init_checkpoint {name}: that model was trained on the classes {payload.class_names}, this run's data has "
            f"{list(class_names)}. Starting from it needs the same classes in the same order (its head's outputs "
            f"are those classes); give the data the earlier run's class names, or train without init_checkpoint "
            f"(in a SageMaker job: without the `model` channel)")
    state_dict = checkpoint.get("state_dict")
    if not isinstance(state_dict, dict) or not state_dict:
        raise InitCheckpointError(f"init_checkpoint {name}: the checkpoint holds no state_dict")
    return state_dict, name


def _checkpoint_in_directory(directory: Path) -> Path:
    if (directory / ARTIFACT_CHECKPOINT).is_file():
        return directory / ARTIFACT_CHECKPOINT
    files = sorted(p for p in directory.iterdir() if p.is_file())
    found = [p for p in files if p.name.lower().endswith((*ARCHIVE_SUFFIXES, ".ckpt"))]
    if len(found) == 1:
        return found[0]
    holds = ", ".join(p.name for p in (found or files)[:10]) or "nothing"
    raise InitCheckpointError(
        f"init_checkpoint {directory}: expected {ARTIFACT_CHECKPOINT} (an extracted model artifact) or exactly one "
        f"model.tar.gz or .ckpt file (a SageMaker `model` channel holds the earlier job's model.tar.gz); found {holds}")


def _checkpoint_in_archive(archive: Path) -> tuple[str, bytes]:
    """``(name, bytes)`` of the artifact checkpoint in ``archive``; nothing is written to disk."""
    with tarfile.open(archive, "r:*") as tar:
        files = [m for m in tar.getmembers() if m.isfile()]
        named = [m for m in files if posixpath.normpath(m.name) == ARTIFACT_CHECKPOINT]
        found = named or [m for m in files if m.name.lower().endswith(".ckpt")]
        if len(found) != 1:
            listed = ", ".join(m.name for m in files[:10]) or "nothing"
            raise InitCheckpointError(f"init_checkpoint {archive}: expected one {ARTIFACT_CHECKPOINT} in the archive "
                                      f"(as a beedet training job's model.tar.gz holds it); it holds {listed}")
        member = tar.extractfile(found[0])
        assert member is not None  # a regular file
        return f"{archive}:{posixpath.normpath(found[0].name)}", member.read()


def renamed_targets(config_yaml: str) -> str:
    """``config_yaml`` (a stored run config) with every ``_target_`` that :data:`RENAMED_TARGETS`
    lists replaced by its new name; the text itself, unchanged, when it names none of them (or is
    not YAML: reading the config reports that). Only ``_target_`` values are renamed."""
    if not any(old in config_yaml for old in RENAMED_TARGETS):
        return config_yaml
    try:
        config = yaml.safe_load(config_yaml)
    except yaml.YAMLError:
        return config_yaml
    renamed = 0
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            target = node.get("_target_")
            if isinstance(target, str) and target in RENAMED_TARGETS:
                node["_target_"] = RENAMED_TARGETS[target]
                renamed += 1
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return yaml.safe_dump(config, sort_keys=False) if renamed else config_yaml


def untrusted_targets(config: Any) -> list[str]:
    """What in ``config`` (nested dicts and lists) a checkpoint may not carry: every ``_target_``
    not in :data:`TRUSTED_TARGETS`, and every string holding an OmegaConf interpolation (``${``),
    each as it is written."""
    found: list[str] = []
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            target = node.get("_target_")
            if target is not None and target not in TRUSTED_TARGETS:
                found.append(str(target))
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, str) and "${" in node:
            found.append(node)
    return found


def convert_checkpoint(source: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Rewrite a checkpoint you trust (an older beedet's, or one whose extra entries hold pickled
    objects) as one :func:`load_checkpoint` accepts: the weights, the payload in the current format
    and the epoch and step. Optimizer and loop state are left behind (resume from the original).

    This is the one place that unpickles with ``weights_only=False``: run it only on files you trust.
    The result is read back through :func:`load_checkpoint` before this returns."""
    source, destination = Path(source), Path(destination)
    full = torch.load(source, map_location="cpu", weights_only=False)
    if not isinstance(full, dict) or PAYLOAD_KEY not in full:
        raise ValueError(f"{source} is not a beedet checkpoint (no '{PAYLOAD_KEY}' entry)")
    payload = CheckpointPayload.from_plain(full[PAYLOAD_KEY], source)
    state_dict = {str(k): v for k, v in full["state_dict"].items() if isinstance(v, torch.Tensor)}
    converted = {"state_dict": state_dict, PAYLOAD_KEY: payload.to_plain(),
                 **{k: full[k] for k in ("epoch", "global_step", "pytorch-lightning_version") if k in full}}
    AtomicCheckpointIO().save_checkpoint(converted, destination)
    load_checkpoint(destination)
    return destination


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m beedet.checkpointing",
                                     description="Convert a trusted older checkpoint into one beedet loads safely.")
    parser.add_argument("source", help="the checkpoint to convert (it is unpickled: only one you trust)")
    parser.add_argument("destination", help="where to write the converted checkpoint")
    args = parser.parse_args(argv)
    print(f"wrote {convert_checkpoint(args.source, args.destination)}")


if __name__ == "__main__":
    main()
