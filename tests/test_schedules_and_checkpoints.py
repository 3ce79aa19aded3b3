from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from beedet.checkpointing import AtomicCheckpointIO
from beedet.schedules import warmup_constant, warmup_cosine, warmup_multistep


def _lrs(make, steps: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = make(opt, total_steps=steps)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_cosine_rises_then_decays_to_floor():
    lrs = _lrs(lambda o, total_steps: warmup_cosine(o, total_steps, warmup_steps=10, min_lr_ratio=0.01), 100)
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[9] == pytest.approx(0.1)
    assert all(a >= b - 1e-12 for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(0.001, rel=0.05)


def test_warmup_multistep_milestones_are_fractions():
    lrs = _lrs(lambda o, total_steps: warmup_multistep(o, total_steps, warmup_steps=0, milestones=[0.5, 0.75], gamma=0.1), 100)
    assert lrs[49] == pytest.approx(0.1) and lrs[50] == pytest.approx(0.01) and lrs[75] == pytest.approx(0.001)
    with pytest.raises(ValueError, match="fractions"):
        warmup_multistep(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), 10, milestones=[5])


def test_short_runs_do_not_spend_all_steps_warming_up():
    lrs = _lrs(lambda o, total_steps: warmup_constant(o, total_steps, warmup_steps=1000), 10)
    assert lrs[-1] == pytest.approx(0.1) and not math.isclose(lrs[0], 0.1)


def test_atomic_checkpoint_keeps_old_file_when_a_save_dies(tmp_path: Path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "ckpt" / "last.ckpt"
    io.save_checkpoint({"epoch": 1}, target)
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 2}, target)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(target, weights_only=False)["epoch"] == 1
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"], "temporary file left behind"
