"""A run stopped by ``trainer.max_time`` validates its final weights.

Lightning's ``Timer`` stops training at the time limit, after whichever batch crosses it, and the
stop is validated only when that epoch is one ``check_val_every_n_epoch`` validates anyway. So a
run that validates every 20 epochs and runs out of time at epoch 37 reports epoch 19's weights,
though the schedule (fitted to ``max_time``, ``beedet.training.schedules``) decayed the rate over
the 18 epochs after it, usually its best ones. :class:`ValidateAtTimeLimit` makes the epoch that
will reach the limit a validation epoch, so the stop validates (and ``ModelCheckpoint`` can keep)
the last weights. The validation runs after the limit: a run overruns ``max_time`` by one
validation, as a run limited by ``max_epochs`` ends with one.
"""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Timer


class ValidateAtTimeLimit(pl.Callback):
    """Switches ``trainer.check_val_every_n_epoch`` to 1 when less than ``margin_batches`` batches
    of training time are left before ``trainer.max_time`` (measured from the batches so far), so the
    epoch the limit stops is validated. A no-op without ``max_time``, or when every epoch is validated.

    Why a margin: the Timer and this callback read the clock at slightly different instants after
    the same batch; deciding a batch or two early means the limit never slips between them.

    Weights validated within the margin are not validated again: a scheduled validation that runs
    past the limit (the Timer only looks between training batches) already holds the final weights,
    give or take a batch. Without this check the recipe's 12-minute run validated twice in a row,
    up to 2.5 minutes each on 2 CPU cores, one step apart. For the same reason the configured
    ``check_val_every_n_epoch`` is put back after the first validation once switched: an epoch that
    ends inside the margin is validated there, and the stop a batch later is not validated again.
    (It also keeps ``ModelCheckpoint``, which reads that setting, saving after validation.)

    With several processes the decision is rank 0's (broadcast, as the Timer's stop), so that all
    of them validate the same epoch."""

    def __init__(self, margin_batches: float = 2.0) -> None:
        if margin_batches < 0:
            raise ValueError(f"margin_batches must be >= 0, got {margin_batches}")
        self.margin_batches = float(margin_batches)
        self.switched = False
        self._configured: int | None = None
        self._batches = 0
        self._start: float | None = None
        self._validated_at_step: int | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # This session's clock: a resumed run's Timer also counts the sessions before it.
        self._start = time.monotonic()
        self._batches = 0

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._validated_at_step = trainer.global_step
        if self.switched:
            trainer.check_val_every_n_epoch = self._configured
            self.switched = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._batches += 1
        if self.switched or trainer.check_val_every_n_epoch in (None, 1):
            return
        timer = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)
        remaining = timer.time_remaining() if timer is not None else None
        if remaining is None or self._start is None:
            return
        # Validations so far count in: a larger margin, never a smaller one.
        seconds_per_batch = (time.monotonic() - self._start) / self._batches
        just_validated = (self._validated_at_step is not None
                          and trainer.global_step - self._validated_at_step <= self.margin_batches)
        switch = remaining <= self.margin_batches * seconds_per_batch and not just_validated
        if trainer.strategy.broadcast(switch):
            self._configured = trainer.check_val_every_n_epoch
            trainer.check_val_every_n_epoch = 1
            self.switched = True
