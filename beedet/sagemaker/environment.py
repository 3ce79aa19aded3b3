"""The SageMaker training container's contract, read from its environment into one typed object.

SageMaker starts a training container with ``/opt/ml`` laid out and, where the SageMaker training
toolkit (the PyTorch Deep Learning Containers' script mode) or the SDK v3 ``ModelTrainer``'s own
driver (``sm_training.env``) runs the script, the ``SM_*`` variables set; both set the same names:

=========================  ====================================================================
``SM_CHANNELS``            JSON list of the input channels' names (``["train", "validation"]``)
``SM_CHANNEL_<NAME>``      each channel's directory (``/opt/ml/input/data/<name>``), NAME upper case
``SM_MODEL_DIR``           ``/opt/ml/model``: packed into ``model.tar.gz`` when the job ends
``SM_OUTPUT_DATA_DIR``     ``/opt/ml/output/data[/<host>]``: packed into ``output.tar.gz``
``SM_OUTPUT_DIR``          ``/opt/ml/output`` (``failure`` file; ``tensorboard/`` is synced to S3
                           when the job has a TensorBoardOutputConfig)
``SM_HOSTS``               JSON list of the instances' host names, sorted (``["algo-1", "algo-2"]``)
``SM_CURRENT_HOST``        this instance's host name
``SM_NUM_GPUS``            GPUs on this instance; ``SM_NUM_CPUS`` likewise
``SM_HPS``                 JSON object of the hyperparameters (also passed as ``--key value``)
``SM_INPUT_DATA_CONFIG``   JSON object: each channel's entry of ``inputdataconfig.json``
                           (``TrainingInputMode`` File or Pipe, ``RecordWrapperType``, ``ContentType``)
``SM_TRAINING_ENV``        JSON object holding all of the above (``channel_input_dirs``, ``hosts``,
                           ``current_host``, ``hyperparameters``, ``model_dir``, ``output_data_dir``,
                           ``num_gpus``, ``num_cpus``, ``job_name``, ...)
=========================  ====================================================================

A variable that is missing falls back to ``SM_TRAINING_ENV``'s entry, then to SageMaker's own
files in ``/opt/ml/input/config/`` (``hyperparameters.json``, ``inputdataconfig.json``,
``resourceconfig.json``), then to the standard ``/opt/ml`` path: an image of one's own (BYO, e.g.
``docker/train.Dockerfile``) gets no ``SM_*`` variable at all, only those files and the ``train``
argument. ``SAGEMAKER_BASE_DIR`` (the toolkit's name for it) replaces ``/opt/ml`` in those
defaults, for running the contract outside a container. The checkpoint directory has no ``SM_*``
variable: it is ``LocalPath`` of ``input/config/checkpointconfig.json`` (written when the job has a
CheckpointConfig), else ``/opt/ml/checkpoints``; SageMaker syncs it with the job's checkpoint S3
URI both ways, so a restarted spot job finds its checkpoints there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_BASE_DIR = "/opt/ml"
# Either is set in every SageMaker training container that runs the toolkit or the SDK v3 driver.
MARKER_VARIABLES = ("SM_TRAINING_ENV", "SM_MODEL_DIR")
# SageMaker writes this into every training container, images without the toolkit included.
RESOURCE_CONFIG = "input/config/resourceconfig.json"


class SageMakerEnvironmentError(ValueError):
    """An ``SM_*`` variable or a config file of the training container is malformed."""


def running_under_sagemaker(env: Mapping[str, str] | None = None) -> bool:
    """True inside a SageMaker training container: ``SM_TRAINING_ENV`` or ``SM_MODEL_DIR`` is set,
    or ``<base>/input/config/resourceconfig.json`` exists (base: ``SAGEMAKER_BASE_DIR``, else
    ``/opt/ml``)."""
    env = os.environ if env is None else env
    return any(env.get(name) for name in MARKER_VARIABLES) or (_base_dir(env) / RESOURCE_CONFIG).is_file()


@dataclass(frozen=True)
class SageMakerEnvironment:
    """What a training job's container tells the script (see the module docstring for the
    variables). Paths are absolute as SageMaker gives them.

    Attributes:
        channels: channel name (as given to the job, e.g. ``train``) -> its directory.
        model_dir: where the model artifact goes (``SM_MODEL_DIR``).
        output_data_dir: other outputs kept after the job (``SM_OUTPUT_DATA_DIR``).
        output_dir: ``SM_OUTPUT_DIR`` (``/opt/ml/output``).
        checkpoint_dir: the directory synced with the checkpoint S3 URI.
        hosts: every instance's host name, sorted as SageMaker sorts them.
        current_host: this instance's host name.
        num_gpus, num_cpus: this instance's GPUs and CPUs (-1: not given; Lightning counts them).
        hyperparameters: the job's hyperparameters (``SM_HPS``, else ``hyperparameters.json``).
        job_name: the training job's name, when given.
        input_data_config: channel name -> its ``inputdataconfig.json`` entry
            (``SM_INPUT_DATA_CONFIG``, else that file; {} when neither is there). Its
            ``TrainingInputMode`` says how the channel arrives: File (and FastFile) as a folder at
            its directory, Pipe as a named pipe per pass, ``<input>/data/<channel>_<pass>``.
    """

    channels: dict[str, Path]
    model_dir: Path
    output_data_dir: Path
    output_dir: Path
    checkpoint_dir: Path
    hosts: tuple[str, ...]
    current_host: str
    num_gpus: int
    num_cpus: int
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    job_name: str | None = None
    input_data_config: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def host_rank(self) -> int:
        """This instance's index in ``hosts`` (0 on the first instance)."""
        return self.hosts.index(self.current_host)

    @property
    def tensorboard_dir(self) -> Path:
        """``<output_dir>/tensorboard``: the default ``LocalPath`` of a job's TensorBoardOutputConfig,
        which SageMaker uploads to S3 while the job runs."""
        return self.output_dir / "tensorboard"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SageMakerEnvironment:
        """Read the contract from ``env`` (default ``os.environ``) and the container's config
        files. Raises :class:`SageMakerEnvironmentError` naming the variable or file that is
        malformed."""
        env = os.environ if env is None else env
        training_env = _json(env, "SM_TRAINING_ENV", dict, default={})
        base = _base_dir(env)

        def path(name: str, key: str, default: Path) -> Path:
            value = env.get(name) or training_env.get(key)
            return Path(value) if value else default

        input_dir = path("SM_INPUT_DIR", "input_dir", base / "input")
        config_dir = path("SM_INPUT_CONFIG_DIR", "input_config_dir", input_dir / "config")
        output_dir = path("SM_OUTPUT_DIR", "output_dir", base / "output")
        resources = _json_file(config_dir / "resourceconfig.json")
        hosts = tuple(_json(env, "SM_HOSTS", list, default=training_env.get("hosts") or resources.get("hosts") or []))
        current_host = (env.get("SM_CURRENT_HOST") or training_env.get("current_host") or resources.get("current_host")
                        or (hosts[0] if hosts else "algo-1"))
        hosts = hosts or (current_host,)
        if current_host not in hosts:
            raise SageMakerEnvironmentError(f"SM_CURRENT_HOST={current_host!r} is not one of SM_HOSTS {list(hosts)}")
        if env.get("SM_HPS") or "hyperparameters" in training_env:
            hyperparameters = _json(env, "SM_HPS", dict, default=training_env.get("hyperparameters") or {})
        else:
            hyperparameters = _json_file(config_dir / "hyperparameters.json")
        return cls(
            channels=_channels(env, training_env, input_dir / "data", config_dir / "inputdataconfig.json"),
            model_dir=path("SM_MODEL_DIR", "model_dir", base / "model"),
            output_data_dir=path("SM_OUTPUT_DATA_DIR", "output_data_dir", output_dir / "data"),
            output_dir=output_dir,
            checkpoint_dir=_checkpoint_dir(config_dir / "checkpointconfig.json", base / "checkpoints"),
            hosts=tuple(str(h) for h in hosts),
            current_host=str(current_host),
            num_gpus=_int(env, "SM_NUM_GPUS", training_env.get("num_gpus", -1)),
            num_cpus=_int(env, "SM_NUM_CPUS", training_env.get("num_cpus", -1)),
            hyperparameters=dict(hyperparameters),
            job_name=env.get("TRAINING_JOB_NAME") or training_env.get("job_name"),
            input_data_config=_input_data_config(env, training_env, config_dir / "inputdataconfig.json"),
        )


def _base_dir(env: Mapping[str, str]) -> Path:
    return Path(env.get("SAGEMAKER_BASE_DIR") or DEFAULT_BASE_DIR)


def _json(env: Mapping[str, str], name: str, kind: type, *, default: Any) -> Any:
    text = env.get(name)
    if not text:
        return default
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SageMakerEnvironmentError(f"{name} is not JSON ({exc}): {text[:200]!r}") from None
    if not isinstance(value, kind):
        raise SageMakerEnvironmentError(f"{name} must be a JSON {kind.__name__}, got {type(value).__name__}: {text[:200]!r}")
    return value


def _json_file(path: Path) -> dict[str, Any]:
    """A JSON object file of the container's config; {} when it does not exist."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SageMakerEnvironmentError(f"{path}: cannot read it as JSON ({exc})") from None
    if not isinstance(value, dict):
        raise SageMakerEnvironmentError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _int(env: Mapping[str, str], name: str, default: Any) -> int:
    text = env.get(name)
    try:
        return int(text) if text else int(default)
    except (TypeError, ValueError):
        raise SageMakerEnvironmentError(f"{name} must be an integer, got {text!r}") from None


def _channels(env: Mapping[str, str], training_env: Mapping[str, Any], data_dir: Path,
              input_data_config: Path) -> dict[str, Path]:
    """name -> directory, for the names in SM_CHANNELS (else those with an SM_CHANNEL_<NAME>
    variable, else SM_TRAINING_ENV's channel_input_dirs, else inputdataconfig.json's). A
    channel's directory is its SM_CHANNEL_<NAME> (NAME upper-cased, as both SageMaker drivers
    write it), else <input>/data/<name>."""
    dirs = {str(k): str(v) for k, v in (training_env.get("channel_input_dirs") or {}).items()}
    names = _json(env, "SM_CHANNELS", list, default=None)
    if names is None:
        prefix = "SM_CHANNEL_"
        named = [k[len(prefix):].lower() for k in env if k.startswith(prefix) and k != "SM_CHANNELS"]
        names = named or list(dirs) or list(_json_file(input_data_config))
    channels = {}
    for name in names:
        value = env.get(f"SM_CHANNEL_{str(name).upper()}") or dirs.get(str(name))
        channels[str(name)] = Path(value) if value else data_dir / str(name)
    return channels


def _input_data_config(env: Mapping[str, str], training_env: Mapping[str, Any], config_file: Path) -> dict[str, dict]:
    config = _json(env, "SM_INPUT_DATA_CONFIG", dict, default=None)
    if config is None:
        config = training_env.get("input_data_config")
    if not isinstance(config, dict):
        config = _json_file(config_file)
    return {str(name): dict(entry) for name, entry in config.items() if isinstance(entry, dict)}


def _checkpoint_dir(config_file: Path, default: Path) -> Path:
    local_path = _json_file(config_file).get("LocalPath")
    return Path(local_path) if local_path else default
