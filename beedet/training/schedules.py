"""Learning-rate schedules, stepped once per optimizer step.

Each builder takes the optimizer and the run's total number of optimizer steps (Lightning's
``trainer.estimated_stepping_batches``), so milestones are written as fractions of training and a
config works unchanged for 2 epochs on a laptop or 200 on a GPU.

A run may also be cut by wall-clock time (``trainer.max_time``) before it reaches its steps. Each
builder then takes ``time_fraction``, a callable giving the share of that time already spent
(``DetectionModule`` reads it from Lightning's Timer), and the schedule follows whichever of the two
is further along: a run stopped by its time budget still warms up, decays and ends at its lowest
rate, instead of stopping at full rate in the middle of its cosine.

Warmup matters for SSD: at SGD's usual learning rates the untrained head's large box-regression
loss makes the first few hundred steps diverge without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _warmup_factor(step: int, warmup_steps: int) -> float:
    # Linear from 1/warmup to 1: never exactly 0, so step 0 still trains.
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


TimeFraction = Callable[[], float]


def _progress(step: int, start: int, total_steps: int, time_fraction: TimeFraction | None) -> float:
    """How far past ``start`` training is, in [0, 1]: by steps, or by time when that is further."""
    progress = (step - start) / max(1, total_steps - start)
    if time_fraction is not None:
        progress = max(progress, time_fraction())
    return min(1.0, max(0.0, progress))


def _clamped_warmup(warmup_steps: int, total_steps: int) -> int:
    # A short run (tests, smoke runs) must not spend all of its steps warming up.
    return max(0, min(warmup_steps, total_steps // 5))


def warmup_cosine(
    optimizer: Optimizer,
    total_steps: int,
    warmup_steps: int = 100,
    min_lr_ratio: float = 0.01,
    time_fraction: TimeFraction | None = None,
) -> LambdaLR:
    """Linear warmup, then cosine decay from the base lr to ``min_lr_ratio`` x base lr, over the
    steps or the time budget (``time_fraction``), whichever ends first."""
    total_steps = max(1, int(total_steps))
    warmup = _clamped_warmup(warmup_steps, total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return _warmup_factor(step, warmup)
        progress = _progress(step, warmup, total_steps, time_fraction)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def warmup_multistep(
    optimizer: Optimizer,
    total_steps: int,
    warmup_steps: int = 100,
    milestones: Sequence[float] = (0.67, 0.89),
    gamma: float = 0.1,
    time_fraction: TimeFraction | None = None,
) -> LambdaLR:
    """Linear warmup, then multiply the lr by ``gamma`` at each milestone (fractions of training,
    in steps or in the time budget, whichever is further along)."""
    if any(not 0.0 < m < 1.0 for m in milestones):
        raise ValueError(f"scheduler milestones are fractions of training in (0, 1), got {list(milestones)}")
    total_steps = max(1, int(total_steps))
    warmup = _clamped_warmup(warmup_steps, total_steps)
    fractions = sorted(milestones)

    def factor(step: int) -> float:
        progress = _progress(step, 0, total_steps, time_fraction)
        decays = sum(progress >= m for m in fractions)
        return _warmup_factor(step, warmup) * gamma**decays

    return LambdaLR(optimizer, factor)


def warmup_constant(
    optimizer: Optimizer, total_steps: int, warmup_steps: int = 100, time_fraction: TimeFraction | None = None
) -> LambdaLR:
    """Linear warmup, then the base lr for the rest of training (``time_fraction`` is accepted
    for a common signature and changes nothing)."""
    warmup = _clamped_warmup(warmup_steps, max(1, int(total_steps)))
    return LambdaLR(optimizer, lambda step: _warmup_factor(step, warmup))
