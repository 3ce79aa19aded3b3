"""``train.py`` inside a SageMaker training job: the job's hyperparameters and container layout
turned into Hydra overrides, so the script itself runs unchanged.

How the container becomes overrides (each skipped when the job's hyperparameters set that key):

* **hyperparameters** (``--key value``, or ``SM_HPS`` / ``hyperparameters.json`` when the
  container was started with just ``train``): decoded from their wire names and values
  (``--trainer__max_epochs 50`` -> ``trainer.max_epochs=50``; SageMaker's own
  ``_tuning_objective_metric`` and ``sagemaker_*`` set aside with a log line), then
  ``beedet.sagemaker.hyperparameters``; they come last, so they win.
* **channels**: ``train`` -> ``data.train`` (and ``data.root``), ``validation`` (or ``val``) ->
  ``data.val``; with a train channel and no validation channel, ``data.val=null`` splits
  ``data.val_fraction`` off the training images. A channel directory holds a Ground Truth manifest
  (``*.manifest`` / ``*.jsonl``, its ``s3://`` source-refs resolved into the channel directory),
  else the built-in detector's RecordIO ``*.rec``, else a COCO (or Label Studio) ``*.json``, else
  a YOLO ``images/`` + ``labels/`` folder; with a ``train_annotation`` (``validation_annotation``)
  channel beside it, the built-in detector's image format: images here, one JSON per image there. A
  channel in Pipe mode is the built-in detector's augmented manifest (``AugmentedManifestFile``,
  RecordIO-wrapped): its pipe ``<channel>_0`` is read once into the channel directory
  (:func:`pipe_channel_source`). Other channels (the SDK v3's
  ``code`` and ``sm_drivers``, or ``test``) are not training data and are left alone.
* **weights channels**: ``pretrained`` -> ``pretrained_dir`` (the ImageNet weight file
  ``model.pretrained_backbone`` loads: the one named as torchvision names it, e.g.
  ``resnet50-0676ba61.pth``, else the channel's only ``.pth``/``.pt``; never downloaded), ``model``
  -> ``init_checkpoint`` (the built-in's incremental training: an earlier job's ``model.tar.gz``, or
  its extracted files, whose weights the network starts from; same classes, fresh optimizer).
* **failures**: why train.py stopped (a hyperparameter it cannot map, a pretrained base it cannot
  get, any error while training: :func:`job_failure_reported`) is also written to
  ``$SM_OUTPUT_DIR/failure``, which SageMaker shows as the job's FailureReason.
* **outputs**: ``run_dir=$SM_OUTPUT_DATA_DIR`` (metrics.json, report.md, data_report.md, .hydra/:
  SageMaker packs them into ``output.tar.gz``); TensorBoard events go to
  ``$SM_OUTPUT_DIR/tensorboard/<job name>``, under the path a TensorBoardOutputConfig uploads to S3
  while the job runs, so TensorBoard names the run after the job.
* **spot training**: ``paths.checkpoint_dir`` is the job's checkpoint directory
  (``/opt/ml/checkpoints``, synced with the checkpoint S3 URI both ways) and ``ckpt_path=last``:
  a restarted job finds the ``last.ckpt`` SageMaker copied back and resumes from it; a first
  attempt finds none and starts fresh (Lightning warns and goes on).
* **several instances**: the launcher starts train.py with torchrun on every instance
  (``torch_distributed`` / the SDK's ``Torchrun``), which sets RANK, WORLD_SIZE, MASTER_ADDR and
  LOCAL_RANK; Lightning reads them (its TorchElastic environment) and infers the devices per node
  (one per GPU, as torchrun starts one process per GPU). What it cannot infer is the node count,
  so ``trainer.num_nodes`` is set from ``SM_HOSTS``. Several instances without torchrun would train
  the same model once per instance: that is refused with a message.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from beedet.checkpointing import InitCheckpointError, UntrustedCheckpoint
from beedet.compose import CONF_DIR
from beedet.data.image_json import ANNOTATION_SUFFIX
from beedet.data.sources import detect_format
from beedet.models.backbones import PretrainedWeightsError
from beedet.sagemaker.builtin_hyperparameters import NAMES as BUILTIN_NAMES
from beedet.sagemaker.builtin_hyperparameters import log_notes as log_builtin_notes
from beedet.sagemaker.builtin_hyperparameters import translate
from beedet.sagemaker.environment import SageMakerEnvironment, SageMakerEnvironmentError, running_under_sagemaker
from beedet.sagemaker.hyperparameters import (
    EXPERIMENT_KEY,
    HyperparameterError,
    check_keys,
    config_keys,
    decode_hyperparameters,
    hyperparameters_from_json,
    is_hyperparameter_argv,
    parse_hyperparameter_argv,
    to_overrides,
)

# SageMaker's BYO-container contract: the image is started as `docker run IMAGE train`.
TRAIN_COMMAND = "train"
# Channel name -> the data config key it fills. Both SageMaker spellings of validation.
DATA_CHANNELS: dict[str, str] = {"train": "train", "training": "train", "validation": "val", "val": "val"}
# Manifest file names that say which split a manifest is, when one channel holds several.
_SPLIT_STEMS = {"train": ("train", "training"), "val": ("validation", "valid", "val")}
MANIFEST_SUFFIXES = (".manifest", ".jsonl")
# Channels that bring weights, not data -> the train config key each sets (README: SageMaker).
# `model` is the built-in algorithm's channel for incremental training; `pretrained` is beedet's.
WEIGHTS_CHANNELS: dict[str, str] = {"pretrained": "pretrained_dir", "model": "init_checkpoint"}
# The errors by which beedet stops a run with a message for the user: a job's failure reason is
# that message, not the wrapper's (Hydra's InstantiationException) or its cause's (a socket error).
_STOP_ERRORS = (PretrainedWeightsError, InitCheckpointError, UntrustedCheckpoint)
# Hydra's own command-line flags: `python train.py -m optimizer.lr=1e-3,3e-3` is Hydra's, not a job's.
_HYDRA_FLAGS = frozenset({"-m", "--multirun", "-c", "--cfg", "-p", "--package", "-r", "--run", "-i", "--info",
                          "-h", "--help", "--hydra-help", "--version", "--resolve", "-sc", "--shell-completion",
                          "-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir",
                          "--experimental-rerun"})
# torchrun (and torch.distributed.launch) set these for every process they start.
_TORCHRUN_VARIABLES = ("TORCHELASTIC_RUN_ID", "LOCAL_WORLD_SIZE")


class SageMakerJobError(ValueError):
    """The training job's container cannot be mapped onto train.py; the message says how to fix it."""


def script_arguments(argv: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
    """train.py's Hydra arguments for its command line ``argv`` (without the script name):
    :func:`sagemaker_argv` inside a SageMaker training job (``env``, default ``os.environ``, says
    so), else :func:`local_arguments`. Exits with a message when the arguments cannot be mapped."""
    env = os.environ if env is None else env
    return sagemaker_argv(argv, env) if running_under_sagemaker(env) else local_arguments(argv)


def sagemaker_argv(argv: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
    """train.py's Hydra arguments for its command line ``argv`` (without the script name) inside a
    SageMaker training job: :func:`job_overrides` of the container followed by the
    hyperparameters' overrides. ``argv`` that is already Hydra's (``key=value``, or ``-cp DIR -cn
    NAME`` when Lightning's DDP launcher re-runs the script) comes back unchanged. Exits with
    the error's message (also written to the job's ``failure`` file, which SageMaker shows as the
    failure reason) when the job cannot be mapped."""
    env = os.environ if env is None else env
    try:
        overrides = job_arguments(argv, env)
    except (HyperparameterError, SageMakerJobError, SageMakerEnvironmentError) as exc:
        _write_failure(env, f"train.py: {exc}")
        raise SystemExit(f"train.py: {exc}") from None
    if overrides != list(argv) and env.get("RANK", "0") == "0":
        print("SageMaker training job: train.py " + " ".join(overrides), file=sys.stderr, flush=True)
    return overrides


def job_arguments(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """:func:`sagemaker_argv` without the exit: raises :class:`HyperparameterError` (a bad key,
    listing the valid ones), :class:`SageMakerJobError` or ``SageMakerEnvironmentError``."""
    args = list(argv)
    if args[:1] == [TRAIN_COMMAND]:
        args = args[1:]
    if not is_hyperparameter_argv(args):
        return args
    sm = SageMakerEnvironment.from_env(env)
    received = parse_hyperparameter_argv(args) if args else hyperparameters_from_json(sm.hyperparameters)
    hyperparameters = _decoded(received, env)
    return hyperparameter_overrides(hyperparameters, lambda cfg, plain: job_overrides(sm, cfg, plain, env))


def local_arguments(argv: Sequence[str]) -> list[str]:
    """train.py's Hydra arguments for a local command line written as a job's hyperparameters
    (``python train.py --base_network resnet-50 --use_pretrained_model 0 --epochs 2 --trainer.accelerator cpu``): the same
    mapping as in a job, without the container. Hydra's own arguments come back unchanged. Exits
    with the error's message when a key or value cannot be mapped."""
    args = list(argv)
    if not args or not is_hyperparameter_argv(args) or any(a in _HYDRA_FLAGS for a in args[::2]):
        return args
    try:
        return hyperparameter_overrides(_decoded(parse_hyperparameter_argv(args), os.environ))
    except HyperparameterError as exc:
        raise SystemExit(f"train.py: {exc}") from None


def _decoded(received: Mapping[str, str], env: Mapping[str, str]) -> dict[str, str]:
    """The job's hyperparameters as train.py's ``{key: value text}``; SageMaker's own names are
    left out with a line on stderr (the job's log: logging is not set up before Hydra runs)."""
    hyperparameters, reserved = decode_hyperparameters(received)
    if reserved and env.get("RANK", "0") == "0":
        print(f"SageMaker training job: ignoring SageMaker's own hyperparameters {', '.join(reserved)} "
              "(they configure SageMaker, not train.py)", file=sys.stderr, flush=True)
    return hyperparameters


def hyperparameter_overrides(
    hyperparameters: Mapping[str, str],
    container: Callable[[DictConfig, Mapping[str, str]], list[str]] | None = None,
) -> list[str]:
    """The overrides for a job's ``{key: value text}``: the built-in detector's names translated
    (:mod:`beedet.sagemaker.builtin_hyperparameters`), beedet's own keys checked against the
    config they compose, and ``container(cfg, hyperparameters)``'s overrides (the job's data,
    outputs and checkpoints) first. Raises :class:`HyperparameterError`."""
    plain = {k: v for k, v in hyperparameters.items() if k not in BUILTIN_NAMES}
    groups = config_groups()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        # The experiment and group choices decide which keys exist; a bad plain key is then
        # reported by check_keys with the valid ones, not by Hydra.
        choices = [o for o, key in zip(to_overrides(plain), plain) if key in groups or key == EXPERIMENT_KEY]
        epochs = plain.get("trainer.max_epochs") or compose(config_name="train", overrides=choices).trainer.max_epochs
        builtin = translate(hyperparameters, default_epochs=int(epochs))
        _refuse_double_settings(builtin.overrides, plain)
        choices = [o for o in builtin.overrides if o.split("=", 1)[0] in groups] + choices
        job = container(compose(config_name="train", overrides=choices), plain) if container else []
        # Keys as the job will have them: a channel's data source brings its own (data.train.path).
        valid = config_keys(compose(config_name="train", overrides=job + choices))
    check_keys(plain, valid | groups | {EXPERIMENT_KEY} | BUILTIN_NAMES)
    overrides = job + builtin.overrides + to_overrides(plain)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        compose(config_name="train", overrides=overrides)  # fails here, before any data is read
    log_builtin_notes(builtin)
    return overrides


def _refuse_double_settings(builtin: Sequence[str], plain: Mapping[str, str]) -> None:
    """A built-in name and a beedet key for the same setting (``epochs`` and ``trainer.max_epochs``)
    would leave it to override order which one wins: refuse, naming both."""
    for override in builtin:
        key = override.split("=", 1)[0].lstrip("+")
        if key in plain:
            raise HyperparameterError(f"--{key} is set twice: directly ({plain[key]!r}) and by a built-in "
                                      f"hyperparameter (as {override!r}); keep one")


@functools.cache
def config_groups() -> frozenset[str]:
    """The config groups of conf/train.yaml's defaults list (data, model, trainer, ...)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        base = compose(config_name="train", return_hydra_config=True)
    return frozenset(g for g in base.hydra.runtime.choices if "/" not in g and g != "hydra")


def job_overrides(sm: SageMakerEnvironment, cfg: DictConfig, hyperparameters: Mapping[str, str],
                  env: Mapping[str, str] | None = None) -> list[str]:
    """The overrides that put train.py's inputs and outputs where the job's container has them
    (see the module docstring). ``cfg``: the train config composed with the job's group choices
    (its structure decides which keys exist); ``hyperparameters``: the job's ``{key: value text}``,
    whose keys are never overridden here (their overrides come after these, so
    ``--data.train.path X`` still adjusts a channel's source). ``env`` (default ``os.environ``) tells whether torchrun started us."""
    env = os.environ if env is None else env

    def unset(key: str) -> bool:
        return key not in hyperparameters

    overrides = []
    if unset("run_dir"):
        overrides.append(f"run_dir={_quote(sm.output_data_dir)}")
    if "checkpoint_dir" in (cfg.get("paths") or {}) and unset("paths.checkpoint_dir"):
        overrides.append(f"paths.checkpoint_dir={_quote(sm.checkpoint_dir)}")
    if unset("ckpt_path"):
        overrides.append("ckpt_path=last")
    logger = cfg.get("logger")
    if logger and "save_dir" in logger and unset("logger.save_dir") and unset("logger.name"):
        overrides += [f"logger.save_dir={_quote(sm.tensorboard_dir.parent)}", f"logger.name={_quote(sm.tensorboard_dir.name)}"]
        if sm.job_name and unset("logger.version"):  # TensorBoard's name for the run: the job's
            overrides.append(f"logger.version={_quote(sm.job_name)}")
    if cfg.get("callbacks") is not None:
        # What SageMaker keeps as model.tar.gz: the best checkpoint plus the serving code.
        artifact = {"_target_": "beedet.sagemaker.artifact.ModelArtifact", "model_dir": str(sm.model_dir)}
        if "endpoint_image" in cfg:
            # Interpolated, so that --endpoint_image beedet (after these overrides) decides.
            artifact["endpoint_image"] = "${endpoint_image}"
        overrides.append(f"+callbacks.sagemaker_model_artifact={_hydra_dict(artifact)}")
    overrides += _channel_overrides(sm.channels, hyperparameters, sm.input_data_config)
    channels = {name.lower(): directory for name, directory in sm.channels.items()}
    for name, key in WEIGHTS_CHANNELS.items():
        if name in channels and key in cfg and unset(key):
            overrides.append(f"{key}={_quote(channels[name])}")
    if len(sm.hosts) > 1 and unset("trainer.num_nodes"):
        if not any(env.get(name) for name in _TORCHRUN_VARIABLES):
            raise SageMakerJobError(
                f"{len(sm.hosts)} instances ({', '.join(sm.hosts)}) but train.py was not started by torchrun, so each "
                "would train its own copy of the model: give the job a torchrun distribution (the SDK's "
                "Torchrun(), which `python -m beedet.sagemaker.launch` adds for instance_count > 1), or use one instance")
        overrides.append(f"++trainer.num_nodes={len(sm.hosts)}")
    return overrides


def channel_source(channel_dir: Path, split: str, channel: str, manifest: str | None = None,
                   annotation_dir: Path | None = None) -> dict[str, Any]:
    """The ``beedet.data.sources`` config (``{"_target_": ..., ...}``) reading the labels in a
    channel directory, for ``split`` (``train`` or ``val``); ``manifest``: the manifest to read
    (the job's ``--data.<split>.path``), else found in the directory; ``annotation_dir``: the
    split's ``<channel>_annotation`` channel (the built-in detector's image format: images here,
    one JSON per image there). Raises :class:`SageMakerJobError` when the directory holds no
    labels beedet reads, or several candidates."""
    channel_dir = Path(channel_dir)
    where = f"channel '{channel}' ({channel_dir})"
    if not channel_dir.is_dir():
        raise SageMakerJobError(f"{where}: the directory does not exist")
    path = _labels_in_channel(channel_dir, split, channel, where, manifest, annotation_dir)
    # What the labels are is beedet.data.sources' one format detector's call; here only where they lie.
    fmt = detect_format(path)
    options = {"manifest": {"local_root": str(channel_dir)}, "coco": {"image_root": str(channel_dir)},
               "label-studio": {"image_root": str(channel_dir)}, "image-json": {"images": str(channel_dir)}}.get(fmt, {})
    return {"_target_": "beedet.data.sources.source_for_path", "path": str(path), "fmt": fmt, **options,
            # The data config's permission, as its own sources have it (conf/data/*.yaml).
            "allow_outside_root": "${data.allow_outside_root}"}


def _labels_in_channel(channel_dir: Path, split: str, channel: str, where: str, manifest: str | None,
                       annotation_dir: Path | None) -> Path:
    """The label file (or folder) of ``split`` in a channel directory; SageMakerJobError when there
    is none, or several candidates."""
    if annotation_dir is not None:
        return Path(annotation_dir)
    files = sorted(p for p in channel_dir.iterdir() if p.is_file())
    records = [p for p in files if p.suffix.lower() == ".rec"]
    if len(records) > 1:
        records = [p for p in records if p.stem.lower().split(".")[0] in _SPLIT_STEMS[split]] or records
    if len(records) == 1:
        # The built-in detector's RecordIO channel (im2rec's .rec, with its .idx / .lst when given).
        return records[0]
    if len(records) > 1:
        raise SageMakerJobError(f"{where} holds several RecordIO files ({', '.join(p.name for p in records)}): "
                                f"give each split its own channel")
    manifests = [Path(manifest.strip("'\""))] if manifest else [p for p in files if p.suffix.lower() in MANIFEST_SUFFIXES]
    if len(manifests) > 1:
        # One S3 prefix holding every split's manifest (train.manifest, valid.manifest) may be
        # given as both channels: pick this split's by name.
        manifests = [p for p in manifests if p.stem.lower().split(".")[0] in _SPLIT_STEMS[split]] or manifests
    if len(manifests) == 1:
        return manifests[0]
    if len(manifests) > 1:
        raise SageMakerJobError(f"{where} holds several manifests ({', '.join(p.name for p in manifests)}): pick one "
                                f"with the hyperparameter --data.{split}.path {channel_dir}/<name>")
    label_files = [p for p in files if p.suffix.lower() == ".json"]
    if len(label_files) == 1:
        return label_files[0]  # COCO or Label Studio: detect_format reads which
    if (channel_dir / "images").is_dir():
        return channel_dir / "images"
    found = ", ".join(p.name for p in sorted(channel_dir.iterdir())[:10]) or "nothing"
    raise SageMakerJobError(
        f"{where} holds no labels beedet reads: expected a Ground Truth manifest (*.manifest or *.jsonl, "
        f"source-ref images under the channel's S3 prefix), a RecordIO *.rec, a COCO or Label Studio *.json, "
        f"a YOLO images/ + labels/ folder, or images with a '{channel}_annotation' channel of per-image JSON; found {found}")


def pipe_channel_source(channel_dir: Path, split: str, channel: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``beedet.data.sources`` config reading a Pipe-mode channel (``config``: its
    ``inputdataconfig.json`` entry) for ``split``: an augmented manifest as SageMaker streams it
    (``S3DataType=AugmentedManifestFile``, the only S3 data type whose records beedet can tell apart
    in a pipe, with ``RecordWrapperType=RecordIO``), read from the pass-0 pipe beside
    ``channel_dir`` into ``channel_dir`` itself (:mod:`beedet.data.manifest_stream`), where a
    File-mode channel's files would be. Raises :class:`SageMakerJobError` for any other Pipe
    channel."""
    channel_dir = Path(channel_dir)
    wrapper = config.get("RecordWrapperType") or "None"
    if wrapper != "RecordIO":
        raise SageMakerJobError(
            f"channel '{channel}' is in Pipe mode with RecordWrapperType {wrapper}: beedet reads a Pipe channel only "
            "as an augmented manifest (S3DataType AugmentedManifestFile with AttributeNames, RecordWrapperType RecordIO, "
            f"as the built-in detector takes Ground Truth output); give other {split} data as a File-mode channel")
    return {"_target_": "beedet.data.sources.source_for_path", "path": str(channel_dir.parent / f"{channel}_0"),
            "fmt": "manifest-stream", "extract_dir": str(channel_dir)}


def _channel_overrides(channels: Mapping[str, Path], hyperparameters: Mapping[str, str],
                       input_data_config: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    def unset(key: str) -> bool:
        return key not in hyperparameters

    by_split: dict[str, tuple[str, Path]] = {}
    for name, directory in channels.items():
        split = DATA_CHANNELS.get(name.lower())
        if split is not None and split not in by_split:
            by_split[split] = (name, directory)
    overrides = []
    for split in ("train", "val"):
        key = f"data.{split}"
        if split not in by_split or not unset(key):
            continue
        name, directory = by_split[split]
        annotations = {n.lower(): d for n, d in channels.items()}.get(f"{name.lower()}{ANNOTATION_SUFFIX}")
        # Delete, then add: a source of another type (synthetic -> manifest) has other keys.
        config = (input_data_config or {}).get(name) or {}
        if config.get("TrainingInputMode") == "Pipe":
            source = pipe_channel_source(directory, split, name, config)
        else:
            source = channel_source(directory, split, name, manifest=hyperparameters.get(f"{key}.path"),
                                    annotation_dir=annotations)
        overrides += [f"~{key}", f"+{key}={_hydra_dict(source)}"]
        if split == "train" and unset("data.root"):
            overrides.append(f"data.root={_quote(directory)}")
    if "train" in by_split and "val" not in by_split and unset("data.val"):
        # No validation channel: split data.val_fraction off the training channel.
        overrides.append("data.val=null")
    return overrides


def _quote(value: Any) -> str:
    """A Hydra override value that is taken literally (paths may hold ':', '=', spaces...)."""
    text = str(value).replace("'", "\\'")
    return f"'{text}'"


def _hydra_dict(values: Mapping[str, Any]) -> str:
    items = ["{}:{}".format(k, "null" if v is None else _quote(v)) for k, v in values.items()]
    return "{" + ",".join(items) + "}"


@contextmanager
def job_failure_reported(env: Mapping[str, str] | None = None) -> Iterator[None]:
    """Inside a SageMaker training job (``env``, default ``os.environ``, says so), an exception
    that ends the block also goes to the job's failure file, which SageMaker shows as the job's
    FailureReason, then propagates unchanged: ``train.py: <message>``, where the message is that
    of beedet's own error in the exception's chain (a pretrained base that cannot be loaded, a
    ``model`` channel that cannot start the run: each names the file and the ways to fix it),
    else ``<type>: <message>`` of the exception. Outside a job it does nothing."""
    env = os.environ if env is None else env
    try:
        yield
    except Exception as exc:
        if running_under_sagemaker(env):
            _write_failure(env, f"train.py: {failure_message(exc)}")
        raise


def failure_message(exc: BaseException) -> str:
    """The message that says why ``exc`` stopped the run (see :func:`job_failure_reported`)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, _STOP_ERRORS):
            return str(cause)
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return f"{type(exc).__name__}: {exc}"


def _write_failure(env: Mapping[str, str], message: str) -> None:
    output_dir = env.get("SM_OUTPUT_DIR") or str(Path(env.get("SAGEMAKER_BASE_DIR") or "/opt/ml") / "output")
    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(output_dir) / "failure", "a", encoding="utf-8") as f:
            f.write(message + "\n")
    except OSError:
        pass  # the message still goes to stderr, i.e. the job's log
