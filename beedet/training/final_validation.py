"""A run validates its final weights, whichever limit ends it: ``max_time``, ``max_epochs`` or ``max_steps``.

Lightning validates an epoch only when ``check_val_every_n_epoch`` divides its number, and a stop
mid-epoch only when something asks to stop (``trainer.should_stop``). So a run that validates every
60 epochs (the honeybee recipe: a sliced, four-view validation costs as much as 6 epochs on 2 CPU
cores) and is told ``trainer.max_epochs=100`` reports epoch 59's weights and never looks at the 40
epochs after it, though the schedule decayed the rate over them; one stopped by ``max_time`` at
epoch 37 of a validate-every-20 run reports epoch 19's; one stopped by ``max_steps`` mid-epoch is
not validated at all. :class:`ValidateFinalWeights` makes the stop a validation, so the run reports
(and ``ModelCheckpoint`` can keep) its last weights. With ``max_time`` the validation runs after
the limit: a run overruns ``max_time`` by one validation, as a run limited by ``max_epochs`` ends
with one.
"""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Timer


class ValidateFinalWeights(pl.Callback):
    """Switches ``trainer.check_val_every_n_epoch`` to 1 for the epoch that ends the run, when that
    epoch would not be validated anyway, and puts the configured interval back after that validation.
    A no-op when every epoch is validated.

    Which epoch ends the run:

    * ``max_epochs``: the last one, known when it starts.
    * ``max_steps``: the epoch holding the last step. That step usually falls mid-epoch, where
      Lightning validates only a stop that was asked for, so the callback also asks for the stop
      (``trainer.should_stop``, as ``EarlyStopping`` does) after it, whatever the interval (the
      default validates every epoch, and still not a stop mid-epoch).
    * ``max_time``: the epoch in which less than ``margin_batches`` batches of training time are left
      before the limit (measured from the batches so far). Why a margin: the Timer and this callback
      read the clock at slightly different instants after the same batch; deciding a batch or two
      early means the limit never slips between them. With several processes that decision is rank
      0's (broadcast, as the Timer's stop), so that all of them validate the same epoch; the epoch
      and step limits are the same on every process.

    Weights validated within the margin are not validated again: a scheduled validation that runs
    past the time limit (the Timer only looks between training batches) already holds the final
    weights, give or take a batch. Without this check the recipe's 12-minute run validated twice in
    a row, up to 2.5 minutes each on 2 CPU cores, one step apart. For the same reason the configured
    ``check_val_every_n_epoch`` is put back after the first validation once switched: an epoch that
    ends inside the margin is validated there, and the stop a batch later is not validated again.
    (It also keeps ``ModelCheckpoint``, which reads that setting, saving after validation; Lightning
    runs checkpoint callbacks after all others, so the setting is back before they look.) With
    ``val_check_interval`` below one epoch, the interval is put back after the switched epoch's
    last validation, at its end or at the stop, not after the first one mid-epoch.

    A run resumed mid-epoch (from a checkpoint saved every N steps) into its last epoch never
    starts that epoch, so the ``max_epochs`` check is made when training starts too."""

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
        self.switched = False
        self._switch_if_last_epoch(trainer)  # a run resumed mid-epoch skips on_train_epoch_start

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A forced validation that never ran (no val batches; min_epochs not met at max_steps)
        # leaves the trainer as it was configured.
        self._restore(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._validated_at_step = trainer.global_step
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch or trainer.should_stop:
            self._restore(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._switch_if_last_epoch(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._batches += 1
        if self._at_max_steps(trainer):
            if not self.switched and trainer.check_val_every_n_epoch not in (None, 1):
                self._switch(trainer)
            trainer.should_stop = True  # a stop mid-epoch is validated only when asked for
            return
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
            self._switch(trainer)

    def _switch_if_last_epoch(self, trainer: pl.Trainer) -> None:
        every = trainer.check_val_every_n_epoch
        if self.switched or every in (None, 1) or trainer.max_epochs is None or trainer.max_epochs < 0:
            return
        epoch = trainer.current_epoch + 1  # counted from 1, as the interval counts
        if epoch >= trainer.max_epochs and epoch % every != 0:
            self._switch(trainer)

    @staticmethod
    def _at_max_steps(trainer: pl.Trainer) -> bool:
        return trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step

    def _switch(self, trainer: pl.Trainer) -> None:
        self._configured = trainer.check_val_every_n_epoch
        trainer.check_val_every_n_epoch = 1
        self.switched = True

    def _restore(self, trainer: pl.Trainer) -> None:
        if self.switched:
            trainer.check_val_every_n_epoch = self._configured
            self.switched = False
