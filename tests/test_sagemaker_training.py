"""train.py as a SageMaker training job's entry point: the SM_* contract, hyperparameters as
overrides, channels, checkpoints, metric lines and the model artifact.

The contract test lays out a temporary /opt/ml tree with a tiny synthetic dataset as two channels
(Ground Truth manifests whose s3:// source-refs must resolve into the channel directories), sets
the SM_* variables the way the SageMaker training toolkit does, and runs train.py with the
hyperparameters as `--key value` pairs, sorted, as the toolkit passes them.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import REPO, compose_config, run_script

from beedet.data.synthetic import generate_split
from beedet.sagemaker.artifact import (
    CONTAINER_PACKAGES,
    HANDLER_NAMES,
    HANDLERS_MODULE,
    requirement_name,
    runtime_requirements,
)
from beedet.sagemaker.environment import SageMakerEnvironment, running_under_sagemaker
from beedet.sagemaker.hyperparameters import (
    HyperparameterError,
    hyperparameters_from_json,
    is_hyperparameter_argv,
    parse_hyperparameter_argv,
    to_overrides,
)
from beedet.sagemaker.metrics import METRIC_DEFINITIONS, METRICS, format_metric_line
from beedet.sagemaker.training_job import (
    SageMakerJobError,
    channel_source,
    job_arguments,
    sagemaker_argv,
)

TRAIN_IMAGES, VAL_IMAGES, BATCH = 16, 8, 8
# As the toolkit passes them: sorted by key, values as text.
HYPERPARAMETERS = {
    "callbacks.prediction_overlays.every_n_epochs": "1",
    "data.batch_size": str(BATCH),
    "data.num_workers": "0",
    "experiment": "synthetic",
    "trainer.log_every_n_steps": "1",
    "trainer.max_epochs": "1",
}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """Tiny synthetic train and val splits, drawn once for the module."""
    root = tmp_path_factory.mktemp("synthetic")
    generate_split(root, "train", TRAIN_IMAGES, 256, 0)
    generate_split(root, "val", VAL_IMAGES, 256, 0)
    return root


def _channel(synthetic: Path, split: str, channel_dir: Path) -> None:
    """A synthetic split as SageMaker copies an S3 prefix into a channel: the manifest (source-refs
    s3://beedet-synthetic/<split>/images/...) and the images under the prefix's key layout."""
    channel_dir.mkdir(parents=True)
    shutil.copy(synthetic / f"{split}.manifest", channel_dir / f"{split}.manifest")
    shutil.copytree(synthetic / split / "images", channel_dir / split / "images")


def _opt_ml(root: Path, synthetic: Path) -> tuple[Path, dict[str, str]]:
    """An /opt/ml tree under ``root`` and the SM_* variables the training toolkit would set for it."""
    ml = root / "opt" / "ml"
    _channel(synthetic, "train", ml / "input" / "data" / "train")
    _channel(synthetic, "val", ml / "input" / "data" / "validation")
    config = ml / "input" / "config"
    config.mkdir(parents=True)
    for name in ("model", "output/data", "checkpoints"):
        (ml / name).mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(HYPERPARAMETERS))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
    (config / "inputdataconfig.json").write_text(json.dumps({c: {"TrainingInputMode": "File"} for c in ("train", "validation")}))
    # SageMaker writes this when the job has a CheckpointConfig; LocalPath is the synced folder.
    (config / "checkpointconfig.json").write_text(json.dumps({"LocalPath": str(ml / "checkpoints")}))
    channels = {"train": str(ml / "input/data/train"), "validation": str(ml / "input/data/validation")}
    env = {
        "SM_MODEL_DIR": str(ml / "model"),
        "SM_OUTPUT_DATA_DIR": str(ml / "output/data"),
        "SM_OUTPUT_DIR": str(ml / "output"),
        "SM_INPUT_DIR": str(ml / "input"),
        "SM_INPUT_CONFIG_DIR": str(config),
        "SM_CHANNELS": json.dumps(sorted(channels)),
        "SM_CHANNEL_TRAIN": channels["train"],
        "SM_CHANNEL_VALIDATION": channels["validation"],
        "SM_HOSTS": json.dumps(["algo-1"]),
        "SM_CURRENT_HOST": "algo-1",
        "SM_NUM_GPUS": "0",
        "SM_NUM_CPUS": "2",
        "SM_HPS": json.dumps(HYPERPARAMETERS),
        "SM_TRAINING_ENV": json.dumps({"channel_input_dirs": channels, "hosts": ["algo-1"], "current_host": "algo-1",
                                       "hyperparameters": HYPERPARAMETERS, "job_name": "beedet-test", "num_gpus": 0}),
        "TRAINING_JOB_NAME": "beedet-test",
    }
    return ml, env


def _cli(hyperparameters: dict[str, str]) -> list[str]:
    return [token for key in sorted(hyperparameters) for token in (f"--{key}", hyperparameters[key])]


# ---- unit tests: no training -----------------------------------------------------------------


def test_environment_from_toolkit_variables(tmp_path, synthetic):
    ml, env = _opt_ml(tmp_path, synthetic)
    sm = SageMakerEnvironment.from_env({**env, "SM_HOSTS": '["algo-1","algo-2"]', "SM_CURRENT_HOST": "algo-2", "SM_NUM_GPUS": "4"})
    assert sm.channels == {"train": ml / "input/data/train", "validation": ml / "input/data/validation"}
    assert (sm.model_dir, sm.output_data_dir, sm.output_dir) == (ml / "model", ml / "output/data", ml / "output")
    assert sm.checkpoint_dir == ml / "checkpoints"  # from checkpointconfig.json's LocalPath
    assert sm.tensorboard_dir == ml / "output" / "tensorboard"
    assert (sm.hosts, sm.current_host, sm.host_rank, sm.num_gpus) == (("algo-1", "algo-2"), "algo-2", 1, 4)
    assert sm.hyperparameters == HYPERPARAMETERS and sm.job_name == "beedet-test"
    assert running_under_sagemaker(env)
    assert not running_under_sagemaker({"SAGEMAKER_BASE_DIR": str(tmp_path / "nothing")})


def test_environment_of_an_image_without_the_toolkit(tmp_path, synthetic):
    """A BYO image gets no SM_* variable: only /opt/ml's config files and the `train` argument."""
    ml, _ = _opt_ml(tmp_path, synthetic)
    env = {"SAGEMAKER_BASE_DIR": str(ml)}
    assert running_under_sagemaker(env)
    sm = SageMakerEnvironment.from_env(env)
    assert sm.channels == {"train": ml / "input/data/train", "validation": ml / "input/data/validation"}
    assert (sm.model_dir, sm.output_data_dir, sm.checkpoint_dir) == (ml / "model", ml / "output/data", ml / "checkpoints")
    assert (sm.hosts, sm.current_host, sm.hyperparameters) == (("algo-1",), "algo-1", HYPERPARAMETERS)
    # `docker run IMAGE train`: the hyperparameters come from hyperparameters.json.
    assert job_arguments(["train"], env)[-len(HYPERPARAMETERS):] == to_overrides(HYPERPARAMETERS)


def test_malformed_variables_are_named():
    with pytest.raises(ValueError, match="SM_HOSTS"):
        SageMakerEnvironment.from_env({"SM_MODEL_DIR": "/m", "SM_HOSTS": "algo-1"})
    with pytest.raises(ValueError, match="SM_CURRENT_HOST='algo-3'"):
        SageMakerEnvironment.from_env({"SM_MODEL_DIR": "/m", "SM_HOSTS": '["algo-1"]', "SM_CURRENT_HOST": "algo-3"})


def test_hyperparameters_become_hydra_overrides():
    argv = ["--evaluation.size_bins", "None", "--experiment", "honeybee_tiled", "-s", "3", "--trainer.max_epochs", "50"]
    assert is_hyperparameter_argv(argv)
    parsed = parse_hyperparameter_argv(argv)
    assert parsed == {"evaluation.size_bins": "None", "experiment": "honeybee_tiled", "s": "3", "trainer.max_epochs": "50"}
    assert to_overrides(parsed) == ["evaluation.size_bins=null", "+experiment=honeybee_tiled", "s=3", "trainer.max_epochs=50"]
    # Hydra's own arguments (a user's key=value, Lightning's DDP re-launch) are not hyperparameters.
    for hydra_argv in (["trainer.max_epochs=2"], ["-cp", "/run/.hydra", "-cn", "config.yaml"], ["--experiment"]):
        assert not is_hyperparameter_argv(hydra_argv)
    with pytest.raises(HyperparameterError, match="given twice"):
        parse_hyperparameter_argv(["--a", "1", "--a", "2"])
    # SM_HPS as the SDK v2 (JSON-encoded strings) and v3 / the drivers (decoded values) write it.
    assert hyperparameters_from_json({"experiment": '"honeybee_tiled"', "e": 50, "b": True, "n": None, "l": "[1024, 4096]"}) == {
        "experiment": "honeybee_tiled", "e": "50", "b": "true", "n": "null", "l": "[1024, 4096]"}


def test_job_overrides_map_the_container_onto_the_config(tmp_path, synthetic):
    ml, env = _opt_ml(tmp_path, synthetic)
    overrides = job_arguments(_cli(HYPERPARAMETERS), env)
    assert overrides[-len(HYPERPARAMETERS):] == to_overrides(HYPERPARAMETERS)  # the job's own come last and win
    cfg = compose_config(overrides, run_dir=ml / "output/data")
    train_dir, val_dir = ml / "input/data/train", ml / "input/data/validation"
    assert cfg.data.train.path == str(train_dir / "train.manifest") and cfg.data.train.local_root == str(train_dir)
    assert cfg.data.val.path == str(val_dir / "val.manifest") and cfg.data.val.local_root == str(val_dir)
    assert cfg.run_dir == str(ml / "output/data")
    assert cfg.logger.save_dir == str(ml / "output") and cfg.logger.name == "tensorboard"
    assert cfg.logger.version == "beedet-test"  # TensorBoard names the run after the job
    # Spot training: both checkpoint callbacks write to the synced folder, and ckpt_path=last makes
    # Lightning resume from its last.ckpt when a restarted job finds one there.
    assert cfg.ckpt_path == "last"
    assert cfg.callbacks.model_checkpoint.dirpath == cfg.callbacks.last_checkpoint.dirpath == str(ml / "checkpoints")
    assert cfg.callbacks.last_checkpoint.filename == "last"
    # The job's own settings win over the container's.
    cfg = compose_config(job_arguments(["--ckpt_path", "null", "--paths.checkpoint_dir", "/ckpt"], env))
    assert cfg.ckpt_path is None and cfg.callbacks.model_checkpoint.dirpath == "/ckpt"
    # A train channel alone: validation is split off it.
    only_train = {**env, "SM_CHANNELS": '["train", "code"]'}
    cfg = compose_config(job_arguments(["--data.val_fraction", "0.25"], only_train))
    assert cfg.data.val is None and cfg.data.val_fraction == 0.25


def test_the_artifact_is_written_for_the_configured_endpoint_image(tmp_path, synthetic):
    """``--endpoint_image beedet`` (a train key, so the launcher passes it as a hyperparameter) reaches
    the model-artifact callback the job adds; an unknown image stops the job when the callback is built."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from beedet.sagemaker.artifact import ModelArtifact

    _, env = _opt_ml(tmp_path, synthetic)
    for argv, image in (([], "pytorch"), (["--endpoint_image", "beedet"], "beedet")):
        callback = instantiate(compose_config(job_arguments(argv, env)).callbacks.sagemaker_model_artifact)
        assert isinstance(callback, ModelArtifact) and callback.endpoint_image == image
    with pytest.raises(InstantiationException, match="endpoint_image='docker'"):
        instantiate(compose_config(job_arguments(["--endpoint_image", "docker"], env)).callbacks.sagemaker_model_artifact)


def test_pipe_channels_are_read_from_their_pipe(tmp_path, synthetic):
    """A Pipe-mode channel (inputdataconfig.json, or SM_INPUT_DATA_CONFIG as the drivers set it) is
    read from its pass-0 pipe beside the channel directory, as an augmented manifest; a Pipe channel
    without the RecordIO wrapper cannot be split into records and is refused."""
    ml, env = _opt_ml(tmp_path, synthetic)
    pipe = {"TrainingInputMode": "Pipe", "RecordWrapperType": "RecordIO", "ContentType": "application/x-recordio"}
    config = {"train": pipe, "validation": {"TrainingInputMode": "File"}}
    assert SageMakerEnvironment.from_env({**env, "SM_INPUT_DATA_CONFIG": json.dumps(config)}).input_data_config == config
    (ml / "input/config/inputdataconfig.json").write_text(json.dumps(config))
    assert SageMakerEnvironment.from_env(env).input_data_config == config
    cfg = compose_config(job_arguments([], env))
    assert cfg.data.train == {"_target_": "beedet.data.sources.source_for_path", "path": str(ml / "input/data/train_0"),
                              "fmt": "manifest-stream", "extract_dir": str(ml / "input/data/train")}
    assert cfg.data.val.fmt == "manifest"
    unwrapped = {**config, "train": {"TrainingInputMode": "Pipe", "RecordWrapperType": "None"}}
    with pytest.raises(SageMakerJobError, match="Pipe mode with RecordWrapperType None.*AugmentedManifestFile"):
        job_arguments([], {**env, "SM_INPUT_DATA_CONFIG": json.dumps(unwrapped)})


def test_several_instances_need_torchrun(tmp_path, synthetic):
    _, env = _opt_ml(tmp_path, synthetic)
    two = {**env, "SM_HOSTS": '["algo-1", "algo-2"]'}
    with pytest.raises(SageMakerJobError, match="not started by torchrun"):
        job_arguments([], two)
    overrides = job_arguments([], {**two, "TORCHELASTIC_RUN_ID": "job", "LOCAL_WORLD_SIZE": "1"})
    assert "++trainer.num_nodes=2" in overrides
    assert compose_config(overrides).trainer.num_nodes == 2


def test_a_bad_key_lists_the_valid_ones(tmp_path, synthetic):
    _, env = _opt_ml(tmp_path, synthetic)
    with pytest.raises(HyperparameterError) as err:
        job_arguments(["--experiment", "honeybee_tiled", "--trainer.max_epoch", "5"], env)
    message = str(err.value)
    assert "--trainer.max_epoch " in message and "did you mean --trainer.max_epochs" in message
    listed = set(re.split(r"[,\s]+", message.split("valid keys", 1)[1].split(":", 1)[1].strip()))
    # Keys of the composed config (the experiment's data source with the channel's), groups, experiment.
    assert {"trainer.max_epochs", "data.batch_size", "model.anchor_scales", "data.train.path", "model", "experiment"} <= listed
    assert "trainer.max_epoch" not in listed
    # From train.py's command line: a clear exit, and the reason in the job's failure file.
    with pytest.raises(SystemExit, match="unknown hyperparameter"):
        sagemaker_argv(["--max_epochs", "5"], env)
    assert "--max_epochs" in Path(env["SM_OUTPUT_DIR"], "failure").read_text()


def test_channel_layouts(tmp_path):
    both = tmp_path / "both"
    both.mkdir()
    for name in ("train.manifest", "valid.manifest"):
        (both / name).touch()
    assert channel_source(both, "val", "validation")["path"] == str(both / "valid.manifest")
    assert channel_source(both, "train", "train")["path"] == str(both / "train.manifest")
    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / name).touch()
    with pytest.raises(SageMakerJobError, match="several manifests .*--data.train.path"):
        channel_source(tmp_path, "train", "train")
    # --data.train.path picks one.
    assert channel_source(tmp_path, "train", "train", manifest=f"'{tmp_path / 'b.jsonl'}'")["path"] == str(tmp_path / "b.jsonl")
    coco = tmp_path / "coco"
    coco.mkdir()
    (coco / "instances.json").touch()
    # One format detector (beedet.data.sources.detect_format) and one builder (source_for_path).
    assert channel_source(coco, "train", "train") == {
        "_target_": "beedet.data.sources.source_for_path", "path": str(coco / "instances.json"), "fmt": "coco",
        "image_root": str(coco), "allow_outside_root": "${data.allow_outside_root}"}
    yolo = tmp_path / "yolo"
    (yolo / "images").mkdir(parents=True)
    assert channel_source(yolo, "train", "train")["path"] == str(yolo / "images")
    assert channel_source(yolo, "train", "train")["fmt"] == "yolo"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").touch()
    with pytest.raises(SageMakerJobError, match=r"channel 'train' \(.*empty\) holds no labels.*found notes.txt"):
        channel_source(empty, "train", "train")


def test_metric_definitions_read_the_metric_lines():
    values = {"val:mAP": 0.4123, "val:AP50": 1e-05, "val:count_bias": -1.25, "train:loss": 2.5, "train:loss_box": 0.75}
    line = "[2025-01-01 00:00:00,000][beedet.metrics][INFO] - " + format_metric_line(3, 120, values)
    found = {}
    for definition in METRIC_DEFINITIONS:
        match = re.search(definition["Regex"], line)
        if match:
            found[definition["Name"]] = float(match.group(1))
    # Each value read back by its own regex only ("train:loss" does not read train:loss_box).
    assert found == pytest.approx(values)
    assert not any(re.search(d["Regex"], "xval:mAP=0.5; train:loss_total=1;") for d in METRIC_DEFINITIONS)
    assert [d["Name"] for d in METRIC_DEFINITIONS] == list(METRICS)
    with pytest.raises(KeyError, match="val:nope"):
        format_metric_line(0, 0, {"val:nope": 1.0})


def test_serving_requirements_leave_out_the_container_packages():
    lines = runtime_requirements()
    names = {requirement_name(line) for line in lines}
    assert not names & set(CONTAINER_PACKAGES)
    assert {"pytorch-lightning", "hydra-core", "albumentations"} <= names
    assert not any("extra" in line for line in lines)


# ---- the contract: train.py under a fake /opt/ml ----------------------------------------------


@pytest.fixture(scope="module")
def sagemaker_job(tmp_path_factory, synthetic):
    """One training job run as the toolkit would start it: (/opt/ml, SM_* env, process, run dir)."""
    root = tmp_path_factory.mktemp("sagemaker_job")
    ml, env = _opt_ml(root, synthetic)
    proc, run_dir = run_script(["train.py", *_cli(HYPERPARAMETERS)], root, env=env)
    return ml, env, proc, run_dir


@pytest.mark.slow
def test_train_py_writes_the_model_artifact(sagemaker_job):
    from beedet.assembly import load_system

    ml, _, _, run_dir = sagemaker_job
    assert run_dir == ml / "output" / "data"
    assert json.loads((run_dir / "metrics.json").read_text())["mAP"] >= 0.0
    assert (ml / "checkpoints" / "last.ckpt").is_file() and (ml / "checkpoints" / "best.ckpt").is_file()
    assert list((ml / "output" / "tensorboard" / "beedet-test").glob("events.out.tfevents.*"))

    model = ml / "model"
    system, run_cfg = load_system(model / "model.ckpt")
    assert system.class_names == ["bee", "drone", "pollenbee", "queen"]
    assert "optimizer_states" not in torch.load(model / "model.ckpt", map_location="cpu", weights_only=False)
    config = yaml.safe_load((model / "config.yaml").read_text())
    assert config["data"]["train"]["path"] == str(ml / "input/data/train/train.manifest")
    assert config["model"] == dict(run_cfg.model)

    code = model / "code"
    tree = ast.parse((code / "inference.py").read_text())
    imports = [node for node in tree.body if isinstance(node, ast.ImportFrom)]
    assert [(i.module, sorted(a.name for a in i.names)) for i in imports] == [(HANDLERS_MODULE, sorted(HANDLER_NAMES))]
    assert (code / "beedet" / "assembly.py").is_file() and not list(code.rglob("__pycache__"))
    requirements = {requirement_name(line) for line in (code / "requirements.txt").read_text().splitlines()}
    assert "pytorch-lightning" in requirements and not requirements & set(CONTAINER_PACKAGES)


@pytest.mark.slow
def test_logged_metric_lines_match_the_metric_definitions(sagemaker_job):
    _, _, proc, run_dir = sagemaker_job
    log = proc.stdout + proc.stderr
    series = {d["Name"]: [float(v) for v in re.findall(d["Regex"], log)] for d in METRIC_DEFINITIONS}
    # One validation per epoch, one training epoch. The best checkpoint is that validation's: train.py
    # reports it without validating the same weights again (beedet.training.best_checkpoint).
    assert len(series["val:mAP"]) == 1 and len(series["train:loss"]) == 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert series["val:mAP"][-1] == pytest.approx(metrics["mAP"], abs=1e-6)
    assert series["val:AP50"][-1] == pytest.approx(metrics["AP50"], abs=1e-6)
    # val:count_MAE is at the fixed threshold of the curves; with evaluation.count_threshold=null the
    # run counts at the threshold tuned on val, which val:count_MAE_tuned and metrics.json report.
    assert series["val:count_threshold"][-1] == 0.5
    assert series["val:count_MAE_tuned"][-1] == pytest.approx(metrics["counting"]["all"]["MAE"], abs=1e-4)
    assert series["val:count_threshold_tuned"][-1] == pytest.approx(metrics["counting"]["threshold"])
    assert series["val:loss"][-1] == pytest.approx(metrics["loss"]["total"], rel=1e-4)
    assert series["val:F1"] and series["val:precision"] and series["val:recall"]
    assert series["train:loss"][0] > 0


@pytest.mark.slow
def test_a_restarted_job_resumes_from_the_checkpoint_dir(sagemaker_job):
    """A spot restart: same job, checkpoint dir as SageMaker copied it back. The run resumes from
    last.ckpt instead of training again (its one epoch is done, so it only re-validates)."""
    ml, env, _, _ = sagemaker_job
    last = ml / "checkpoints" / "last.ckpt"
    steps = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert steps == TRAIN_IMAGES // BATCH
    proc, _ = run_script(["train.py", *_cli(HYPERPARAMETERS)], ml.parent.parent, env=env)
    assert f"Restoring states from the checkpoint path at {last}" in proc.stdout + proc.stderr
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == steps


@pytest.mark.slow
def test_the_artifacts_inference_code_answers_an_image(sagemaker_job):
    """As the serving container loads it: code/ on sys.path, so inference.py imports the copied
    beedet; model_fn loads the model dir, and a JPEG goes through input_fn, predict_fn, output_fn."""
    if not (REPO / "beedet" / "serving" / "handlers.py").is_file():
        pytest.skip("beedet/serving/handlers.py does not exist yet")
    ml, _, _, _ = sagemaker_job
    model, code = ml / "model", ml / "model" / "code"
    image = next((ml / "input/data/validation/val/images").glob("*.jpg"))
    script = f"""
import json, pathlib
import beedet, inference
assert pathlib.Path(beedet.__file__).is_relative_to({str(code)!r}), beedet.__file__
detector = inference.model_fn({str(model)!r})
data = inference.input_fn(pathlib.Path({str(image)!r}).read_bytes(), "image/jpeg")
body, content_type = inference.output_fn(inference.predict_fn(data, detector), "application/json")
print(json.dumps({{"content_type": content_type, "answer": json.loads(body)}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=code, env={**os.environ, "PYTHONPATH": str(code)},
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["content_type"].startswith("application/json")
    answer = result["answer"]
    assert (answer["width"], answer["height"]) == (256, 256)
    assert all(d["class"] in ("bee", "drone", "pollenbee", "queen") and len(d["box"]) == 4 for d in answer["detections"])
