"""Run ``train.py`` as a SageMaker training job, built with the SageMaker Python SDK v3
(``sagemaker.train.ModelTrainer``) on the pinned PyTorch training container.

    python -m beedet.sagemaker.launch +experiment=honeybee_tiled instance_type=ml.g5.xlarge \\
        instance_count=2 spot=true channels.train=s3://BUCKET/honeybee/train/ \\
        channels.validation=s3://BUCKET/honeybee/valid/ sagemaker.role=arn:aws:iam::ACCOUNT:role/NAME \\
        sagemaker.bucket=BUCKET [trainer.max_epochs=50 ...] [--dry-run]

``conf/launch.yaml`` composes ``conf/train.yaml``, so ``+experiment=...`` and every train override
are checked here, before an instance is paid for; they reach the job as ``--key value``
hyperparameters, encoded so that the SDK's container driver passes them on unchanged
(``--experiment honeybee_tiled --trainer__max_epochs 50``; ``beedet.sagemaker.hyperparameters``),
which ``train.py`` decodes and maps back onto the same overrides. The job's code is one archive
of this checkout's ``train.py``, ``beedet/`` and ``conf/`` plus a ``requirements.txt`` of beedet's
dependencies (the container brings torch and torchvision). Channels become ``SM_CHANNEL_<NAME>``
(an S3 prefix copied into the channel directory; or a Ground Truth augmented manifest streamed in
Pipe mode as the built-in detector takes it, ``channels.train={s3_uri: s3://BUCKET/train.manifest,
attribute_names: [source-ref, LABEL]}``: :func:`augmented_manifest_channel`); checkpoints are synced between
``/opt/ml/checkpoints`` and S3, so a job restarted after a spot interruption resumes; the log
regexes of ``beedet.sagemaker.metrics`` become the job's metric definitions; with more than one
instance the SDK's torchrun driver starts ``train.py`` on every node.

``--dry-run`` runs the same SDK code against an offline AWS (``beedet.sagemaker.offline``) and
prints the CreateTrainingJob request as JSON (valid ``--cli-input-json`` for ``aws sagemaker
create-training-job``); the code uploads it would make are listed on stderr. No AWS access needed.
"""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from beedet.compose import CONF_DIR
from beedet.sagemaker.aws import (
    AWSSettings,
    open_session,
    quiet_offline_sdk,
    require_sagemaker_sdk,
)
from beedet.sagemaker.deploy import check_endpoint_image
from beedet.sagemaker.hyperparameters import HyperparameterError, encode_hyperparameters
from beedet.sagemaker.offline import OfflineAWS

log = logging.getLogger("beedet.sagemaker.launch")

REPO = CONF_DIR.parent
# The keys conf/launch.yaml adds beside the train config: the launcher's own settings, never
# passed to the job as hyperparameters (tests/test_sagemaker_launch.py keeps this list in step).
LAUNCH_KEYS = frozenset({
    "sagemaker", "instance_type", "instance_count", "spot", "max_run", "max_wait", "volume_size",
    "channels", "checkpoint_s3_uri", "base_job_name", "image_uri", "torchrun", "process_count_per_node",
    "environment", "wait", "tensorboard",
})
# Where the job's checkpoints live inside the container; SageMaker syncs it with the checkpoint
# S3 URI (both ways: down when a spot job restarts). train.py resumes from here (ckpt_path=last).
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
# Where train.py writes TensorBoard logs on SageMaker (beedet.sagemaker.environment), synced to S3.
TENSORBOARD_LOCAL_PATH = "/opt/ml/output/tensorboard"
# What the job needs from the checkout. The conf/ tree is train.py's Hydra config_path.
JOB_FILES = ("train.py", "beedet", "conf")
CODE_ARCHIVE = "beedet-job-code.tar.gz"
# The container provides these (a CUDA build matched to the image); pip must not replace them.
CONTAINER_PACKAGES = ("torch", "torchvision")
# CreateTrainingJob's limits on HyperParameters: entries, name length, value length.
MAX_HYPERPARAMETERS, MAX_NAME_CHARS, MAX_VALUE_CHARS = 100, 256, 2500


def training_hyperparameters(overrides: Sequence[str]) -> dict[str, str]:
    """The job's HyperParameters for the launcher's command-line ``overrides``: every train override
    as ``{key: value text}``, ``+experiment=X`` as ``{"experiment": "X"}``, encoded for the SDK's
    container driver (``beedet.sagemaker.hyperparameters.encode_hyperparameters``:
    ``trainer.max_epochs=50`` -> ``{"trainer__max_epochs": "50"}``, ``model=ssd300_resnet50`` ->
    ``{"model": "ssd300_resnet50"}``, ``name='bees at dawn'`` -> ``{"name": "%27bees at dawn%27"}``);
    ``train.py`` decodes them back to the text typed here. Overrides of the launcher's own keys
    (``LAUNCH_KEYS``) are left out. Overrides that ``--key value`` cannot carry (sweeps, ``~key``,
    ``+key`` / ``++key`` other than the experiment, ``group@package``), and more or longer
    hyperparameters than CreateTrainingJob takes, raise ``SystemExit`` saying why."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hyperparameters: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key, line = override.key_or_group, override.input_line
        if key.split(".")[0] in LAUNCH_KEYS:
            continue
        if override.is_sweep_override():
            raise SystemExit(f"{line}: a sweep cannot be one training job; launch one job per value")
        if override.is_delete() or override.package or override.is_force_add() or (override.is_add() and key != "experiment"):
            raise SystemExit(f"{line}: the job receives --key value hyperparameters, which can only set an existing "
                             "key (key=value) or pick the experiment (+experiment=NAME); put this change in an experiment file")
        # The text as typed, so the job's Hydra parses exactly what this one parsed.
        hyperparameters[key] = line.split("=", 1)[1]
    try:
        encoded = encode_hyperparameters(hyperparameters)
    except HyperparameterError as exc:
        raise SystemExit(str(exc)) from None
    if len(encoded) > MAX_HYPERPARAMETERS:
        raise SystemExit(f"{len(encoded)} hyperparameters: a training job takes at most {MAX_HYPERPARAMETERS}; "
                         "put the settings in an experiment file")
    for key, (name, text) in zip(hyperparameters, encoded.items()):
        if len(name) > MAX_NAME_CHARS or len(text) > MAX_VALUE_CHARS:
            raise SystemExit(f"{key}: a training job takes hyperparameter names of at most {MAX_NAME_CHARS} characters "
                             f"and values of at most {MAX_VALUE_CHARS} ({len(name)} and {len(text)} here, encoded); "
                             "put the setting in an experiment file")
    return encoded


def job_requirements(framework_version: str) -> list[str]:
    """beedet's runtime dependencies as pip requirement lines, less the packages the PyTorch
    container provides. Raises ``SystemExit`` when the container's torch (``framework_version``)
    does not satisfy beedet's own torch requirement."""
    from packaging.requirements import Requirement

    try:
        declared = metadata.requires("beedet") or []
    except metadata.PackageNotFoundError:
        raise SystemExit("beedet is not installed, so its dependencies are unknown: run `make install` "
                         "(or pip install -e '.[sagemaker]') in the checkout") from None
    lines = []
    for text in declared:
        requirement = Requirement(text)
        if requirement.marker is not None and "extra" in str(requirement.marker):
            continue
        if requirement.name == "torch" and framework_version not in requirement.specifier:
            raise SystemExit(f"sagemaker.framework_version={framework_version} does not satisfy beedet's {text}")
        if requirement.name not in CONTAINER_PACKAGES:
            lines.append(text)
    return lines


def pack_job_code(dest: Path, requirements: Sequence[str]) -> Path:
    """Pack the job's code (``JOB_FILES`` of this checkout, without ``__pycache__``) and a
    ``requirements.txt`` into ``dest/CODE_ARCHIVE``; returns its path. Nothing else beside them
    (outputs/, data/, .venv/) goes, and one archive is one upload (the container unpacks it)."""
    archive = dest / CODE_ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        for name in JOB_FILES:
            src = REPO / name
            if not src.exists():
                raise SystemExit(f"{src} is missing: run the launcher from a beedet checkout")
            files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
            for path in files:
                if "__pycache__" not in path.parts and path.suffix != ".pyc":
                    tar.add(path, arcname=str(path.relative_to(REPO)))
        text = ("\n".join(requirements) + "\n").encode()
        info = tarfile.TarInfo("requirements.txt")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
    return archive


def metric_definitions() -> list:
    """The job's metric definitions: ``beedet.sagemaker.metrics.METRIC_DEFINITIONS`` (regexes for
    the log lines train.py prints) as SDK ``MetricDefinition`` shapes."""
    from sagemaker.core.shapes import MetricDefinition

    from beedet.sagemaker.metrics import METRIC_DEFINITIONS

    return [MetricDefinition(name=d["Name"], regex=d["Regex"]) for d in METRIC_DEFINITIONS]


def input_channels(channels: Mapping[str, str | Mapping | None]) -> list:
    """The job's data channels from ``conf/launch.yaml``'s ``channels`` (entries set to null
    skipped): an S3 prefix (``s3://bucket/prefix/``) becomes SDK ``InputData``, copied into the
    channel directory (File mode); ``{s3_uri: s3://.../x.manifest, attribute_names: [source-ref,
    LABEL]}`` becomes the augmented-manifest ``Channel`` of :func:`augmented_manifest_channel`.
    Raises ``SystemExit`` for anything else, saying what a channel may be."""
    from sagemaker.core.training.configs import InputData

    inputs = []
    for name, value in channels.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            inputs.append(augmented_manifest_channel(name, value))
            continue
        if not str(value).startswith("s3://"):
            raise SystemExit(f"channels.{name}={value!r}: a channel is an S3 URI (s3://bucket/prefix/), or an augmented "
                             "manifest as {s3_uri: s3://bucket/x.manifest, attribute_names: [source-ref, LABEL]}; "
                             "upload local data first")
        inputs.append(InputData(channel_name=name, data_source=str(value)))
    return inputs


# What a channel given as a mapping may hold (an augmented manifest), and SageMaker's limit on AttributeNames.
AUGMENTED_MANIFEST_KEYS = ("s3_uri", "attribute_names")
MAX_ATTRIBUTE_NAMES = 16


def augmented_manifest_channel(name: str, spec: Mapping):
    """The SDK ``Channel`` for a Ground Truth augmented manifest, as SageMaker's built-in Object
    Detection algorithm takes one: ``S3DataType=AugmentedManifestFile`` with ``spec``'s ``s3_uri``
    (the manifest object) and ``attribute_names`` (the line keys to send, in order), in Pipe mode
    (the only input mode SageMaker allows for that data type; this channel's own, the job's code
    channels stay in File mode), ``RecordWrapperType=RecordIO`` and
    ``ContentType=application/x-recordio``. For each manifest line SageMaker then streams one
    RecordIO record per attribute: the S3 object a ``-ref`` attribute names (the image), the JSON
    value of any other; train.py reads that stream (``beedet.data.manifest_stream``), which needs
    exactly one ``-ref`` attribute (the image) and at least one other (the boxes; add
    ``LABEL-metadata`` for the class names). Raises ``SystemExit`` naming what is wrong."""
    from sagemaker.core.training.configs import Channel, DataSource, S3DataSource

    where = f"channels.{name}"
    unknown = sorted(set(spec) - set(AUGMENTED_MANIFEST_KEYS))
    if unknown:
        raise SystemExit(f"{where}: unknown key(s) {', '.join(unknown)}; an augmented-manifest channel takes "
                         f"{{s3_uri: s3://bucket/x.manifest, attribute_names: [source-ref, LABEL]}}")
    uri, names = spec.get("s3_uri"), spec.get("attribute_names")
    if not isinstance(uri, str) or not uri.startswith("s3://") or uri.endswith("/"):
        raise SystemExit(f"{where}.s3_uri={uri!r}: the S3 URI of the augmented manifest file itself "
                         "(s3://bucket/prefix/output.manifest, a Ground Truth job's output manifest)")
    if isinstance(names, str) or not isinstance(names, Sequence) or not all(isinstance(n, str) and n for n in names):
        raise SystemExit(f"{where}.attribute_names={names!r}: a list of the manifest keys to send, e.g. [source-ref, LABEL]")
    refs = [n for n in names if n.endswith("-ref")]
    if len(refs) != 1 or len(names) < 2 or len(names) > MAX_ATTRIBUTE_NAMES or len(set(names)) != len(names):
        raise SystemExit(f"{where}.attribute_names={list(names)}: beedet takes one image per line, so exactly one "
                         "'-ref' attribute (source-ref, whose S3 object SageMaker sends), plus the label attribute "
                         f"holding the boxes (and its '-metadata' for class names); at most {MAX_ATTRIBUTE_NAMES}, "
                         "each once. The built-in algorithm takes [source-ref, LABEL]")
    return Channel(
        channel_name=name,
        data_source=DataSource(s3_data_source=S3DataSource(
            s3_data_type="AugmentedManifestFile", s3_uri=uri, s3_data_distribution_type="FullyReplicated",
            attribute_names=list(names))),
        content_type="application/x-recordio",
        record_wrapper_type="RecordIO",
        input_mode="Pipe",
    )


def job_name_base(name: str) -> str:
    """``name`` as SageMaker job names allow (letters, digits, hyphens), so the S3 paths the SDK
    derives from it match the job names (``beedet-honeybee_tiled`` -> ``beedet-honeybee-tiled``)."""
    return re.sub(r"[^a-zA-Z0-9-]+", "-", name).strip("-")


def spot_max_wait(spot: bool, max_run: int, max_wait: int | None) -> int | None:
    """The job's MaxWaitTimeInSeconds: None for an on-demand job; for a spot job ``max_wait``, or
    twice ``max_run`` when None. Raises ``SystemExit`` where SageMaker would reject the pair."""
    if not spot:
        if max_wait is not None:
            raise SystemExit(f"max_wait={max_wait} is only for spot jobs (spot=true)")
        return None
    max_wait = max_wait if max_wait is not None else 2 * max_run
    if max_wait < max_run:
        raise SystemExit(f"max_wait={max_wait} must be at least max_run={max_run} (SageMaker's rule for spot jobs)")
    return max_wait


def build_model_trainer(session, *, role: str, image_uri: str, source_dir: Path, base_job_name: str,
                        instance_type: str, instance_count: int, spot: bool, max_run: int, max_wait: int | None,
                        volume_size: int, checkpoint_s3_uri: str | None, tensorboard_s3_uri: str | None,
                        hyperparameters: Mapping[str, str],
                        environment: Mapping[str, str], torchrun: bool, process_count_per_node: int | None):
    """A ``ModelTrainer`` for one beedet training job. ``max_run`` / ``max_wait`` are seconds
    (``max_wait``: waiting for spot capacity plus running, from :func:`spot_max_wait`). ``checkpoint_s3_uri=None``: the SDK's per-job ``s3://bucket/prefix/<base>/<job>/checkpoints``.
    ``tensorboard_s3_uri``: where SageMaker syncs ``TENSORBOARD_LOCAL_PATH`` to while the job runs
    (None: no sync). ``source_dir``: the code archive of :func:`pack_job_code`. ``torchrun``: start train.py with
    torchrun on every instance (``process_count_per_node`` processes each; None = one per GPU)."""
    from sagemaker.core.training.configs import (
        CheckpointConfig,
        Compute,
        SourceCode,
        StoppingCondition,
        TensorBoardOutputConfig,
    )
    from sagemaker.train import ModelTrainer
    from sagemaker.train.distributed import Torchrun

    trainer = ModelTrainer(
        sagemaker_session=session,
        role=role,
        base_job_name=base_job_name,
        training_image=image_uri,
        source_code=SourceCode(source_dir=str(source_dir), entry_script="train.py", requirements="requirements.txt"),
        distributed=Torchrun(process_count_per_node=process_count_per_node) if torchrun else None,
        compute=Compute(instance_type=instance_type, instance_count=instance_count,
                        volume_size_in_gb=volume_size, enable_managed_spot_training=spot or None),
        stopping_condition=StoppingCondition(max_runtime_in_seconds=max_run, max_wait_time_in_seconds=max_wait),
        checkpoint_config=CheckpointConfig(s3_uri=checkpoint_s3_uri, local_path=CHECKPOINT_LOCAL_PATH),
        hyperparameters=dict(hyperparameters),
        environment=dict(environment),
    )
    if tensorboard_s3_uri:
        trainer.with_tensorboard_output_config(TensorBoardOutputConfig(s3_output_path=tensorboard_s3_uri,
                                                                       local_path=TENSORBOARD_LOCAL_PATH))
    return trainer.with_metric_definitions(metric_definitions())


@dataclass
class LaunchedJob:
    """A created training job: its name, where its artifacts go (S3 URIs), and, for a dry run,
    the CreateTrainingJob request as recorded (``request``) and the offline AWS (uploads)."""

    name: str
    model_artifact: str
    checkpoints: str
    tensorboard: str | None
    request: dict | None = None
    offline: OfflineAWS | None = None


def launch(cfg: DictConfig, overrides: Sequence[str], dry_run: bool) -> LaunchedJob:
    """Create the training job that ``cfg`` (conf/launch.yaml composed with ``overrides``)
    describes; with ``dry_run`` against the offline AWS."""
    sm = cfg.sagemaker
    settings = AWSSettings.from_config(sm.region, sm.role, sm.bucket, sm.prefix, sm.framework_version, sm.py_version,
                                       config_name="launch")
    hyperparameters = training_hyperparameters(overrides)
    try:
        # What will serve the job's model artifact decides what the artifact carries: check it here,
        # not in the job after an instance has started.
        check_endpoint_image(cfg.endpoint_image)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    inputs = input_channels(OmegaConf.to_container(cfg.channels, resolve=True))
    max_wait = spot_max_wait(cfg.spot, cfg.max_run, cfg.max_wait)
    torchrun = cfg.torchrun if cfg.torchrun is not None else cfg.instance_count > 1
    base_job_name = job_name_base(cfg.base_job_name)
    session, offline = open_session(settings, dry_run)
    with tempfile.TemporaryDirectory(prefix="beedet-job-code-") as tmp:
        trainer = build_model_trainer(
            session, role=settings.role,
            image_uri=cfg.image_uri or settings.image_uri("training", cfg.instance_type),
            source_dir=pack_job_code(Path(tmp), job_requirements(settings.framework_version)),
            base_job_name=base_job_name, instance_type=cfg.instance_type, instance_count=cfg.instance_count,
            spot=cfg.spot, max_run=cfg.max_run, max_wait=max_wait, volume_size=cfg.volume_size,
            checkpoint_s3_uri=cfg.checkpoint_s3_uri,
            tensorboard_s3_uri=settings.s3_uri(base_job_name, "tensorboard") if cfg.tensorboard else None,
            hyperparameters=hyperparameters, environment=OmegaConf.to_container(cfg.environment, resolve=True),
            torchrun=torchrun, process_count_per_node=cfg.process_count_per_node,
        )
        # wait=False in a dry run: there is no job to watch, only the request.
        trainer.train(input_data_config=inputs or None, wait=cfg.wait and not dry_run, logs=cfg.wait and not dry_run)
    job = trainer._latest_training_job  # the SDK's handle on the job it created (see ModelTrainer's docs)
    output = job.output_data_config.s3_output_path.rstrip("/")
    return LaunchedJob(
        name=job.training_job_name,
        # SageMaker's layout: <S3OutputPath>/<job name>/output/model.tar.gz once the job ends.
        model_artifact=f"{output}/{job.training_job_name}/output/model.tar.gz",
        checkpoints=job.checkpoint_config.s3_uri,
        tensorboard=job.tensor_board_output_config.s3_output_path if cfg.tensorboard else None,
        request=offline.requests("CreateTrainingJob")[-1] if offline else None,
        offline=offline,
    )


def main(argv: Sequence[str] | None = None) -> LaunchedJob:
    """The command line (``argv``: overrides and ``--dry-run``); returns the job for scripts and tests."""
    from hydra import compose, initialize_config_dir

    args = list(sys.argv[1:] if argv is None else argv)
    dry_run = "--dry-run" in args
    require_sagemaker_sdk()
    overrides = [a for a in args if a != "--dry-run"]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if dry_run:
        quiet_offline_sdk()
        log.info("dry run: nothing is sent to AWS, and the role's permissions are not checked")
    # The compose API: checks every override against conf/ like train.py would, without making
    # a run directory (nothing runs here).
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="launch", overrides=overrides)
    job = launch(cfg, overrides, dry_run)
    verb = "would create" if dry_run else "created"
    log.info("%s training job %s", verb, job.name)
    log.info("model artifact, when it ends: %s (deploy: python -m beedet.sagemaker.deploy model_data=...)", job.model_artifact)
    log.info("checkpoints: %s", job.checkpoints)
    if job.tensorboard:
        log.info("TensorBoard logs: tensorboard --logdir %s", job.tensorboard)
    if job.offline is not None:
        by_channel: dict[str, list[int]] = {}
        for uri, data in job.offline.uploads().items():
            # .../<job>/input/<channel>/<file>: one line per channel, not one per file.
            head, _, rest = uri.rpartition("/input/")
            by_channel.setdefault(f"{head}/input/{rest.split('/')[0]}/", []).append(len(data))
        for prefix, sizes in by_channel.items():
            log.info("would upload %d file(s), %d bytes, to %s", len(sizes), sum(sizes), prefix)
        print(json.dumps(job.request, indent=2))
    return job


if __name__ == "__main__":
    main()
