from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from beedet.checkpointing import AtomicCheckpointIO
from beedet.training.schedules import warmup_constant, warmup_cosine, warmup_multistep


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


def test_schedules_follow_a_time_budget_when_it_ends_first():
    """With trainer.max_time the schedule follows the share of time spent when that is further
    along than the steps: a run cut by time still decays to its floor."""
    spent = {"fraction": 0.0}
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = warmup_cosine(opt, total_steps=10_000, warmup_steps=10, min_lr_ratio=0.01, time_fraction=lambda: spent["fraction"])
    for step in range(100):
        spent["fraction"] = (step + 1) / 100  # the time budget runs out at step 100 of 10,000
        opt.step()
        sched.step()
        if step == 49:
            assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5))), rel=1e-6)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = warmup_multistep(opt, total_steps=10_000, warmup_steps=0, milestones=[0.5], time_fraction=lambda: 0.6)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)


def test_the_system_reads_the_time_budget_from_lightnings_timer(tmp_path: Path):
    """trainer.max_time reaches the schedule as the share of time spent, from Lightning's Timer."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import Timer

    from beedet.training.system import DetectionModule

    system = DetectionModule(torch.nn.Linear(1, 1), ["bee"], optimizer=torch.optim.SGD)
    system.trainer = pl.Trainer(max_time="00:00:10:00", logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
    timer = next(c for c in system.trainer.callbacks if isinstance(c, Timer))
    fraction = system._time_budget_fraction()
    from pytorch_lightning.trainer.states import RunningStage

    timer._start_time[RunningStage.TRAINING], timer._end_time[RunningStage.TRAINING] = 0.0, 150.0  # 2.5 of 10 min
    assert fraction() == pytest.approx(0.25)
    system.trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
    assert system._time_budget_fraction() is None
