"""A run validates its final weights whichever limit stops it: trainer.max_time, max_epochs or
max_steps (beedet.training.final_validation)."""

from __future__ import annotations

import time

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from beedet.training.final_validation import ValidateFinalWeights
from helpers import compose_config


class SlowModel(pl.LightningModule):
    """20 ms per training batch, 4 batches per epoch; counts the epochs it was validated after."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.validated_after: list[int] = []

    def training_step(self, batch, batch_idx):
        time.sleep(0.02)
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.layer(batch[0]).sum())

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self.validated_after.append(self.trainer.global_step)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(tmp_path, callbacks, batches_per_epoch: int = 4) -> tuple[SlowModel, pl.Trainer]:
    data = DataLoader(TensorDataset(torch.ones(batches_per_epoch, 1)), batch_size=1)
    model = SlowModel()
    trainer = pl.Trainer(max_time={"seconds": 0.8}, max_epochs=1000, check_val_every_n_epoch=100, callbacks=callbacks,
                         num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, data, data)
    return model, trainer


@pytest.mark.parametrize("batches_per_epoch", [1, 3, 4])
def test_the_epoch_that_reaches_max_time_is_validated(tmp_path, batches_per_epoch):
    # Without it: the time limit ends the run long before epoch 100, its only validation epoch.
    if batches_per_epoch == 4:
        plain, _ = _fit(tmp_path / "plain", [], batches_per_epoch)
        assert plain.validated_after == []
    # Epochs of 1 or 3 batches end inside the 2-batch margin: validated there, not again at the stop.
    model, trainer = _fit(tmp_path / "timed", [ValidateFinalWeights()], batches_per_epoch)
    # It trained until the limit (40 steps on a quiet machine; fewer on a loaded one).
    assert trainer.global_step > 4 and trainer.current_epoch < 999
    # Validated at (or within a batch or two of) the last step: the final weights; and never twice
    # within the margin. Once on a quiet machine; on a loaded one batch times vary, the margin can
    # judge the limit an epoch early, and the real end is then validated too.
    validated = model.validated_after
    assert trainer.global_step - validated[-1] <= 2 and len(validated) <= 2
    assert all(later - earlier > 2 for earlier, later in zip(validated, validated[1:]))
    assert trainer.check_val_every_n_epoch == 100  # put back after that validation


def test_the_best_checkpoint_holds_the_validated_final_weights(tmp_path):
    """ModelCheckpoint reads check_val_every_n_epoch to decide when it saves: with the setting put
    back before it runs, it saves right after the forced validation, at that validation's step."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    data = DataLoader(TensorDataset(torch.ones(3, 1)), batch_size=1)
    model = SlowModel()
    best = ModelCheckpoint(dirpath=tmp_path, filename="best", monitor="val/loss", mode="min")
    trainer = pl.Trainer(max_time={"seconds": 0.8}, max_epochs=1000, check_val_every_n_epoch=100,
                         callbacks=[ValidateFinalWeights(), best], num_sanity_val_steps=0, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, data, data)
    (validated,) = model.validated_after
    saved = torch.load(best.best_model_path, map_location="cpu", weights_only=True)
    assert saved["global_step"] == validated


def _fit_to(tmp_path, callbacks, ckpt_path=None, **limits) -> tuple[SlowModel, pl.Trainer]:
    """A fit of 4-batch epochs that validates every 2nd epoch (unless ``limits`` says otherwise),
    ended by ``limits`` (no time limit)."""
    data = DataLoader(TensorDataset(torch.ones(4, 1)), batch_size=1)
    model = SlowModel()
    settings = {"check_val_every_n_epoch": 2, "enable_checkpointing": False, **limits}
    trainer = pl.Trainer(callbacks=callbacks, num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, **settings)
    trainer.fit(model, data, data, ckpt_path=ckpt_path)
    return model, trainer


@pytest.mark.parametrize(("limits", "plain", "with_it"), [
    # The last epoch (the 3rd) is not one the interval validates: without the callback its 4 steps
    # are never validated.
    ({"max_epochs": 3}, [8], [8, 12]),
    # The last epoch (the 4th) is validated anyway: nothing changes.
    ({"max_epochs": 4}, [8, 16], [8, 16]),
    # max_steps stops mid-epoch (step 10 of epoch 3), where Lightning validates nothing.
    ({"max_epochs": 100, "max_steps": 10}, [8], [8, 10]),
    # ... and at the end of a validation epoch, once.
    ({"max_epochs": 100, "max_steps": 16}, [8, 16], [8, 16]),
    # The default interval (every epoch) still leaves a mid-epoch max_steps stop unvalidated.
    ({"max_epochs": 100, "max_steps": 10, "check_val_every_n_epoch": 1}, [4, 8], [4, 8, 10]),
    # Validating twice per epoch: the last epoch's mid-epoch validation does not end the switch.
    ({"max_epochs": 3, "val_check_interval": 0.5}, [6, 8], [6, 8, 10, 12]),
])
def test_the_epoch_or_step_that_ends_the_run_is_validated_once(tmp_path, limits, plain, with_it):
    without, _ = _fit_to(tmp_path / "plain", [], **limits)
    assert without.validated_after == plain
    callback = ValidateFinalWeights()
    model, trainer = _fit_to(tmp_path / "final", [callback], **limits)
    assert model.validated_after == with_it and trainer.global_step == with_it[-1]
    configured = limits.get("check_val_every_n_epoch", 2)
    assert trainer.check_val_every_n_epoch == configured and not callback.switched  # put back after it


def test_a_run_resumed_mid_epoch_into_its_last_epoch_validates_its_end(tmp_path):
    """Resuming from a step-10 checkpoint (mid-epoch 3 of 3) never starts epoch 3 again."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    every_10 = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="step10", every_n_train_steps=10)
    _fit_to(tmp_path / "first", [every_10], max_epochs=3, max_steps=10, enable_checkpointing=True)
    resumed, trainer = _fit_to(tmp_path / "resumed", [ValidateFinalWeights()], ckpt_path=tmp_path / "ckpt" / "step10.ckpt",
                               max_epochs=3)
    assert resumed.validated_after == [12] and trainer.check_val_every_n_epoch == 2


def test_a_forced_validation_that_cannot_run_leaves_the_interval_as_configured(tmp_path):
    callback = ValidateFinalWeights()
    model, trainer = _fit_to(tmp_path, [callback], max_epochs=3, limit_val_batches=0)
    assert model.validated_after == [] and trainer.check_val_every_n_epoch == 2 and not callback.switched


def test_every_run_has_it_and_its_margin_is_checked():
    target = "beedet.training.final_validation.ValidateFinalWeights"
    assert compose_config([]).callbacks.validate_final_weights._target_ == target
    with pytest.raises(ValueError, match="margin_batches"):
        ValidateFinalWeights(margin_batches=-1)


def test_weights_just_validated_are_not_validated_again():
    """A scheduled validation that ran past the limit already holds the final weights: the step
    after it, with no time left, switches nothing; some steps later it would."""
    from types import SimpleNamespace

    from pytorch_lightning.callbacks import Timer
    from pytorch_lightning.trainer.states import RunningStage

    timer = Timer(duration={"seconds": 100})
    timer._start_time[RunningStage.TRAINING] = time.monotonic() - 130  # 30 s past the limit
    trainer = SimpleNamespace(check_val_every_n_epoch=20, callbacks=[timer], global_step=1520, sanity_checking=False,
                              max_steps=-1, max_epochs=1000, current_epoch=75, should_stop=False,
                              fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(
                                  batch_progress=SimpleNamespace(is_last_batch=True))),
                              strategy=SimpleNamespace(broadcast=lambda decision: decision))
    callback = ValidateFinalWeights()
    callback.on_train_start(trainer, None)
    callback.on_validation_end(trainer, None)  # the scheduled validation, at step 1520
    trainer.global_step = 1521
    callback.on_train_batch_end(trainer, None, None, None, 0)
    assert trainer.check_val_every_n_epoch == 20 and not callback.switched
    trainer.global_step = 1525
    callback.on_train_batch_end(trainer, None, None, None, 1)
    assert trainer.check_val_every_n_epoch == 1 and callback.switched
