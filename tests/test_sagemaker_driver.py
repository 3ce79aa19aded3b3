"""The SageMaker SDK v3 container driver, run as it is, on the launcher's real request.

A ``ModelTrainer`` job starts as ``/bin/bash -c "... sm_drivers/sm_train.sh"``: the SDK's
``scripts/environment.py`` writes ``/opt/ml/input/sm_training.env`` (``export SM_HP_<NAME>='<value>'``,
``SM_HPS='<JSON>'``, ...), ``sm_train.sh`` sources it under ``set -e``, and the basic script (or
torchrun) driver rebuilds train.py's command line from ``SM_HPS``. These tests take the driver files
the launcher's dry run would upload as the ``sm_drivers`` channel (the installed SDK's own files,
checked byte for byte) and run them:

* the README's launch command with ``trainer.max_epochs=50`` and quoted string overrides: the
  driver's ``set_env`` writes the env file, ``bash -e`` sources it, the driver's own
  ``create_commands`` builds train.py's argv, and train.py's prologue turns that back into the
  overrides typed at the launcher; a tuning job's extra names pass train.py's check the same way.
* (slow) the whole container: ``sm_train.sh``, unmodified, run with the request's
  ContainerEntrypoint and ContainerArguments over a temporary ``/opt/ml``, through a tiny synthetic
  training to the model artifact.

Where /opt/ml comes from: the SDK hard-codes ``/opt/ml`` in ``environment.py`` (module constants
that are written into the env file, and the paths of ``sourcecode.json`` / ``distributed.json``
bound as its readers' default arguments) and in ``sm_train.sh``, and reads no variable to move it.
So ``set_env`` is called with its own ``output_file`` parameter, its two JSON readers are called
with the channel's copies as their path argument, and the ``/opt/ml/...`` paths it writes are
mapped onto the temporary tree when train.py's environment is built. The slow test instead runs
everything unmodified in a private mount namespace (``unshare``) where a temporary tree is mounted
on ``/opt/ml``; the host's ``/opt`` is left alone, and the test is skipped where namespaces are not
allowed.
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from helpers import compose_config

from beedet.data.synthetic import generate_split
from beedet.sagemaker.training_job import job_arguments, sagemaker_argv

CONTAINER_ML = "/opt/ml"
ACCOUNT_SETTINGS = [
    "sagemaker.region=eu-west-1",
    "sagemaker.role=arn:aws:iam::111122223333:role/beedet-sagemaker",
    "sagemaker.bucket=bee-bucket",
]
CHANNELS = ["channels.train=s3://bee-bucket/honeybee/train/", "channels.validation=s3://bee-bucket/honeybee/valid/"]
# README.md, "Launch training", with [trainer.max_epochs=50].
README_COMMAND = ["+experiment=honeybee_tiled", "instance_type=ml.g5.xlarge", "instance_count=2", "spot=true",
                  *CHANNELS, *ACCOUNT_SETTINGS, "trainer.max_epochs=50"]
# Quoted strings with spaces, both quote characters, Hydra's escapes and a '%'; a number the
# drivers' JSON round trip would re-spell (1e-3 -> 0.001).
# What torchrun sets for each process it starts (the README's job has two instances).
TORCHRUN_VARIABLES = {"TORCHELASTIC_RUN_ID": "beedet", "LOCAL_WORLD_SIZE": "1", "RANK": "0"}
QUOTED = ["""name="it's a \\"bee\\" at 50% dawn" """.strip(), "logger.version='run 1: bees'", "optimizer.lr=1e-3"]


@pytest.fixture
def no_account_env(monkeypatch):
    """The user's own BEEDET_SAGEMAKER_* / SM_* variables must not leak into the tests."""
    for name in [n for n in os.environ if n.startswith(("BEEDET_SAGEMAKER_", "SM_", "SAGEMAKER_"))]:
        monkeypatch.delenv(name)


def _dry_run(overrides: list[str], capsys) -> tuple[dict, dict[str, bytes]]:
    """The CreateTrainingJob request and the uploads of ``python -m beedet.sagemaker.launch
    <overrides> --dry-run``."""
    from beedet.sagemaker.launch import main

    job = main([*overrides, "--dry-run"])
    capsys.readouterr()
    return job.request, job.offline.uploads()


def _channel_files(request: dict, uploads: dict[str, bytes], channel: str) -> dict[str, bytes]:
    """The files SageMaker would copy into ``/opt/ml/input/data/<channel>``: relative path -> bytes."""
    [uri] = [c["DataSource"]["S3DataSource"]["S3Uri"] for c in request["InputDataConfig"] if c["ChannelName"] == channel]
    prefix = uri.rsplit("/", 1)[0] if uri.endswith(".tar.gz") else uri.rstrip("/")
    return {key[len(prefix) + 1:]: data for key, data in uploads.items() if key.startswith(prefix + "/")}


def _synthetic_channel(channel_dir: Path, split: str, images: int, seed: int) -> None:
    """A synthetic split as SageMaker copies an S3 prefix into a channel: the Ground Truth manifest
    (source-refs s3://beedet-synthetic/<split>/images/...) and the images under the prefix's layout."""
    data = channel_dir.parent / f".{channel_dir.name}-source"
    generate_split(data, split, images, 256, seed)
    channel_dir.mkdir(parents=True)
    shutil.copy(data / f"{split}.manifest", channel_dir / f"{split}.manifest")
    shutil.copytree(data / split / "images", channel_dir / split / "images")
    shutil.rmtree(data)


def _opt_ml(root: Path, request: dict, uploads: dict[str, bytes], hyperparameters: dict[str, str],
            images: tuple[int, int]) -> Path:
    """``root/ml`` laid out as SageMaker lays out ``/opt/ml`` for ``request`` (its HyperParameters
    replaced by ``hyperparameters``): config files, the SDK's code and driver channels as uploaded,
    and synthetic ``train`` / ``validation`` channels of ``images`` images."""
    ml = root / "ml"
    config = ml / "input" / "config"
    config.mkdir(parents=True)
    hosts = [f"algo-{i + 1}" for i in range(request["ResourceConfig"]["InstanceCount"])]
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (config / "resourceconfig.json").write_text(json.dumps({
        "current_host": hosts[0], "current_instance_type": request["ResourceConfig"]["InstanceType"],
        "current_group_name": "homogeneousCluster", "hosts": hosts, "network_interface_name": "eth0"}))
    (config / "inputdataconfig.json").write_text(json.dumps({
        c["ChannelName"]: {"TrainingInputMode": c.get("InputMode", "File"), "S3DistributionType": "FullyReplicated",
                           "RecordWrapperType": "None"} for c in request["InputDataConfig"]}))
    (config / "checkpointconfig.json").write_text(json.dumps(request["CheckpointConfig"]))
    for channel in ("code", "sm_drivers"):
        for relative, data in _channel_files(request, uploads, channel).items():
            path = ml / "input" / "data" / channel / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    _synthetic_channel(ml / "input/data/train", "train", images[0], 0)
    _synthetic_channel(ml / "input/data/validation", "val", images[1], 1)
    for name in ("model", "output/data", "checkpoints"):
        (ml / name).mkdir(parents=True)
    return ml


def _driver_run(ml: Path, job_name: str) -> tuple[subprocess.CompletedProcess, dict[str, str], list[str]]:
    """The SDK driver's start of a job over ``ml``: the uploaded ``environment.py``'s ``set_env`` on
    the config files, writing ``ml/input/sm_training.env``; that file sourced by ``bash -e`` as
    ``sm_train.sh`` sources it; then the driver ``sm_train.sh`` runs building train.py's command
    line with its own ``create_commands``. Returns (the bash process, the variables it ends with,
    train.py's arguments); the last two are empty when bash failed."""
    drivers = ml / "input/data/sm_drivers"
    env_file = ml / "input/sm_training.env"
    config = ml / "input/config"
    set_env = f"""
import functools, json, sys
sys.path.insert(0, {str(drivers / "scripts")!r})
import environment  # the channel's scripts/environment.py, as sm_train.sh runs it
# set_env reads these two from {CONTAINER_ML}/input/data/sm_drivers, the default path argument of
# its readers: give the readers the channel's copies instead.
environment.read_source_code_json = functools.partial(environment.read_source_code_json, {str(drivers / "sourcecode.json")!r})
environment.read_distributed_json = functools.partial(environment.read_distributed_json, {str(drivers / "distributed.json")!r})
load = lambda name: json.loads(open({str(config)!r} + "/" + name).read())
environment.set_env(load("resourceconfig.json"), load("inputdataconfig.json"), load("hyperparameters.json"),
                    output_file={str(env_file)!r})
"""
    base_env = {"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                "HOME": os.environ.get("HOME", "/tmp"), "TRAINING_JOB_NAME": job_name}
    subprocess.run([sys.executable, "-c", set_env], env=base_env, check=True, capture_output=True, text=True, timeout=120)

    driver = re.search(r"distributed_drivers/(\w+)\.py", (drivers / "sm_train.sh").read_text()).group(1)
    report = f"""
import json, os, sys
sys.path.insert(0, {str(drivers / "distributed_drivers")!r})
import {driver} as driver
print(json.dumps({{"env": {{k: v for k, v in os.environ.items() if k.startswith("SM_")}}, "command": driver.create_commands()}}))
"""
    # As sm_train.sh: `set -e`, then `source /opt/ml/input/sm_training.env`, then the driver.
    proc = subprocess.run(["bash", "-e", "-c", 'source "$0"\nexec "$@"', str(env_file), sys.executable, "-c", report],
                          env=base_env, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        return proc, {}, []
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    command = result["command"]
    entry_script = json.loads((drivers / "sourcecode.json").read_text())["entry_script"]
    # The container's /opt/ml is this tree: the paths set_env wrote, mapped onto it.
    env = {k: v.replace(CONTAINER_ML, str(ml)) for k, v in result["env"].items()}
    return proc, {**env, "TRAINING_JOB_NAME": job_name}, command[command.index(entry_script) + 1:]


def test_every_key_and_value_round_trips_through_the_drivers_functions():
    """Every key of the composed config (``_target_`` included), the groups and awkward spellings
    become names the driver exports as shell identifiers, and values with quotes, spaces, '%' and
    JSON-looking text cross the drivers' own (de)serialisation unchanged, with no "'" to end the
    env file's quoting. Plain (tuner or toolkit) names and values decode to themselves."""
    from sagemaker.train.container_drivers.common.utils import (
        hyperparameters_to_cli_args,
        safe_deserialize,
        safe_serialize,
    )

    from beedet.sagemaker.hyperparameters import (
        config_keys,
        decode_hyperparameters,
        decode_key,
        encode_hyperparameters,
        parse_hyperparameter_argv,
    )
    from beedet.sagemaker.training_job import config_groups

    keys = sorted(config_keys(compose_config(["+experiment=honeybee_tiled"])) | config_groups()) + [
        "experiment", "_target_", "a__b", "a_.b", "a._b", "x-_y", "a-b", "a--b", "-a", "a.b-", "a_"]
    values = ["50", "'bees at dawn'", '"it\'s a \\"bee\\" at 50% dawn"', "1e-3", "1.50", "-0", " 5", "[1024,4096]",
              "[1, 2]", "[default,early_stopping]", "true", "null", "None", "", "s3://b/p/x y.manifest",
              "{a:1,b:'c'}", "%27", "ünïcode 'ok'", "line\nbreak", "${oc.env:HOME}", "$(rm -rf /)`x`\\"]
    typed = {key: values[i % len(values)] for i, key in enumerate(keys)}
    sent = encode_hyperparameters(typed)
    for name in sent:
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", "SM_HP_" + name.replace("-", "_").upper()), name
    # environment.py's set_env: each value deserialised, SM_HPS written inside '...'; the driver
    # reads SM_HPS back and builds --key value.
    hps = {name: safe_deserialize(value) for name, value in sent.items()}
    assert "'" not in safe_serialize(hps) and not any("'" in safe_serialize(v) for v in hps.values())
    argv = hyperparameters_to_cli_args(json.loads(safe_serialize(hps)))
    assert decode_hyperparameters(parse_hyperparameter_argv(argv)) == (typed, [])
    # What was not encoded comes back as it is: dotted names, a tuner's values.
    plain = {"trainer.max_epochs": "50", "optimizer__lr": "0.0031", "base_network": "resnet-50", "epochs": "2"}
    assert decode_hyperparameters(plain)[0] == {"trainer.max_epochs": "50", "optimizer.lr": "0.0031",
                                                "base_network": "resnet-50", "epochs": "2"}
    assert all(decode_key(key) == key for key in ("trainer.max_epochs", "use_pretrained_model", "s"))
    # Two names of one key, and SageMaker's own names.
    with pytest.raises(ValueError, match="trainer.max_epochs is given twice"):
        decode_hyperparameters({"trainer.max_epochs": "5", "trainer__max_epochs": "6"})
    assert decode_hyperparameters({"_tuning_objective_metric": "validation:mAP", "sagemaker_program": "train.py",
                                   "epochs": "3"}) == ({"epochs": "3"}, ["_tuning_objective_metric", "sagemaker_program"])


def test_uploaded_driver_files_are_the_installed_sdks(no_account_env, capsys, tmp_path):
    """What these tests run is what the SDK ships: the dry run's sm_drivers channel holds the
    installed container_drivers files unchanged, and sm_train.sh is the SDK's template."""
    from sagemaker.train.constants import SM_DRIVERS_LOCAL_PATH
    from sagemaker.train.templates import EXECUTE_BASE_COMMANDS, TRAIN_SCRIPT_TEMPLATE

    request, uploads = _dry_run(README_COMMAND, capsys)
    files = _channel_files(request, uploads, "sm_drivers")
    for relative in ("scripts/environment.py", "common/utils.py", "distributed_drivers/basic_script_driver.py",
                     "distributed_drivers/torchrun_driver.py"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(files[relative])
        assert filecmp.cmp(tmp_path / relative, Path(SM_DRIVERS_LOCAL_PATH) / relative, shallow=False), relative
    script = files["sm_train.sh"].decode()
    head = TRAIN_SCRIPT_TEMPLATE.split("{working_dir}")[0].replace("{{", "{").replace("}}", "}")
    assert script.startswith(head) and "source /opt/ml/input/sm_training.env" in head and "set -e" in head
    assert EXECUTE_BASE_COMMANDS.strip().splitlines()[0] not in script  # no `command`: the driver runs train.py


def test_readme_request_survives_the_sdk_driver(no_account_env, capsys, tmp_path):
    """The README's launch command with trainer.max_epochs=50 and quoted strings: the env file the
    SDK writes is sourced by `bash -e`, and train.py parses exactly the overrides typed."""
    request, uploads = _dry_run([*README_COMMAND, *QUOTED], capsys)
    hyperparameters = request["HyperParameters"]
    ml = _opt_ml(tmp_path, request, uploads, hyperparameters, images=(2, 2))
    proc, env, argv = _driver_run(ml, request["TrainingJobName"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "not a valid identifier" not in proc.stderr
    assert "SM_HP_TRAINER__MAX_EPOCHS" in env and json.loads(env["SM_HPS"])["trainer__max_epochs"] == 50
    # The command line the torchrun driver starts train.py with (torchrun sets these), read back
    # by train.py's prologue.
    overrides = job_arguments(argv, {**env, **TORCHRUN_VARIABLES})
    typed = ["+experiment=honeybee_tiled", "trainer.max_epochs=50", *QUOTED]
    assert sorted(overrides[-len(typed):]) == sorted(typed)
    cfg = compose_config(overrides)
    assert cfg.trainer.max_epochs == 50
    assert cfg.name == 'it\'s a "bee" at 50% dawn' and cfg.logger.version == "run 1: bees"
    assert cfg.optimizer.lr == 1e-3
    assert cfg.data.train.path == str(ml / "input/data/train/train.manifest")


@pytest.mark.parametrize("hyperparameters", [{"trainer.max_epochs": "50"}, {"name": "'bees at dawn'"}],
                         ids=["dotted-name", "quoted-value"])
def test_unencoded_hyperparameters_break_the_sdk_driver(no_account_env, capsys, tmp_path, hyperparameters):
    """Why the launcher encodes: sent as typed (as it did before), a dotted name or a value with a
    "'" stops the job where sm_train.sh sources the env file (SM_HP_TRAINER.MAX_EPOCHS; the quote
    ends SM_HPS's quoting)."""
    request, uploads = _dry_run(README_COMMAND, capsys)
    ml = _opt_ml(tmp_path, request, uploads, hyperparameters, images=(2, 2))
    proc, _, _ = _driver_run(ml, request["TrainingJobName"])
    assert proc.returncode != 0 and "not a valid identifier" in proc.stderr


def test_tuning_job_hyperparameters_pass_train_py(no_account_env, capsys, tmp_path):
    """A tuning job's training job: the tuned value under its wire name, plus the names SageMaker
    adds (the service's _tuning_objective_metric, the SDK tuner's sagemaker_*). train.py sets the
    latter aside with a log line and trains with the rest."""
    request, uploads = _dry_run(README_COMMAND, capsys)
    hyperparameters = {
        **request["HyperParameters"],
        "optimizer__lr": "0.0031",  # as the tuner writes a ContinuousParameterRange value
        "_tuning_objective_metric": "validation:mAP",
        "sagemaker_program": "train.py",
        "sagemaker_submit_directory": "s3://bee-bucket/beedet/tuning/sourcedir/sourcedir.tar.gz",
    }
    ml = _opt_ml(tmp_path, request, uploads, hyperparameters, images=(2, 2))
    proc, env, argv = _driver_run(ml, request["TrainingJobName"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = {**env, **TORCHRUN_VARIABLES}
    overrides = sagemaker_argv(argv, env)
    log = capsys.readouterr().err
    assert ("ignoring SageMaker's own hyperparameters _tuning_objective_metric, sagemaker_program, "
            "sagemaker_submit_directory") in log
    assert not (ml / "output" / "failure").exists()
    cfg = compose_config(overrides)
    assert cfg.optimizer.lr == 0.0031 and cfg.trainer.max_epochs == 50
    # The training toolkit's containers (the SDK tuner's framework-container path) pass the same
    # names as --key value, dotted keys included.
    toolkit_argv = ["--_tuning_objective_metric", "validation:mAP", "--experiment", "honeybee_tiled",
                    "--optimizer.lr", "0.0031", "--sagemaker_program", "train.py"]
    assert compose_config(sagemaker_argv(toolkit_argv, env)).optimizer.lr == 0.0031


# ---- the whole container: sm_train.sh, unmodified, over a temporary /opt/ml -------------------

# Runs "$@" with the tree "$1" mounted on /opt/ml, in this process's own mount namespace. Where
# /opt/ml does not exist (it never should outside a container), /opt becomes a tmpfs holding
# ml/ and the host's /opt entries mounted back.
_MOUNT_OPT_ML = r"""
set -e
ml="$1"; host_opt="$2"; shift 2
if [ ! -d /opt/ml ]; then
    mount --rbind /opt "$host_opt"
    mount -t tmpfs beedet-test-opt /opt
    for entry in "$host_opt"/*; do
        [ -e "$entry" ] || continue
        target="/opt/$(basename "$entry")"
        if [ -d "$entry" ]; then mkdir "$target"; else touch "$target"; fi
        mount --rbind "$entry" "$target"
    done
    mkdir /opt/ml
fi
mount --bind "$ml" /opt/ml
exec "$@"
"""


def _namespaces_allowed() -> bool:
    """True when this user may make a mount namespace (unshare) and mount in it."""
    if shutil.which("unshare") is None or not Path("/opt").is_dir():
        return False
    proc = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", "mount -t tmpfs t /mnt"],
                          capture_output=True, timeout=30, check=False)
    return proc.returncode == 0


@pytest.mark.slow
def test_sm_train_sh_trains_the_launchers_job_to_a_model_artifact(no_account_env, capsys, tmp_path):
    """One single-instance job of tiny synthetic data, run as SageMaker runs it: the request's
    ContainerEntrypoint and ContainerArguments (bash running the SDK's sm_train.sh), with the
    channels as the SDK uploaded them, to model.tar.gz's contents in /opt/ml/model."""
    if not _namespaces_allowed():
        pytest.skip("needs a private mount namespace (unshare --mount --map-root-user) to put a tree on /opt/ml")
    tiny = ["+experiment=synthetic", "data.batch_size=4", "data.num_workers=0", "trainer.max_epochs=1",
            "trainer.log_every_n_steps=1", "callbacks.prediction_overlays.every_n_epochs=1"]
    request, uploads = _dry_run(["instance_type=ml.m5.xlarge", *CHANNELS, *ACCOUNT_SETTINGS, *tiny, *QUOTED[:2]], capsys)
    ml = _opt_ml(tmp_path, request, uploads, request["HyperParameters"], images=(8, 4))
    spec = request["AlgorithmSpecification"]
    command = [*spec["ContainerEntrypoint"], *spec["ContainerArguments"]]
    assert "sm_train.sh" in command[-1]
    (tmp_path / "host-opt").mkdir()
    env = {
        # What the container brings: its python and pip first on PATH, beedet's dependencies
        # installed (so sm_train.sh's `pip install -r requirements.txt` needs no index).
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp_path), "TRAINING_JOB_NAME": request["TrainingJobName"], "PYTHONUNBUFFERED": "1",
        "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "OMP_NUM_THREADS": "2",
        "BEEDET_DATA_DIR": str(tmp_path / "data"), **request.get("Environment", {}),
    }
    proc = subprocess.run(["unshare", "--mount", "--map-root-user", "bash", "-c", _MOUNT_OPT_ML, "mount-opt-ml",
                           str(ml), str(tmp_path / "host-opt"), *command],
                          env=env, capture_output=True, text=True, timeout=1200, check=False)
    log = proc.stdout + proc.stderr
    failure = ml / "output" / "failure"
    assert proc.returncode == 0, (failure.read_text() if failure.exists() else "") + log[-6000:]
    assert "Training Container Execution Completed" in log and not failure.exists()
    assert "not a valid identifier" not in log

    model = ml / "model"
    assert (model / "model.ckpt").is_file() and (model / "code" / "inference.py").is_file()
    config = yaml.safe_load((model / "config.yaml").read_text())
    assert config["name"] == 'it\'s a "bee" at 50% dawn' and config["logger"]["version"] == "run 1: bees"
    assert config["trainer"]["max_epochs"] == 1 and config["data"]["batch_size"] == 4
    assert config["data"]["train"]["path"] == f"{CONTAINER_ML}/input/data/train/train.manifest"
    assert json.loads((ml / "output/data/metrics.json").read_text())["mAP"] >= 0.0
    assert (ml / "checkpoints" / "last.ckpt").is_file()
    # The job ran the code channel's copy of train.py (unpacked from the uploaded archive).
    [archive] = (ml / "input/data/code").glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        assert "train.py" in tar.getnames()
    assert (ml / "input/data/code/train.py").is_file()
