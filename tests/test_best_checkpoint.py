"""The best checkpoint validated once after fit and logged once under best/ (beedet.training.best_checkpoint):
a module whose validation reports a scripted mAP, trained three epochs on the CPU, events read back."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader

from beedet.training.best_checkpoint import BestCheckpoint, validate_best_checkpoint
from beedet.training.throughput import SpeedMonitor

#: val/mAP after each epoch: epoch 1 is best.
SCRIPT = [0.1, 0.5, 0.3]


class Scripted(pl.LightningModule):
    """Validation reports the mAP of the epoch its weights come from (a buffer saved in checkpoints)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.register_buffer("quality", torch.zeros(()))
        self.last_validation = None
        self.last_validation_step = None  # as DetectionModule's: the step of the weights last validated
        self.validations = 0
        self.script = SCRIPT

    def on_train_epoch_start(self) -> None:
        self.quality.fill_(self.script[self.current_epoch])

    def training_step(self, batch, batch_idx):
        return (self.weight - batch.mean()) ** 2

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self) -> None:
        value = float(self.quality)
        self.validations += 1
        self.last_validation_step = self.trainer.global_step
        self.last_validation = SimpleNamespace(
            metrics=SimpleNamespace(stats={"mAP": value, "AP50": 2 * value, "AP75": value / 2},
                                    per_class_AP50={"bee": 2 * value, "drone": None}),
            counts=SimpleNamespace(overall={"MAE": 1 - value}))
        self.log("val/mAP", value)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Data(pl.LightningDataModule):
    def train_dataloader(self) -> DataLoader:
        return DataLoader(torch.rand(4, 3), batch_size=2)  # 2 steps per epoch

    def val_dataloader(self) -> DataLoader:
        return DataLoader(torch.rand(2, 3), batch_size=2)


def test_the_best_checkpoint_is_logged_once_under_best(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="tensorboard", version="run")
    monitor = SpeedMonitor()
    trainer = pl.Trainer(
        max_epochs=3, logger=logger, accelerator="cpu", devices=1, enable_progress_bar=False,
        enable_model_summary=False, log_every_n_steps=1, num_sanity_val_steps=0, default_root_dir=tmp_path,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="best", monitor="val/mAP", mode="max"),
                   monitor])
    module, data = Scripted(), Data()
    trainer.fit(module, datamodule=data)
    fit_time = monitor.training_time_s

    best = validate_best_checkpoint(trainer, module, data)

    assert best == BestCheckpoint(str(tmp_path / "checkpoints" / "best.ckpt"), 1, 4, fit_time)
    assert best.summary() == {"best_epoch": 1, "best_step": 4, "training_time_s": round(fit_time, 1)}
    assert fit_time > 0 and monitor.training_time_s == fit_time  # the validated checkpoint's clock is not restored
    assert module.last_validation.metrics.stats["mAP"] == 0.5  # the best weights were validated
    assert trainer.callback_metrics["val/mAP"] == 0.5  # what the SageMaker metric lines read
    assert trainer.loggers == [logger]  # handed back

    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    # One val/ point per epoch that ran, and no epoch point after the last one: the final
    # validation is not one more validation in the curves.
    val_steps = [e.step for e in events.Scalars("val/mAP")]
    assert len(val_steps) == 3
    assert max(e.step for e in events.Scalars("epoch")) == val_steps[-1]
    assert max(e.value for e in events.Scalars("epoch")) == 2
    # best/ once, at the step of the validation that made the checkpoint best.
    assert {"best/mAP", "best/AP50", "best/AP75", "best/count_MAE", "best/epoch", "best/AP50/bee"} <= tags
    assert "best/AP50/drone" not in tags  # a class without ground truth has no AP
    for tag, value in (("best/mAP", 0.5), ("best/AP50", 1.0), ("best/count_MAE", 0.5), ("best/epoch", 1.0)):
        (point,) = events.Scalars(tag)
        assert (point.step, point.value) == (val_steps[1], pytest.approx(value)), tag


def test_without_a_checkpoint_the_final_weights_are_validated(tmp_path):
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, accelerator="cpu", devices=1,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    module, data = Scripted(), Data()
    trainer.fit(module, datamodule=data)
    best = validate_best_checkpoint(trainer, module, data)
    assert best == BestCheckpoint("", None, None, None) and best.summary() == {}
    assert module.last_validation.metrics.stats["mAP"] == pytest.approx(SCRIPT[0])


@pytest.mark.parametrize("script, revalidated", [([0.1, 0.3, 0.5], False), ([0.1, 0.5, 0.3], True)])
def test_the_last_validation_is_reused_when_it_made_the_checkpoint_best(tmp_path, script, revalidated):
    """The recipe's 4-view validation costs minutes on 2 cores: a best checkpoint saved by the fit's
    last validation is reported from that validation; an older one is validated again."""
    trainer = pl.Trainer(
        max_epochs=3, logger=False, accelerator="cpu", devices=1, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="best", monitor="val/mAP", mode="max")])
    module, data = Scripted(), Data()
    module.script = script
    trainer.fit(module, datamodule=data)
    assert module.validations == 3

    best = validate_best_checkpoint(trainer, module, data)

    assert module.validations == 3 + revalidated
    assert module.last_validation.metrics.stats["mAP"] == 0.5 == trainer.callback_metrics["val/mAP"]
    assert best.epoch == script.index(0.5)
