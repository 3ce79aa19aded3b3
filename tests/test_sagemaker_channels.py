"""Weights through a training job's channels: ``pretrained`` (the ImageNet file a pretrained base
loads, never downloaded) and ``model`` (the built-in's incremental training: an earlier beedet
model.tar.gz the network starts from), and a job that asks for a pretrained base it cannot get.

Each job is a temporary /opt/ml tree with a few synthetic bees as its train and validation
channels and the SM_* variables the training toolkit sets. The network is built as train.py builds
it (the job's overrides, the real composed config, ``build_system_for_data``) with every socket
connection and download failing the test; the job that cannot get its weights runs train.py itself.
"""

from __future__ import annotations

import json
import shutil
import socket
import tarfile
from pathlib import Path

import pytest
import torch
from helpers import compose_config, run_script, save_checkpoint
from omegaconf import DictConfig
from torchvision.models import ResNet18_Weights, ResNet50_Weights, resnet18

from beedet.assembly import build_datamodule, build_network, build_system, build_system_for_data
from beedet.checkpointing import InitCheckpointError
from beedet.data.synthetic import generate_split
from beedet.models.backbones import imagenet_state_dict, weights_from_directory
from beedet.sagemaker.artifact import write_model_artifact
from beedet.sagemaker.training_job import job_arguments
from beedet.training.system import DetectionModule

CLASSES = ["bee", "drone", "pollenbee", "queen"]  # the synthetic bees' classes, in id order
RESNET18 = ["--model", "ssd300_resnet18", "--model.pretrained_backbone", "true"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """A few synthetic bees (train.manifest, val.manifest and their images), drawn once."""
    root = tmp_path_factory.mktemp("synthetic")
    generate_split(root, "train", 4, 256, 0)
    generate_split(root, "val", 2, 256, 0)
    return root


def _opt_ml(root: Path, synthetic: Path, *weights_channels: str) -> tuple[Path, dict[str, str]]:
    """An /opt/ml tree under ``root`` with train and validation channels and an empty directory
    for each of ``weights_channels``, and the SM_* variables the training toolkit would set."""
    ml = root / "opt" / "ml"
    data = ml / "input" / "data"
    for split, channel in (("train", "train"), ("val", "validation")):
        (data / channel).mkdir(parents=True)
        (data / channel / f"{split}.manifest").write_bytes((synthetic / f"{split}.manifest").read_bytes())
        shutil.copytree(synthetic / split, data / channel / split)
    channels = {name: str(data / name) for name in ("train", "validation", *weights_channels)}
    for name in weights_channels:
        (data / name).mkdir()
    for name in ("model", "output/data", "checkpoints"):
        (ml / name).mkdir(parents=True)
    env = {
        "SAGEMAKER_BASE_DIR": str(ml),
        "SM_MODEL_DIR": str(ml / "model"),
        "SM_OUTPUT_DIR": str(ml / "output"),
        "SM_OUTPUT_DATA_DIR": str(ml / "output" / "data"),
        "SM_CHANNELS": json.dumps(sorted(channels)),
        **{f"SM_CHANNEL_{name.upper()}": path for name, path in channels.items()},
        "SM_HOSTS": '["algo-1"]',
        "SM_CURRENT_HOST": "algo-1",
        "SM_NUM_GPUS": "0",
    }
    return ml, env


def _build_as_train_py(argv: list[str], env: dict[str, str], ml: Path) -> tuple[DictConfig, DetectionModule]:
    """What train.py builds for the job, up to trainer.fit: its config and the system."""
    cfg = compose_config(job_arguments(["--data.num_workers", "0", *argv], env), run_dir=ml / "output" / "data")
    datamodule = build_datamodule(cfg.data, cfg.augment)
    datamodule.load_labels()
    assert datamodule.class_names == CLASSES
    return cfg, build_system_for_data(cfg, datamodule)


def _offline(monkeypatch: pytest.MonkeyPatch, hub: Path) -> None:
    """Every socket connection and download fails the test; torch hub's directory is ``hub``."""

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))  # what torch.hub.set_dir sets; restored after
    hub.mkdir(exist_ok=True)


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub directory, with every socket connection and download failing the test."""
    _offline(monkeypatch, tmp_path / "hub")
    return tmp_path / "hub"


def _random_state(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """``state`` with every float tensor replaced by seeded random values (positive, so BatchNorm
    variances stay valid): weights no fresh build has."""
    generator = torch.Generator().manual_seed(seed)
    return {k: 0.5 + torch.rand(v.shape, generator=generator) if v.is_floating_point() else v.clone()
            for k, v in state.items()}


# ---- pretrained: the ImageNet file from the channel ---------------------------------------------


@pytest.fixture(scope="module")
def pretrained_job(tmp_path_factory, synthetic) -> dict:
    """A job asking for an ImageNet ResNet-18 base, offline, whose `pretrained` channel holds
    random ResNet-18 weights as its only .pth file (beside a README), built as train.py builds it."""
    root = tmp_path_factory.mktemp("pretrained_job")
    ml, env = _opt_ml(root, synthetic, "pretrained")
    channel = ml / "input" / "data" / "pretrained"
    written = _random_state(resnet18(weights=None).state_dict(), seed=1)
    torch.save(written, channel / "my-resnet18.pth")
    (channel / "README.txt").write_text("ImageNet weights for the job")
    with pytest.MonkeyPatch.context() as monkeypatch:
        _offline(monkeypatch, root / "hub")
        cfg, system = _build_as_train_py(RESNET18, env, ml)
        hub_after = (torch.hub.get_dir(), sorted((root / "hub").iterdir()))
    return {"root": root, "channel": channel, "written": written, "cfg": cfg, "system": system, "hub_after": hub_after}


def test_the_pretrained_channel_supplies_the_backbone_weights(pretrained_job):
    assert pretrained_job["cfg"].pretrained_dir == str(pretrained_job["channel"])
    trunk = pretrained_job["system"].net.backbone.trunk.state_dict()
    expected = {k: v for k, v in pretrained_job["written"].items() if not k.startswith(("layer4.", "fc."))}
    assert set(trunk) == set(expected)  # conv1 .. layer3
    for key, value in expected.items():
        torch.testing.assert_close(trunk[key], value, rtol=0, atol=0, msg=f"{key} is not the channel file's")
    # torch hub points where it did again, and nothing was cached or downloaded there.
    assert pretrained_job["hub_after"] == (str(pretrained_job["root"] / "hub"), [])


def test_the_file_named_as_torchvision_names_it_wins(tmp_path, offline_hub):
    shapes = resnet18(weights=None).state_dict()
    weights = ResNet18_Weights.IMAGENET1K_V1
    named = _random_state(shapes, seed=1)
    torch.save(named, tmp_path / Path(weights.url).name)
    torch.save(_random_state(shapes, seed=2), tmp_path / "another-resnet18.pt")
    with weights_from_directory(tmp_path):
        loaded = imagenet_state_dict(weights)
    assert loaded.keys() == named.keys() and all(torch.equal(loaded[k], named[k]) for k in named)
    assert torch.hub.get_dir() == str(offline_hub) and not list(offline_hub.iterdir())


def test_a_pretrained_channel_without_the_file_stops_naming_it(tmp_path, synthetic, offline_hub):
    ml, env = _opt_ml(tmp_path, synthetic, "pretrained")
    channel = ml / "input" / "data" / "pretrained"
    for name in ("a.pth", "b.pt"):
        torch.save({}, channel / name)
    with pytest.raises(Exception) as stopped:  # Hydra's InstantiationException, raised from it
        _build_as_train_py(RESNET18, env, ml)
    message = str(stopped.value)
    assert f"{channel} (pretrained_dir: a SageMaker job's `pretrained` channel) holds several weight files " \
           f"(a.pth, b.pt): put resnet18-f37072fd.pth there" in message


# ---- model: warm start from an earlier job's model.tar.gz ------------------------------------------


def _earlier_artifact(root: Path, class_names: list[str], overrides: list[str], seed: int) -> tuple[Path, dict]:
    """The model.tar.gz an earlier training job left, packed as SageMaker packs SM_MODEL_DIR: the
    artifact beedet writes (``write_model_artifact``) for a checkpoint its system wrote, with
    seeded random weights. Returns the archive and those weights."""
    cfg = compose_config(overrides)
    system = build_system(cfg, build_network(cfg.model, num_classes=len(class_names)), class_names)
    system.load_state_dict(_random_state(system.state_dict(), seed))
    checkpoint = save_checkpoint(system, root / "best.ckpt", epoch=3, global_step=12)
    model_dir = write_model_artifact(root / "model", root / "best.ckpt")
    with tarfile.open(root / "model.tar.gz", "w:gz") as tar:
        for path in sorted(model_dir.iterdir()):
            tar.add(path, arcname=path.name)
    return root / "model.tar.gz", checkpoint["state_dict"]


def test_the_model_channel_starts_the_network_from_an_earlier_artifact(tmp_path, synthetic, offline_hub):
    ml, env = _opt_ml(tmp_path, synthetic, "model")
    archive, weights = _earlier_artifact(tmp_path, CLASSES, [], seed=7)
    (ml / "input" / "data" / "model" / "model.tar.gz").write_bytes(archive.read_bytes())

    cfg, system = _build_as_train_py([], env, ml)

    assert cfg.init_checkpoint == str(ml / "input" / "data" / "model")
    state = system.state_dict()
    assert set(state) == set(weights)
    for key, value in weights.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=f"{key} is not the artifact's")


def test_a_model_channel_with_other_classes_stops_naming_the_file(tmp_path, synthetic):
    ml, env = _opt_ml(tmp_path, synthetic, "model")
    archive, _ = _earlier_artifact(tmp_path, ["bee", "drone", "pollenbee", "wasp"], [], seed=7)
    channel_archive = ml / "input" / "data" / "model" / "model.tar.gz"
    channel_archive.write_bytes(archive.read_bytes())
    with pytest.raises(InitCheckpointError) as stopped:
        _build_as_train_py([], env, ml)
    message = str(stopped.value)
    assert f"init_checkpoint {channel_archive}:model.ckpt: that model was trained on the classes " \
           f"['bee', 'drone', 'pollenbee', 'wasp'], this run's data has {CLASSES}" in message
    assert "`model` channel" in message


def test_a_model_channel_replaces_the_imagenet_weights_a_job_asks_for(tmp_path, synthetic, offline_hub, pretrained_job):
    """The built-in's incremental training keeps use_pretrained_model=1 (its default): with a
    `model` channel (here the extracted artifact of the job above) and no `pretrained` channel,
    nothing is downloaded or looked for, and the network starts from that model."""
    earlier = pretrained_job["system"]
    # Its class names and run config, with other weights.
    checkpoint = save_checkpoint(earlier, tmp_path / "best.ckpt", _random_state(earlier.state_dict(), seed=11),
                                 epoch=3, global_step=12)
    ml, env = _opt_ml(tmp_path, synthetic, "model")
    write_model_artifact(ml / "input" / "data" / "model", tmp_path / "best.ckpt")

    cfg, system = _build_as_train_py(RESNET18, env, ml)

    assert cfg.model.pretrained_backbone is True and cfg.get("pretrained_dir") is None
    state = system.state_dict()
    assert set(state) == set(checkpoint["state_dict"])
    for key, value in checkpoint["state_dict"].items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=f"{key} is not the artifact's")


# ---- neither: the job stops before training, and says why --------------------------------------


@pytest.mark.slow
def test_a_job_that_cannot_get_its_pretrained_base_stops_before_training(tmp_path, synthetic):
    """train.py as the toolkit starts it, with the built-in's names asking for an ImageNet ResNet-50:
    no `pretrained` channel, an empty torch hub cache and every download refused (an unreachable
    proxy). It stops when the network is built, and the job's failure file says why and how to
    supply the weights."""
    ml, env = _opt_ml(tmp_path, synthetic)
    unreachable = "http://127.0.0.1:9"
    env |= {"TORCH_HOME": str(tmp_path / "torch"), "NO_PROXY": "", "no_proxy": "",
            **{name: unreachable for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")}}
    argv = ["--base_network", "resnet-50", "--use_pretrained_model", "1", "--epochs", "1", "--mini_batch_size", "2",
            "--data.num_workers", "0"]

    with pytest.raises(AssertionError, match=r"failed \(1\)") as failed:
        run_script(["train.py", *argv], tmp_path, env=env, timeout=300)

    failure = (ml / "output" / "failure").read_text()
    filename = Path(ResNet50_Weights.IMAGENET1K_V1.url).name
    assert failure.startswith(f"train.py: model.pretrained_backbone=true (the built-in's use_pretrained_model=1) needs "
                              f"the ImageNet weights {ResNet50_Weights.IMAGENET1K_V1} ({filename})"), failure
    for way in (f"a `pretrained` channel holding {filename}", "a `model` channel holding its model.tar.gz",
                "use_pretrained_model=0", "network access"):
        assert way in failure, way
    # Before training: the labels were read, then nothing was trained, saved or packed.
    assert (ml / "output" / "data" / "data_report.md").is_file()
    assert not list((ml / "checkpoints").iterdir()) and not list((ml / "model").iterdir())
    assert "train:loss" not in str(failed.value)
