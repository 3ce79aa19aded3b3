"""Speed and memory in TensorBoard (beedet.training.throughput.SpeedMonitor): a tiny module trained for two
epochs on the CPU, with the event files read back."""

from __future__ import annotations

import time

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader

from beedet.training.throughput import SpeedMonitor

SPEED_TAGS = {"speed/step_time_s", "speed/data_time_s", "speed/images_per_s", "speed/eta_s"}


class SlowData(torch.utils.data.Dataset):
    """Twelve 3x8x8 images, each taking ``delay`` seconds to load."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int):
        time.sleep(self.delay)
        return torch.full((3, 8, 8), index / 12), {"labels": torch.tensor([index % 2])}


def collate(batch):
    return [image for image, _ in batch], [target for _, target in batch]


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        images, _ = batch
        loss = (self.weight - torch.stack([image.mean() for image in images]).mean()) ** 2
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(tmp_path, callbacks: list[pl.Callback], delay: float = 0.0, **trainer_args) -> tuple[pl.Trainer, TensorBoardLogger]:
    """Train ``Tiny`` on 12 images in batches of 3 (4 steps per epoch, 2 epochs unless told)."""
    logger = TensorBoardLogger(tmp_path, name="tb", version="run")
    trainer = pl.Trainer(**{
        "max_epochs": 2, "logger": logger, "callbacks": callbacks, "enable_checkpointing": False, "accelerator": "cpu",
        "devices": 1, "enable_progress_bar": False, "enable_model_summary": False, "log_every_n_steps": 2, **trainer_args})
    trainer.fit(Tiny(), DataLoader(SlowData(delay), batch_size=3, collate_fn=collate))
    return trainer, logger


def scalars(logger: TensorBoardLogger) -> EventAccumulator:
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
    events.Reload()
    return events


def test_speed_scalars_are_logged_beside_the_training_loss(tmp_path):
    monitor = SpeedMonitor()
    trainer, logger = fit(tmp_path, [monitor], delay=0.01)
    events = scalars(logger)
    tags = set(events.Tags()["scalars"])

    assert SPEED_TAGS <= tags
    assert "speed/gpu_peak_memory_gib" not in tags  # CPU only: no GPU memory line
    # Every 2 of the 8 steps, at the steps Lightning logs train/loss at.
    steps = [e.step for e in events.Scalars("speed/step_time_s")]
    assert steps == [1, 3, 5, 7]
    assert set(steps) <= {e.step for e in events.Scalars("train/loss")}
    # Each batch of 3 images waits at least 3 x 10 ms for its data, and the data time is part of the step time.
    for step_time, data_time, rate in zip(*(events.Scalars(t) for t in
                                            ("speed/step_time_s", "speed/data_time_s", "speed/images_per_s"))):
        assert 0.03 <= data_time.value <= step_time.value
        assert rate.value == pytest.approx(3 / step_time.value, rel=1e-3)
    eta = [e.value for e in events.Scalars("speed/eta_s")]
    assert eta[-1] == 0.0 and eta[0] > eta[1] > 0.0  # 6, 4, ..., 0 steps left
    assert monitor.training_time_s >= 8 * 0.03


class StopAfter(pl.Callback):
    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        trainer.should_stop = trainer.global_step >= self.steps


def test_eta_is_the_time_left_of_a_time_budget(tmp_path):
    # No epoch or step limit, an hour of time: the ETA is what is left of the hour.
    monitor = SpeedMonitor(every_n_steps=1)
    _, logger = fit(tmp_path, [monitor, StopAfter(3)], max_time={"hours": 1}, max_epochs=-1)
    eta = [e.value for e in scalars(logger).Scalars("speed/eta_s")]
    assert len(eta) >= 3 and 3500 < eta[-1] < eta[0] <= 3600
    assert monitor.training_time_s > 0


def test_the_training_clock_survives_a_resume_but_not_a_later_validation():
    monitor = SpeedMonitor()
    monitor.load_state_dict({"training_time_s": 100.0})  # resuming: earlier sessions count
    assert monitor.training_time_s == 100.0 and monitor.state_dict() == {"training_time_s": 100.0}
    # After fit, Lightning restores callback states from the checkpoint it validates: ignored.
    monitor.load_state_dict({"training_time_s": 5.0})
    assert monitor.training_time_s == 100.0
    with pytest.raises(ValueError, match="every_n_steps"):
        SpeedMonitor(every_n_steps=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_peak_memory_is_logged_on_cuda(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="tb", version="run")
    trainer = pl.Trainer(max_epochs=1, logger=logger, callbacks=[SpeedMonitor()], enable_checkpointing=False,
                         accelerator="cuda", devices=1, enable_progress_bar=False, log_every_n_steps=2)
    trainer.fit(Tiny(), DataLoader(SlowData(), batch_size=3, collate_fn=collate))
    peaks = [e.value for e in scalars(logger).Scalars("speed/gpu_peak_memory_gib")]
    assert peaks and all(0 < peak < 1 for peak in peaks)
