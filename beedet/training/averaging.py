"""An exponential moving average (EMA) of the weights, for validation, checkpoints and export.

From-scratch detectors trained on a few hundred images jump from step to step; the average of the
recent weights scores better and more steadily than any single step (YOLOv5 and later, DETR-style
trainers and timm all validate and ship an EMA). Lightning's ``WeightAveraging`` does the
bookkeeping: it updates a copy of the module after every optimizer step, swaps the average in for
each validation, saves the average as the checkpoint's ``state_dict`` (the raw weights as
``current_model_state``, which a resumed run trains on) and leaves the average in place when
training ends. So ``best.ckpt``, ``evaluate.py``, predict, export and serving all use the average
without knowing about it.

What this class adds to Lightning's ``EMAWeightAveraging``: a warmup of the decay. A fixed decay of
0.999 still weights the first step's (nearly random) weights by 0.999^n after n steps (0.69 after
375 steps, a short CPU run); here the decay is ``decay * (1 - exp(-n / warmup_steps))`` (YOLOv5's
ramp), so early averages follow the model closely and long runs average over about
1 / (1 - decay) steps.
"""

from __future__ import annotations

import math
from typing import Any

from pytorch_lightning.callbacks import WeightAveraging
from torch import Tensor


class ExponentialMovingAverage(WeightAveraging):
    """EMA of parameters and buffers (BatchNorm statistics too), updated after every optimizer step.

    Args:
        decay: the decay once warmed up (0.999 averages over about the last 1,000 steps).
        warmup_steps: the decay ramps up as ``1 - exp(-n / warmup_steps)`` over the first updates.
    """

    def __init__(self, decay: float = 0.999, warmup_steps: int = 500, **kwargs: Any) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        if warmup_steps < 1:
            raise ValueError(f"EMA warmup_steps must be >= 1, got {warmup_steps}")
        self.decay = float(decay)
        self.warmup_steps = int(warmup_steps)
        super().__init__(avg_fn=self._average, use_buffers=True, **kwargs)

    def decay_at(self, num_averaged: int) -> float:
        """The decay used for the update after ``num_averaged`` earlier updates."""
        return self.decay * (1.0 - math.exp(-num_averaged / self.warmup_steps))

    def _average(self, averaged: Tensor, current: Tensor, num_averaged: Tensor | int) -> Tensor:
        decay = self.decay_at(int(num_averaged))
        return averaged * decay + current * (1.0 - decay)
