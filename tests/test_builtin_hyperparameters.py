"""SageMaker's built-in Object Detection hyperparameters and metric names, mapped onto beedet.

The documentation's own example set (the built-in algorithm's VOC example) trains here unedited, as a
SageMaker job; every documented name maps onto the real composed config or says why it has no
effect; values beedet cannot honour are refused naming them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import compose_config, run_script

from beedet.sagemaker.builtin_hyperparameters import (
    BUILTIN_HYPERPARAMETERS,
    BuiltinHyperparameterError,
    translate,
)
from beedet.sagemaker.hyperparameters import HyperparameterError
from beedet.sagemaker.metrics import BUILTIN_VALIDATION_METRICS, METRIC_DEFINITIONS, format_metric_line
from beedet.sagemaker.training_job import hyperparameter_overrides, local_arguments

# The built-in algorithm's documentation example (Object Detection, "set_hyperparameters").
DOCUMENTATION_EXAMPLE = {
    "base_network": "resnet-50", "use_pretrained_model": "1", "num_classes": "20", "mini_batch_size": "32",
    "epochs": "1", "learning_rate": "0.001", "lr_scheduler_step": "3,6", "lr_scheduler_factor": "0.1",
    "optimizer": "sgd", "momentum": "0.9", "weight_decay": "0.0005", "overlap_threshold": "0.5",
    "nms_threshold": "0.45", "image_shape": "300", "label_width": "350", "num_training_samples": "16551",
}
# One valid value for every documented name (those the example leaves out).
OTHER_VALUES = {"early_stopping": "True", "early_stopping_min_epochs": "3", "early_stopping_patience": "4",
                "early_stopping_tolerance": "0.05", "freeze_layer_pattern": "^backbone\\.trunk\\.(conv1|bn1|layer1)\\.",
                "kv_store": "dist_sync"}


def test_every_documented_name_maps_onto_the_composed_config():
    values = {**DOCUMENTATION_EXAMPLE, **OTHER_VALUES}
    assert sorted(values) == sorted(h.name for h in BUILTIN_HYPERPARAMETERS)
    overrides = hyperparameter_overrides(values)
    cfg = compose_config(overrides)
    assert cfg.model._target_ == "beedet.models.ssd.ssd_resnet" and cfg.model.depth == 50
    assert cfg.model.image_size == 300 and cfg.model.pretrained_backbone is True
    # overlap_threshold=0.5 is the built-in's evaluation IoU (beedet's validation:mAP is AP50): anchor
    # matching keeps the model config's own IoU.
    assert cfg.model.iou_thresh == compose_config(["model=ssd300_resnet50"]).model.iou_thresh
    assert cfg.model.nms_thresh == 0.45
    assert cfg.model.freeze_pattern == OTHER_VALUES["freeze_layer_pattern"]
    assert cfg.data.num_classes == 20 and cfg.data.batch_size == 32
    assert cfg.trainer.max_epochs == 1 and cfg.trainer.min_epochs == 3
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.nesterov is False
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (0.001, 0.9, 0.0005)
    # Epochs 3 and 6 of a 1-epoch run never come, as in the built-in: no milestones.
    assert cfg.scheduler._target_ == "beedet.training.schedules.warmup_multistep" and list(cfg.scheduler.milestones) == []
    assert cfg.scheduler.gamma == 0.1
    assert cfg.callbacks.early_stopping._target_ == "beedet.training.callbacks.RelativeEarlyStopping"
    assert (cfg.callbacks.early_stopping.patience, cfg.callbacks.early_stopping.relative_min_delta) == (4, 0.05)
    # On the built-in's validation:mAP (AP50), by the relative tolerance alone.
    assert (cfg.callbacks.early_stopping.monitor, cfg.callbacks.early_stopping.min_delta) == ("val/AP50", 0.0)
    assert cfg.callbacks.metric_log_lines.builtin_names is True
    # The names without a counterpart are accepted and each says so.
    notes = " ".join(translate(values, default_epochs=14).notes)
    for name in ("num_training_samples", "label_width", "kv_store", "mini_batch_size", "lr_scheduler_step"):
        assert name in notes


@pytest.mark.parametrize(("values", "expected"), [
    ({"lr_scheduler_step": "3,6", "epochs": "12"}, [0.25, 0.5]),
    ({"lr_scheduler_step": "10"}, [10 / 30]),  # the built-in's default epochs (30) when epochs is not given
    ({"lr_scheduler_step": "10", "trainer.max_epochs": "16"}, [10 / 16]),  # or beedet's, when set directly
])
def test_lr_scheduler_steps_become_fractions_of_training(values, expected):
    cfg = compose_config(hyperparameter_overrides(values))
    assert list(cfg.scheduler.milestones) == pytest.approx(expected)


def test_other_networks_and_shapes():
    assert compose_config(hyperparameter_overrides({"base_network": "vgg-16"})).model._target_.endswith("ssd300_vgg16")
    cfg = compose_config(hyperparameter_overrides({"base_network": "resnet-50", "image_shape": "512"}))
    assert cfg.model.image_size == 512 and cfg.model.extra_channels  # conf/model/ssd512_resnet50.yaml
    cfg = compose_config(hyperparameter_overrides({"base_network": "resnet-50", "image_shape": "416"}))
    assert cfg.model.image_size == 416 and cfg.model.depth == 50
    for optimizer, target in (("adam", "Adam"), ("rmsprop", "RMSprop"), ("adadelta", "Adadelta")):
        assert compose_config(hyperparameter_overrides({"optimizer": optimizer})).optimizer._target_ == f"torch.optim.{target}"


@pytest.mark.parametrize(("values", "message"), [
    ({"base_network": "resnet-101"}, "base_network='resnet-101': expected 'vgg-16' or 'resnet-50'"),
    ({"base_network": "vgg-16", "image_shape": "512"}, "image_shape=512 with base_network=vgg-16"),
    ({"image_shape": "256"}, "image_shape=256"),
    ({"optimizer": "nag"}, "optimizer='nag': expected one of sgd, adam, rmsprop, adadelta"),
    ({"image_shape": "512"}, "image_shape=512 with base_network=vgg-16 (the built-in's default)"),
    ({"mini_batch_size": "32.5"}, "mini_batch_size='32.5': expected a positive integer"),
    ({"use_pretrained_model": "yes"}, "use_pretrained_model='yes': expected 0 or 1"),
    ({"lr_scheduler_step": "6,3"}, "lr_scheduler_step='6,3'"),
    ({"kv_store": "dist_async"}, "kv_store='dist_async'"),
    ({"early_stopping_tolerance": "2", "early_stopping": "True"}, "early_stopping_tolerance='2'"),
])
def test_values_beedet_cannot_honour_are_named(values, message):
    with pytest.raises(BuiltinHyperparameterError, match=re.escape(message)):
        hyperparameter_overrides(values)


def test_names_left_out_take_the_builtins_defaults(caplog):
    """Only the names the built-in requires: its network, weights, optimizer and schedule, not beedet's."""
    with caplog.at_level("WARNING", logger="beedet.sagemaker"):
        cfg = compose_config(hyperparameter_overrides({"num_classes": "4", "num_training_samples": "100"}))
    assert cfg.model._target_.endswith("ssd300_vgg16") and cfg.model.image_size == 300
    assert cfg.model.pretrained_backbone is True and cfg.model.nms_thresh == 0.45
    assert cfg.trainer.max_epochs == 30 and cfg.data.batch_size == 32 and cfg.data.num_classes == 4
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.nesterov is False
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (0.001, 0.9, 0.0005)
    # No lr_scheduler_step: a constant lr (after beedet's warmup), factor 0.1 ready for steps.
    assert cfg.scheduler._target_ == "beedet.training.schedules.warmup_multistep" and list(cfg.scheduler.milestones) == []
    assert cfg.scheduler.gamma == 0.1
    assert "early_stopping" not in cfg.callbacks and "min_epochs" not in cfg.trainer  # early_stopping=False
    assert "the built-in's defaults for the names the job leaves out: base_network=vgg-16, use_pretrained_model=1, " \
           "epochs=30" in caplog.text
    # early_stopping=True alone brings the built-in's minimum epochs, patience and tolerance.
    cfg = compose_config(hyperparameter_overrides({"early_stopping": "True"}))
    assert cfg.trainer.min_epochs == 10 and cfg.callbacks.early_stopping.patience == 5
    assert cfg.callbacks.early_stopping.relative_min_delta == 0.0


def test_without_builtin_names_beedet_keeps_its_own_defaults():
    assert translate({"trainer.max_epochs": "3"}, default_epochs=16).overrides == []
    cfg = compose_config(hyperparameter_overrides({"trainer.max_epochs": "3"}))
    default = compose_config()
    assert cfg.model._target_ == default.model._target_ and cfg.optimizer._target_ == default.optimizer._target_
    assert cfg.scheduler._target_ == default.scheduler._target_ and cfg.trainer.max_epochs == 3
    # optimizer is beedet's config group too: alone (a beedet job's optimizer=sgd) it brings no other default.
    cfg = compose_config(hyperparameter_overrides({"optimizer": "sgd", "trainer.max_epochs": "3"}))
    assert cfg.model._target_ == default.model._target_ and cfg.optimizer._target_ == "torch.optim.SGD"
    assert cfg.scheduler._target_ == default.scheduler._target_


def test_beedet_keys_and_experiments_set_directly_win_over_the_defaults():
    cfg = compose_config(hyperparameter_overrides({"num_classes": "4", "trainer.max_epochs": "5", "model": "ssd300_resnet18",
                                                   "optimizer.lr": "0.02", "data.batch_size": "8"}))
    assert cfg.trainer.max_epochs == 5 and cfg.data.batch_size == 8  # no "set twice": a default yields
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.lr == 0.02
    # A model chosen by key keeps its own size and weights switch.
    assert cfg.model.depth == 18 and cfg.model.pretrained_backbone is False
    assert cfg.model.nms_thresh == 0.45 and cfg.optimizer.momentum == 0.9  # defaults no beedet key sets still apply
    # With an experiment, its recipe fills the names left out.
    overrides = hyperparameter_overrides({"num_classes": "4", "experiment": "honeybee_ssd300_resnet50"})
    cfg, recipe = compose_config(overrides), compose_config(["+experiment=honeybee_ssd300_resnet50"])
    assert (cfg.optimizer.lr, cfg.trainer.max_epochs, cfg.data.batch_size) == (recipe.optimizer.lr, recipe.trainer.max_epochs, recipe.data.batch_size)
    assert cfg.data.num_classes == 4


def test_momentum_and_weight_decay_act_only_where_the_builtin_applies_them(caplog):
    """The built-in: momentum "for sgd, ignored for other optimizers"; weight decay "for sgd and
    rmsprop, ignored for other optimizers". MXNet's AdaDelta has no learning rate."""
    values = {"optimizer": "adam", "momentum": "0.8", "weight_decay": "0.01"}
    with caplog.at_level("WARNING", logger="beedet.sagemaker"):
        cfg = compose_config(hyperparameter_overrides(values))
    assert cfg.optimizer._target_ == "torch.optim.Adam" and "momentum" not in cfg.optimizer
    assert cfg.optimizer.weight_decay == 0.0
    assert "momentum=0.8 has no effect with optimizer=adam" in caplog.text
    assert "weight_decay=0.01 has no effect with optimizer=adam" in caplog.text
    cfg = compose_config(hyperparameter_overrides({"optimizer": "rmsprop", "momentum": "0.8", "weight_decay": "0.01"}))
    assert (cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (0.0, 0.01)
    cfg = compose_config(hyperparameter_overrides({"optimizer": "sgd", "momentum": "0.8", "weight_decay": "0.01"}))
    assert (cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (0.8, 0.01)
    translation = translate({"optimizer": "adadelta", "learning_rate": "0.1", "lr_scheduler_step": "3"}, default_epochs=16)
    cfg = compose_config(hyperparameter_overrides({"optimizer": "adadelta", "learning_rate": "0.1"}))
    assert cfg.optimizer._target_ == "torch.optim.Adadelta" and cfg.optimizer.lr == 1.0 and cfg.optimizer.weight_decay == 0.0
    assert "scheduler.milestones=[]" in translation.overrides
    assert any("learning_rate=0.1 has no effect with optimizer=adadelta" in n for n in translation.notes)


@pytest.mark.parametrize(("values", "message"), [
    ({"learning_rate": "0"}, "learning_rate='0': expected a number in (0, 1]"),
    ({"learning_rate": "1.5"}, "learning_rate='1.5': expected a number in (0, 1]"),
    ({"lr_scheduler_factor": "1"}, "lr_scheduler_factor='1': expected a number in (0, 1)"),
    ({"weight_decay": "0"}, "weight_decay='0': expected a number in (0, 1)"),
    ({"weight_decay": "1"}, "weight_decay='1': expected a number in (0, 1)"),
    ({"momentum": "0"}, "momentum='0': expected a number in (0, 1]"),
    ({"nms_threshold": "1.2"}, "nms_threshold='1.2': expected a number in (0, 1]"),
    ({"early_stopping_patience": "0", "early_stopping": "True"}, "early_stopping_patience='0': expected a positive integer"),
])
def test_the_builtins_ranges_are_refused_naming_the_hyperparameter(values, message):
    with pytest.raises(BuiltinHyperparameterError, match=re.escape(message)):
        hyperparameter_overrides(values)


def test_the_ranges_upper_bounds_are_the_builtins():
    cfg = compose_config(hyperparameter_overrides({"learning_rate": "1", "momentum": "1", "lr_scheduler_factor": "0.5"}))
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.scheduler.gamma) == (1.0, 1.0, 0.5)


def test_overlap_threshold_is_the_evaluation_iou_of_validation_map():
    """The built-in's overlap_threshold is the IoU at which its validation:mAP counts a detection;
    beedet's validation:mAP is AP50 (beedet.sagemaker.metrics), so 0.5 maps onto nothing."""
    plain = translate({"num_classes": "4"}, default_epochs=16).overrides
    assert translate({"num_classes": "4", "overlap_threshold": "0.5"}, default_epochs=16).overrides == plain
    assert not any("iou_thresh" in o for o in plain)
    assert BUILTIN_VALIDATION_METRICS["validation:mAP"] == "val/AP50"
    with pytest.raises(BuiltinHyperparameterError, match=r"overlap_threshold='0.75': it is the IoU at which the "
                       r"built-in's validation:mAP counts a detection, and beedet reports validation:mAP at IoU 0.5"):
        hyperparameter_overrides({"overlap_threshold": "0.75"})


def test_a_job_that_cannot_get_the_vgg16_weights_stops_before_training(tmp_path, monkeypatch):
    """The built-in's defaults ask for ImageNet VGG-16 weights. Offline with an empty hub cache, the
    network build (before any training step) stops, naming the file and the ways to supply it."""
    import urllib.error

    from torchvision.models import VGG16_Weights

    from beedet.assembly import build_network
    from beedet.models.backbones import PretrainedWeightsError

    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)
    cfg = compose_config(hyperparameter_overrides({"num_classes": "4", "num_training_samples": "100"}))
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        with pytest.raises(Exception) as stopped:  # Hydra's InstantiationException, raised from it
            build_network(cfg.model, num_classes=4)
    finally:
        torch.hub.set_dir(previous)
    cause = stopped.value
    while cause is not None and not isinstance(cause, PretrainedWeightsError):
        cause = cause.__cause__
    assert cause is not None, repr(stopped.value)
    message = str(cause)
    assert Path(VGG16_Weights.IMAGENET1K_FEATURES.url).name in message and str(tmp_path) in message
    assert "TORCH_HOME" in message and "network access" in message and "use_pretrained_model=0" in message


def test_a_setting_given_twice_and_a_misspelt_name_are_refused():
    with pytest.raises(HyperparameterError, match="trainer.max_epochs is set twice"):
        hyperparameter_overrides({"epochs": "3", "trainer.max_epochs": "4"})
    with pytest.raises(HyperparameterError, match="did you mean --mini_batch_size"):
        hyperparameter_overrides({"mini_batch_sise": "8"})
    with pytest.raises(SystemExit, match="did you mean --learning_rate"):
        local_arguments(["--learning_rat", "0.1"])
    # Hydra's own command lines are left alone.
    assert local_arguments(["-m", "optimizer.lr=0.001,0.003"]) == ["-m", "optimizer.lr=0.001,0.003"]


def test_the_built_in_metric_names_are_printed_and_read():
    line = format_metric_line(2, 40, {"validation:mAP": 0.61, "train:progress": 50.0, "train:cross_entropy": 1.5,
                                      "train:smooth_l1": 0.25, "val:AP50": 0.61})
    read = {d["Name"]: re.findall(d["Regex"], line) for d in METRIC_DEFINITIONS}
    assert read["validation:mAP"] == ["0.61"] and read["train:progress"] == ["50"]
    assert read["train:cross_entropy"] == ["1.5"] and read["train:smooth_l1"] == ["0.25"]
    assert read["val:mAP"] == []  # the built-in's validation:mAP is not beedet's val:mAP


def _channel(root: Path, split: str, images: int) -> Path:
    from beedet.data.synthetic import generate_split

    channel = root / "input" / "data" / ("train" if split == "train" else "validation")
    generate_split(channel, split, images, 256, 0)
    return channel


@pytest.mark.slow
def test_the_documentation_example_trains_unedited_as_a_job(tmp_path, monkeypatch):
    import torchvision

    ml = tmp_path / "opt" / "ml"
    _channel(ml, "train", 6)
    _channel(ml, "val", 4)
    (ml / "input" / "config").mkdir(parents=True)
    (ml / "input" / "config" / "inputdataconfig.json").write_text(json.dumps(
        {c: {"TrainingInputMode": "File"} for c in ("train", "validation")}))
    (ml / "input" / "config" / "hyperparameters.json").write_text(json.dumps(DOCUMENTATION_EXAMPLE))
    # use_pretrained_model=1: ImageNet ResNet-50 weights, from a hub cache this test fills (no network here).
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    torch.save(torchvision.models.resnet50().state_dict(), hub / Path(weights.url).name)
    env = {"SAGEMAKER_BASE_DIR": str(ml), "SM_HOSTS": '["algo-1"]', "SM_CURRENT_HOST": "algo-1",
           "TORCH_HOME": str(tmp_path / "torch"), "SM_TRAINING_ENV": json.dumps({"job_name": "od-example"})}

    # As the built-in container starts it: `train`, hyperparameters from hyperparameters.json.
    proc, run_dir = run_script(["train.py", "train"], tmp_path, env=env)

    log = proc.stdout + proc.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    mAP = [float(v) for v in re.findall(r"\bvalidation:mAP=([-0-9.e]+);", log)]
    assert mAP and mAP[-1] == pytest.approx(metrics["AP50"], abs=1e-6)  # the built-in's mAP is AP50
    assert re.search(r"\btrain:progress=100;", log) and re.search(r"\btrain:smooth_l1=[0-9.e-]+;", log)
    assert "num_training_samples=16551 has no effect" in log
    from beedet.assembly import load_system

    system, cfg = load_system(ml / "model" / "model.ckpt")
    assert len(system.class_names) == 20 and system.class_names[:4] == ["bee", "drone", "pollenbee", "queen"]
    assert cfg.model.depth == 50 and cfg.model.pretrained_backbone is True and cfg.data.batch_size == 32
    # Trained with the built-in's names, its endpoint answers plain application/json as the built-in's
    # did; beedet's own JSON is one Accept parameter away, and the endpoint variable can choose.
    from beedet.serving.handlers import load_detector, output_fn, predict_fn

    detector = load_detector(ml / "model" / "model.ckpt", device="cpu")
    assert detector.json_format == "builtin"
    prediction = predict_fn(np.zeros((64, 96, 3), dtype=np.uint8), detector)
    body, content_type = output_fn(prediction, "application/json")
    assert content_type == "application/json" and set(json.loads(body)) == {"prediction"}
    assert "detections" in json.loads(output_fn(prediction, "application/json;format=beedet")[0])
    monkeypatch.setenv("BEEDET_JSON_FORMAT", "beedet")
    assert load_detector(ml / "model" / "model.ckpt", device="cpu").json_format == "beedet"


def test_freeze_pattern_freezes_matching_parameters_and_refuses_mxnet_names():
    from beedet.assembly import build_network

    cfg = compose_config(["++model.freeze_pattern='^backbone\\.trunk\\.(conv1|bn1)\\.'"])
    net = build_network(cfg.model, num_classes=4)
    frozen = [n for n, p in net.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("backbone.trunk.conv1.", "backbone.trunk.bn1.")) for n in frozen)
    assert any(p.requires_grad for p in net.parameters())
    with pytest.raises(ValueError, match="matches no parameter.*start with: backbone"):
        build_network(compose_config(["++model.freeze_pattern='^(conv1_|conv2_).*'"]).model, num_classes=4)


def test_relative_early_stopping_needs_the_relative_gain():
    from beedet.training.callbacks import RelativeEarlyStopping

    stopper = RelativeEarlyStopping(monitor="val/mAP", mode="max", patience=2, min_delta=0.0, relative_min_delta=0.05)
    stopper._evaluate_stopping_criteria(torch.tensor(0.50))
    assert stopper.best_score == pytest.approx(0.50)
    stopper._evaluate_stopping_criteria(torch.tensor(0.52))  # +4 % of 0.50: not an improvement
    assert stopper.best_score == pytest.approx(0.50) and stopper.wait_count == 1
    stopper._evaluate_stopping_criteria(torch.tensor(0.53))  # +6 %
    assert stopper.best_score == pytest.approx(0.53) and stopper.wait_count == 0


def test_num_classes_below_the_data_is_refused(tmp_path):
    from helpers import TINY_SYNTHETIC

    from beedet.assembly import build_datamodule
    from beedet.data.records import DataError

    cfg = compose_config([*TINY_SYNTHETIC, "++data.num_classes=3"], run_dir=tmp_path)
    datamodule = build_datamodule(cfg.data)
    with pytest.raises(DataError, match="data.num_classes=3, but .* has 4 classes"):
        datamodule.load_labels()


def test_the_readme_table_is_the_mapping_table():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "| built-in name | beedet | built-in default | notes |" in readme
    for h in BUILTIN_HYPERPARAMETERS:
        assert f"| `{h.name}` | {h.beedet} | {h.default_cell} | {h.notes} |" in readme, h.name
