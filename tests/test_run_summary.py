"""What names and sums up a training run besides its metrics: the run's name in TensorBoard
(beedet.training.tensorboard_run, conf/logger/tensorboard.yaml), the hyperparameters of its HParams row
(beedet.reporting.run_report.hparams_for_logging), and report.md's best epoch and training time."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate

from beedet.reporting.run_report import hparams_for_logging, metrics_markdown
from beedet.training.tensorboard_run import run_name
from helpers import compose_config


def test_run_name_is_the_run_folder_after_the_run():
    assert run_name("synthetic", "outputs/synthetic/2025-06-01_12-00-00") == "synthetic_2025-06-01_12-00-00"
    assert run_name("bees", "/runs/bees_lr3/") == "bees_lr3"  # already named after the run


def test_tensorboard_events_go_to_a_folder_named_after_the_run(tmp_path: Path):
    run_dir = tmp_path / "outputs" / "synthetic" / "2025-06-01_12-00-00"
    logger = instantiate(compose_config([], run_dir=run_dir).logger)
    assert Path(logger.log_dir) == run_dir / "tensorboard" / "synthetic_2025-06-01_12-00-00"
    # Resuming in place (run_dir=<that folder> ckpt_path=last) keeps the name, whatever the name's value.
    resumed = instantiate(compose_config([f"run_dir={run_dir}", "ckpt_path=last"], run_dir=run_dir).logger)
    assert resumed.log_dir == logger.log_dir
    # A name of one's own replaces it.
    named = instantiate(compose_config(["logger.version=lr_sweep_3"], run_dir=run_dir).logger)
    assert Path(named.log_dir).name == "lr_sweep_3"


def test_hparams_are_the_settings_a_user_tunes_without_hydra_internals():
    cfg = compose_config(["optimizer.lr=0.003", "data.batch_size=8", "trainer.max_epochs=5"])
    choices = {"model": "ssd256_resnet_slim", "augment": "light", "optimizer": "adamw", "scheduler": "warmup_cosine",
               "data": "synthetic", "slicing": "none", "trainer": "default", "hydra/job_logging": "default",
               "hydra/launcher": "basic"}
    hparams = hparams_for_logging(cfg, choices)

    assert list(hparams)[:10] == ["model", "augment", "optimizer", "scheduler", "data", "slicing", "lr",
                                  "weight_decay", "batch_size", "max_epochs"]
    assert hparams["model"] == "ssd256_resnet_slim" and hparams["lr"] == 0.003 and hparams["batch_size"] == 8
    assert (hparams["max_epochs"], hparams["image_size"], hparams["seed"], hparams["precision"]) == (5, 256, 42, "32-true")
    assert not [key for key in hparams if "/" in key or key.startswith("_") or "hydra" in key]
    assert all(isinstance(value, (int, float, str, bool)) for value in hparams.values())
    # Without Hydra's choices (a config composed elsewhere): the classes and functions by name.
    plain = hparams_for_logging(cfg)
    assert (plain["model"], plain["optimizer"], plain["scheduler"]) == ("ssd_resnet_slim", "AdamW", "warmup_cosine")
    assert "max_time" not in plain and "max_steps" not in plain  # unset limits are left out
    timed = hparams_for_logging(compose_config(["trainer.max_time=00:00:12:00", "trainer.max_steps=500"]))
    assert (timed["max_time"], timed["max_steps"]) == ("00:00:12:00", 500)


def test_report_states_the_best_epoch_and_the_training_time():
    metrics = {"checkpoint": "/runs/x/checkpoints/best.ckpt", "best_epoch": 14, "best_step": 750,
               "training_time_s": 3723.4, "mAP": 0.5, "per_class_AP": {}, "per_class_AP50": {}}
    lines = metrics_markdown(metrics, []).splitlines()
    header = "\n".join(lines[:8])
    assert "Best epoch: 14 (counted from 0, step 750)" in header
    assert "Training time: 1 h 02 min 03 s" in header
    evaluation = metrics_markdown({**metrics, "best_epoch": None, "training_time_s": None}, [])
    assert "Best epoch" not in evaluation and "Training time" not in evaluation
