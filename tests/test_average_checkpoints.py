"""Averaging checkpoints (``python -m beedet.average_checkpoints``): the weights are the mean, the
result is a checkpoint every command loads, checkpoints of different networks or classes are refused
naming the file, and the BatchNorm statistics can be re-estimated on the run's own training data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from beedet.assembly import build_network, build_system, load_system
from beedet.average_checkpoints import average_checkpoints, average_state_dicts, main, recompute_batchnorm
from beedet.checkpointing import load_checkpoint, load_initial_weights
from helpers import TINY_SYNTHETIC, compose_config, overriding, save_checkpoint

CLASSES = ["bee", "drone", "pollenbee", "queen"]


def _checkpoint(path: Path, seed: int, *, overrides: list[str] | None = None, classes: list[str] = CLASSES,
                count_threshold: float | None = 0.4, global_step: int = 0) -> Path:
    """A beedet checkpoint of the shrunk default recipe with seed-dependent random weights."""
    cfg = compose_config(overrides or TINY_SYNTHETIC)
    torch.manual_seed(seed)
    system = build_system(cfg, build_network(cfg.model, num_classes=len(classes)), classes)
    system.count_threshold = count_threshold
    with torch.no_grad():  # BatchNorm statistics unlike the defaults, so that their mean is tested too
        for module in system.net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.num_batches_tracked.fill_(seed)
    save_checkpoint(system, path, global_step=global_step)
    return path


def test_the_average_is_the_mean_of_the_weights_and_loads_everywhere(tmp_path: Path):
    paths = [_checkpoint(tmp_path / f"{seed}.ckpt", seed, global_step=10 * seed) for seed in (1, 2, 3)]
    out = average_checkpoints(paths, tmp_path / "soup.ckpt")
    checkpoint, payload = load_checkpoint(out)
    sources = [load_checkpoint(p)[0]["state_dict"] for p in paths]
    for name, tensor in checkpoint["state_dict"].items():
        if tensor.is_floating_point():
            expected = (sources[0][name].double() + sources[1][name].double() + sources[2][name].double()) / 3
            torch.testing.assert_close(tensor, expected.to(tensor.dtype), msg=name)
            assert not torch.equal(tensor, sources[0][name]) or torch.equal(sources[0][name], sources[1][name]), name
        else:
            assert torch.equal(tensor, sources[2][name]), name  # the largest step counter
    assert checkpoint["averaged_from"] == [str(p) for p in paths] and checkpoint["global_step"] == 30
    assert payload.class_names == CLASSES and payload.count_threshold == 0.4  # the same in every source
    system, _ = load_system(out)  # evaluate.py, predict, export and serving load it this way
    start, _ = load_initial_weights(out, CLASSES)  # and a new run starts from it (init_checkpoint=)
    assert start.keys() == checkpoint["state_dict"].keys()
    with torch.no_grad():
        detections = system.net([torch.rand(3, 128, 128)])
    assert set(detections[0]) == {"boxes", "scores", "labels"}


def test_sources_with_different_count_thresholds_leave_it_to_evaluation(tmp_path: Path):
    a = _checkpoint(tmp_path / "a.ckpt", 1, count_threshold=0.4)
    b = _checkpoint(tmp_path / "b.ckpt", 2, count_threshold=0.55)
    assert load_checkpoint(average_checkpoints([a, b], tmp_path / "soup.ckpt"))[1].count_threshold is None


def test_checkpoints_of_another_network_or_other_classes_are_refused_naming_the_file(tmp_path: Path, caplog):
    a = _checkpoint(tmp_path / "a.ckpt", 1)
    wider = _checkpoint(tmp_path / "wider.ckpt", 2, overrides=overriding(TINY_SYNTHETIC, "model.widths=[16,24,64,96]"))
    with pytest.raises(ValueError, match=r"wider\.ckpt: net\.\S+ is torch\.float32 \(96, .*but .* in \S+a\.ckpt"):
        average_checkpoints([a, wider], tmp_path / "soup.ckpt")
    renamed = _checkpoint(tmp_path / "renamed.ckpt", 3, classes=["worker", "drone", "pollenbee", "queen"])
    with pytest.raises(ValueError, match=r"renamed\.ckpt detects \['worker'"):
        average_checkpoints([a, renamed], tmp_path / "soup.ckpt")
    with pytest.raises(ValueError, match="at least two"):
        average_state_dicts([{}], ["only.ckpt"])
    with pytest.raises(ValueError, match=r"b\.ckpt does not hold the same tensors as a\.ckpt: missing \['v'\]"):
        average_state_dicts([{"w": torch.zeros(2), "v": torch.zeros(1)}, {"w": torch.zeros(2)}], ["a.ckpt", "b.ckpt"])
    with pytest.raises(ValueError, match=r"b\.ckpt: w is torch\.float16"):
        average_state_dicts([{"w": torch.zeros(2)}, {"w": torch.zeros(2, dtype=torch.float16)}], ["a.ckpt", "b.ckpt"])
    assert not (tmp_path / "soup.ckpt").exists()
    # Another loss setting is the same network: averaged, with a warning naming the file and setting.
    reweighted = _checkpoint(tmp_path / "reweighted.ckpt", 4,
                             overrides=overriding(TINY_SYNTHETIC, "model.class_weight_power=0.25"))
    with caplog.at_level("WARNING", logger="beedet.average_checkpoints"):
        out = average_checkpoints([a, reweighted], tmp_path / "soup.ckpt")
    assert "reweighted.ckpt was trained with other model settings" in caplog.text
    assert "model.class_weight_power: 0.5 -> 0.25" in caplog.text
    assert load_checkpoint(out)[1].config["model"]["class_weight_power"] == 0.5  # the first's


def test_the_command_line_names_what_is_wrong_without_a_traceback(tmp_path: Path, capsys):
    a = _checkpoint(tmp_path / "a.ckpt", 1)
    with pytest.raises(SystemExit) as exit_:
        main([str(a), "--out", str(tmp_path / "soup.ckpt")])
    assert exit_.value.code == 2 and "at least two checkpoints" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(a), str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "soup.ckpt")])
    assert "missing.ckpt" in capsys.readouterr().err and not (tmp_path / "soup.ckpt").exists()


def test_recompute_batchnorm_warns_about_layers_the_forward_pass_never_reaches(caplog):
    net = nn.ModuleDict({"used": nn.BatchNorm1d(2), "unused": nn.BatchNorm1d(2)})
    with caplog.at_level("WARNING", logger="beedet.average_checkpoints"):
        recompute_batchnorm(_OnlyFirst(net), [(torch.randn(4, 2),)], num_batches=1, to_network_input=lambda b: b)
    assert "did not reach keep default statistics: net.unused" in caplog.text and "net.used" not in caplog.text


class _OnlyFirst(nn.Module):
    def __init__(self, net: nn.ModuleDict) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net["used"](x)


def test_recompute_batchnorm_takes_the_plain_mean_over_the_batches_and_restores_the_layer():
    net = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2, momentum=0.1)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[[[1.0]]], [[[2.0]]]]))
    batches = [(torch.full((4, 1, 2, 2), float(v)),) for v in (1.0, 3.0, 8.0)]
    used = recompute_batchnorm(net, iter(batches), num_batches=2, to_network_input=lambda b: b)
    assert used == 2 and not net.training and net[1].momentum == 0.1
    # Channel 0 sees 1 then 3 (mean 2), channel 1 sees 2 then 6 (mean 4): the mean of the batch
    # means, not an EMA that would weight the second batch by 0.1. The third batch is not used.
    torch.testing.assert_close(net[1].running_mean, torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(net[1].running_var, torch.tensor([0.0, 0.0]))
    with pytest.raises(ValueError, match="no batch"):
        recompute_batchnorm(net, iter([]), num_batches=2, to_network_input=lambda b: b)


def test_the_command_line_with_batchnorm_re_estimated_on_the_runs_training_data(tmp_path: Path, capsys, caplog):
    a, b = _checkpoint(tmp_path / "a.ckpt", 1), _checkpoint(tmp_path / "b.ckpt", 2)
    with caplog.at_level("INFO", logger="beedet.average_checkpoints"):
        main([str(a), str(b), "--out", str(tmp_path / "soup.ckpt"), "--bn-batches", "2", "--num-workers", "0"])
    assert "re-estimated on 2 training batches" in caplog.text and "evaluate.py ckpt=" in capsys.readouterr().out
    averaged = average_state_dicts([load_checkpoint(p)[0]["state_dict"] for p in (a, b)], ["a", "b"])
    checkpoint, _ = load_checkpoint(tmp_path / "soup.ckpt")
    assert checkpoint["bn_batches"] == 2
    for name, tensor in checkpoint["state_dict"].items():
        if name.endswith(("running_mean", "running_var")):
            # Statistics of real (synthetic) training images through the averaged network, not the
            # sources' random ones.
            assert not torch.allclose(tensor, averaged[name]), name
        elif not name.endswith("num_batches_tracked"):
            assert torch.equal(tensor, averaged[name]), name
