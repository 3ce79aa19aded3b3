"""A checkpoint from elsewhere cannot run code: pickled payloads and foreign Hydra targets are
refused by every command that reads checkpoints, and the typed payload round-trips. A checkpoint
whose stored config names beedet targets from before they moved still loads (RENAMED_TARGETS)."""

from __future__ import annotations

import importlib.util
import pathlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra.utils import get_object
from omegaconf import OmegaConf

from beedet.assembly import build_network, build_system, load_system
from beedet.checkpointing import (
    PAYLOAD_KEY,
    RENAMED_TARGETS,
    TRUSTED_TARGETS,
    CheckpointPayload,
    UntrustedCheckpoint,
    convert_checkpoint,
    load_checkpoint,
    renamed_targets,
    untrusted_targets,
)
from beedet.serving.handlers import load_detector, output_fn, predict_fn
from helpers import CONF, REPO, TINY_SYNTHETIC, compose_config, save_checkpoint

CLASSES = ["bee", "drone", "pollenbee", "queen"]


class _TouchOnUnpickle:
    """Unpickling this calls ``Path.touch(marker)``: the stand-in for any code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def untrained_checkpoint(tmp_path_factory) -> Path:
    """A valid beedet checkpoint of the default (shrunk) recipe, written by the system's own
    ``on_save_checkpoint`` without training (weights are random; only loading is tested)."""
    cfg = compose_config(TINY_SYNTHETIC)
    system = build_system(cfg, build_network(cfg.model, num_classes=len(CLASSES)), CLASSES)
    path = tmp_path_factory.mktemp("ckpt") / "clean.ckpt"
    save_checkpoint(system, path)
    return path


def _variant(clean: Path, tmp_path: Path, name: str, edit) -> Path:
    checkpoint = torch.load(clean, weights_only=True)
    edit(checkpoint)
    path = tmp_path / name
    torch.save(checkpoint, path)
    return path


def _with_pickle(clean: Path, tmp_path: Path, marker: Path) -> Path:
    return _variant(clean, tmp_path, "pickle.ckpt", lambda c: c.update(hyper_parameters={"x": _TouchOnUnpickle(marker)}))


def _with_foreign_target(clean: Path, tmp_path: Path, marker: Path) -> Path:
    """The stored optimizer becomes ``numpy.savetxt(marker, [1])``: plain data that Hydra would
    turn into a file write (its own blocklist stops os.system, not this)."""

    def edit(checkpoint):
        payload = CheckpointPayload.from_plain(checkpoint[PAYLOAD_KEY], "test")
        config = payload.config
        config["optimizer"] = {"_target_": "numpy.savetxt", "fname": str(marker), "X": [1.0]}
        checkpoint[PAYLOAD_KEY] = CheckpointPayload.from_config(
            config, payload.class_names, count_threshold=None, size_bins=None).to_plain()

    return _variant(clean, tmp_path, "foreign.ckpt", edit)


def test_payload_round_trip_and_format_1(untrained_checkpoint: Path):
    checkpoint, payload = load_checkpoint(untrained_checkpoint)
    assert payload.class_names == CLASSES and payload.config["model"]["_target_"].startswith("beedet.models.")
    assert set(checkpoint[PAYLOAD_KEY]) == {"format", "class_names", "config_yaml", "count_threshold", "size_bins"}
    again = CheckpointPayload.from_plain(payload.to_plain(), "x")
    assert again == payload
    # What beedet wrote before the typed payload: the config as a dict, no format number.
    legacy = {"class_names": CLASSES, "config": payload.config, "count_threshold": 0.4, "size_bins": [10.0]}
    read = CheckpointPayload.from_plain(legacy, "old.ckpt")
    assert read.config == payload.config and read.count_threshold == 0.4 and read.size_bins == [10.0]
    with pytest.raises(ValueError, match="bad.ckpt: class_names"):
        CheckpointPayload.from_plain({**payload.to_plain(), "class_names": "bee"}, "bad.ckpt")


def test_pickled_code_is_refused_and_never_runs(untrained_checkpoint: Path, tmp_path: Path):
    marker = tmp_path / "ran"
    bad = _with_pickle(untrained_checkpoint, tmp_path, marker)
    with pytest.raises(UntrustedCheckpoint, match=r"pickle\.ckpt holds pickled objects.*python -m beedet.checkpointing"):
        load_system(bad)
    assert not marker.exists()
    # The same file under the old loader runs the payload: the test can tell the difference.
    torch.load(bad, weights_only=False)
    assert marker.exists()


def test_foreign_target_is_refused_before_anything_is_built(untrained_checkpoint: Path, tmp_path: Path):
    marker = tmp_path / "written.txt"
    bad = _with_foreign_target(untrained_checkpoint, tmp_path, marker)
    with pytest.raises(UntrustedCheckpoint, match=r"foreign\.ckpt: its stored config holds numpy\.savetxt"):
        load_system(bad)
    assert not marker.exists()


def test_only_listed_names_and_no_interpolations_are_trusted():
    assert untrusted_targets({"model": {"_target_": "beedet.models.ssd.ssd_resnet_slim"}}) == []
    # Defined in beedet is not enough: these unpickle, write files or start paid jobs.
    sneaky = ["beedet.checkpointing.os.system", "beedet.checkpointing.convert_checkpoint", "beedet.data.convert.main",
              "beedet.sagemaker.launch.main", "beedet.sagemaker.artifact.write_model_artifact", "beedet.nope.Thing",
              "os.system", "builtins.eval", "albumentations.Lambda", "subprocess.call"]
    config = {"a": [{"_target_": name} for name in sneaky], "b": {"c": {"_target_": 42}}}
    assert sorted(untrusted_targets(config)) == sorted([*sneaky, "42"])
    # OmegaConf resolvers build nodes (or read the environment) only when resolved: a saved config
    # is resolved already, so any interpolation, in a value or a key, is refused.
    smuggled = "${oc.create:{_target_:subprocess.call,_args_:[[sh,-c,id]]}}"
    assert untrusted_targets({"model": {"depth": smuggled}}) == [smuggled]
    assert untrusted_targets({"data": ["${oc.env:AWS_SECRET_ACCESS_KEY}"]}) == ["${oc.env:AWS_SECRET_ACCESS_KEY}"]
    assert untrusted_targets({"${oc.env:HOME}": 1}) == ["${oc.env:HOME}"]


def test_a_resolver_in_the_stored_config_is_refused_before_anything_runs(untrained_checkpoint: Path, tmp_path: Path):
    marker = tmp_path / "resolved.txt"

    def edit(checkpoint):
        payload = CheckpointPayload.from_plain(checkpoint[PAYLOAD_KEY], "test")
        config = payload.config
        config["model"]["depth"] = f"${{oc.create:{{_target_:numpy.savetxt,fname:{marker},X:[1.0]}}}}"
        checkpoint[PAYLOAD_KEY] = CheckpointPayload.from_config(
            config, payload.class_names, count_threshold=None, size_bins=None).to_plain()

    bad = _variant(untrained_checkpoint, tmp_path, "resolver.ckpt", edit)
    with pytest.raises(UntrustedCheckpoint, match=r"resolver\.ckpt: its stored config holds \$\{oc\.create"):
        load_system(bad)
    assert not marker.exists()


def test_every_target_in_conf_is_trusted():
    """TRUSTED_TARGETS and conf/ stay in step: a new conf target must be listed (or the
    checkpoints of runs using it would be refused), and the list names nothing conf/ does not,
    besides the data sources a user's data config may name and the artifact callback a SageMaker
    job adds."""
    named: set[str] = set()
    for path in CONF.rglob("*.yaml"):
        named.update(re.findall(r"^[\s-]*_target_:\s*(\S+)", path.read_text(), flags=re.M))
    assert untrusted_targets([{"_target_": name} for name in sorted(named)]) == []
    extra = {t for t in TRUSTED_TARGETS - named
             if not t.startswith("beedet.data.sources.") and t != "beedet.sagemaker.artifact.ModelArtifact"}
    assert extra == set()


def test_converter_makes_a_trusted_old_checkpoint_loadable(untrained_checkpoint: Path, tmp_path: Path):
    def make_old(checkpoint):
        payload = CheckpointPayload.from_plain(checkpoint[PAYLOAD_KEY], "x")
        checkpoint[PAYLOAD_KEY] = {"class_names": CLASSES, "config": payload.config, "count_threshold": 0.35,
                                   "size_bins": None}
        checkpoint["hyper_parameters"] = {"root": pathlib.PurePosixPath("/data")}  # a pickled object

    old = _variant(untrained_checkpoint, tmp_path, "old.ckpt", make_old)
    with pytest.raises(UntrustedCheckpoint):
        load_checkpoint(old)
    proc = subprocess.run([sys.executable, "-m", "beedet.checkpointing", str(old), str(tmp_path / "new.ckpt")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    system, run_cfg = load_system(tmp_path / "new.ckpt")
    assert system.class_names == CLASSES and system.count_threshold == 0.35
    reference, _ = load_system(untrained_checkpoint)
    for (name, a), (_, b) in zip(system.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name
    assert OmegaConf.to_container(run_cfg) == yaml.safe_load(load_checkpoint(untrained_checkpoint)[1].config_yaml)
    assert convert_checkpoint(old, tmp_path / "again.ckpt").is_file()


def _targets(config) -> list[str]:
    """Every ``_target_`` in ``config`` (nested dicts and lists)."""
    if isinstance(config, dict):
        own = [config["_target_"]] if "_target_" in config else []
        return own + [t for v in config.values() for t in _targets(v)]
    return [t for v in config for t in _targets(v)] if isinstance(config, list) else []


def test_every_renamed_target_is_trusted_and_importable_and_no_old_module_is_left():
    for old, new in RENAMED_TARGETS.items():
        assert new in TRUSTED_TARGETS and old not in TRUSTED_TARGETS, (old, new)
        assert callable(get_object(new)), new
        # No alias or re-export module stays at the old place: only the table knows the old names.
        assert importlib.util.find_spec(old.rsplit(".", 1)[0]) is None, old
    config = {"callbacks": {name.rsplit(".", 1)[1]: {"_target_": name} for name in RENAMED_TARGETS},
              "optimizer": {"_target_": "torch.optim.AdamW"}, "note": "beedet.tiling.Slicing is not a target here"}
    renamed = yaml.safe_load(renamed_targets(yaml.safe_dump(config, sort_keys=False)))
    assert sorted(_targets(renamed)) == sorted([*RENAMED_TARGETS.values(), "torch.optim.AdamW"])
    assert renamed["note"] == config["note"]  # only _target_ values are renamed
    current = yaml.safe_dump({"slicing": {"_target_": "beedet.inference.tiling.Slicing"}}, sort_keys=False)
    assert renamed_targets(current) is current


def test_a_checkpoint_naming_targets_before_the_move_loads_and_detects_the_same(tmp_path: Path):
    """A checkpoint written before beedet/'s modules moved (its stored config names
    beedet.tiling.Slicing, beedet.augment.build_pipeline, beedet.callbacks.*, ...) loads through
    load_system, serves, and detects exactly what the same weights do under the new names."""
    cfg = compose_config([*TINY_SYNTHETIC, "slicing=tiles", "slicing.tile_size=160", "slicing.overlap=32",
                          "callbacks=ema"])
    system = build_system(cfg, build_network(cfg.model, num_classes=len(CLASSES)), CLASSES)
    new_path = tmp_path / "new.ckpt"
    checkpoint = save_checkpoint(system, new_path)

    old_names = {new: old for old, new in RENAMED_TARGETS.items()}
    new_yaml = CheckpointPayload.from_plain(checkpoint[PAYLOAD_KEY], "x").config_yaml
    old_yaml = re.sub(r"(_target_: )(\S+)", lambda m: m[1] + old_names.get(m[2], m[2]), new_yaml)
    assert {"beedet.tiling.Slicing", "beedet.augment.build_pipeline", "beedet.schedules.warmup_cosine",
            "beedet.callbacks.PredictionOverlays", "beedet.throughput.SpeedMonitor",
            "beedet.tensorboard_run.run_name", "beedet.averaging.ExponentialMovingAverage"} <= set(
        _targets(yaml.safe_load(old_yaml)))
    old_path = _variant(new_path, tmp_path, "old.ckpt", lambda c: c[PAYLOAD_KEY].update(config_yaml=old_yaml))

    _, payload = load_checkpoint(old_path)
    assert payload.config == yaml.safe_load(new_yaml)
    old_system, old_cfg = load_system(old_path)
    new_system, new_cfg = load_system(new_path)
    assert type(old_system.slicing).__module__ == "beedet.inference.tiling"
    assert OmegaConf.to_container(old_cfg) == OmegaConf.to_container(new_cfg)
    frame = torch.rand(3, 300, 420, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        (old_detections,), (new_detections,) = old_system.detect([frame]), new_system.detect([frame])
    assert len(new_detections["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(old_detections[key], new_detections[key]), key
    # Serving reads it the same way (load_system), and so does the converter, which writes new names.
    pixels = np.ascontiguousarray((frame.permute(1, 2, 0) * 255).to(torch.uint8).numpy())
    old_served, new_served = (output_fn(predict_fn(pixels, load_detector(path, device="cpu")),
                                        "application/json;verbose") for path in (old_path, new_path))
    assert old_served == new_served and old_served[0].startswith(b'{"prediction":[[')
    converted = convert_checkpoint(old_path, tmp_path / "converted.ckpt")
    assert torch.load(converted, weights_only=True)[PAYLOAD_KEY]["config_yaml"] == new_yaml


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["evaluate.py", "beedet.predict", "beedet.serve"])
def test_commands_refuse_unsafe_checkpoints(entry: str, untrained_checkpoint: Path, tmp_path: Path):
    """What a user runs, fed a bad checkpoint: a non-zero exit with the reason, and nothing ran.
    evaluate.py gets both kinds; predict the pickle and serve the foreign target (all three load
    through the same load_system, so each kind still reaches two commands, at 4 s a start)."""
    images = tmp_path / "images"
    images.mkdir()
    kinds = {"evaluate.py": (_with_pickle, _with_foreign_target), "beedet.predict": (_with_pickle,),
             "beedet.serve": (_with_foreign_target,)}[entry]
    for make in kinds:
        marker = tmp_path / f"marker-{make.__name__}"
        bad = make(untrained_checkpoint, tmp_path, marker)
        script = [str(REPO / entry)] if entry.endswith(".py") else ["-m", entry]
        run_dir = f"run_dir={tmp_path / 'run'}"
        extra = {"evaluate.py": [run_dir], "beedet.predict": [f"images={images}", run_dir], "beedet.serve": ["port=0"]}[entry]
        proc = subprocess.run([sys.executable, *script, f"ckpt={bad}", *extra],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0
        assert "UntrustedCheckpoint" in proc.stderr and bad.name in proc.stderr
        assert not marker.exists()
