"""Test-time flips (beedet.inference.test_time_flips): views mapped back exactly, and the vote
that ranks what every view sees above what one view alone sees."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from beedet.inference.test_time_flips import TestTimeFlips, detect_with_flips, unflip_boxes, vote_views
from beedet.inference.tiling import Slicing
from beedet.training.system import DetectionModule
from helpers import compose_config
from test_tiling import oracle_detect, paint, seam_bees, _match

CLASSES = ["bee", "drone", "pollenbee", "queen"]
ALL_VIEWS = TestTimeFlips(views=("h", "v", "hv"))


@pytest.mark.parametrize("view", ["h", "v", "hv"])
def test_boxes_found_in_a_flipped_image_map_back_to_the_image(view):
    image = torch.zeros(3, 50, 80)
    image[0, 5:15, 10:30] = 1.0  # a 20x10 px bee at x 10-30, y 5-15
    image[1, 5:15, 10:30] = 0.1
    flipped = image.flip([d for axis, d in (("h", -1), ("v", -2)) if axis in view])
    (found,) = oracle_detect([flipped])
    assert unflip_boxes(found["boxes"], 80, 50, view).tolist() == [[10.0, 5.0, 30.0, 15.0]]


def test_a_mirror_symmetric_detector_gives_back_its_own_detections():
    """The painted-box oracle sees the same bees in every view: each comes back once, at its own
    box, class and score, as without flips (the sliced seam frame, all four views)."""
    boxes, labels = seam_bees()
    frame = paint(boxes, labels)
    calls = []

    def detect(images):
        calls.append(len(images))
        return oracle_detect(images)

    (found,) = detect_with_flips(detect, [frame], ALL_VIEWS)
    assert calls == [1, 1, 1, 1]  # the image, then each of its three views: the caller's batch size each
    (plain,) = oracle_detect([frame])
    order = plain["boxes"][:, 0].argsort()
    fused_order = found["boxes"][:, 0].argsort()
    assert torch.allclose(found["boxes"][fused_order], plain["boxes"][order])
    assert torch.equal(found["labels"][fused_order], plain["labels"][order])
    assert torch.allclose(found["scores"][fused_order], plain["scores"][order])


def _bee_and_an_error(image: torch.Tensor) -> dict[str, torch.Tensor]:
    """The painted bee, wherever the view puts it, at 0.6; and an error that is always at the same
    place of whatever input it is shown (a blind spot of the network, not of the scene), at 0.9."""
    (bee,) = oracle_detect([image])
    return {"boxes": torch.cat([bee["boxes"], torch.tensor([[0.0, 0.0, 20.0, 20.0]])]),
            "scores": torch.tensor([0.6, 0.9]), "labels": torch.tensor([0, 0])}


def test_the_views_vote_what_one_view_alone_sees_below_what_all_see():
    image = torch.zeros(3, 100, 100)
    image[0, 60:80, 50:90] = 1.0
    image[1, 60:80, 50:90] = 0.1
    (plain,) = [_bee_and_an_error(image)]
    assert plain["scores"].argmax() == 1  # alone, the network ranks its error first

    (found,) = detect_with_flips(lambda images: [_bee_and_an_error(i) for i in images], [image], TestTimeFlips(views=("h",)))
    # The bee: seen at its place in both views, score 0.6. The error: at x 0-20 in the input and
    # (mapped back) at x 80-100 from the mirror, each seen by one view of two: 0.9 / 2.
    assert found["boxes"][0].tolist() == pytest.approx([50.0, 60.0, 90.0, 80.0])
    assert found["scores"].tolist() == pytest.approx([0.6, 0.45, 0.45])


def test_the_fused_box_is_the_score_weighted_mean_and_classes_never_mix():
    views = [
        {"boxes": torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10]]), "scores": torch.tensor([0.8, 0.5]), "labels": torch.tensor([0, 1])},
        {"boxes": torch.tensor([[1.0, 0, 11, 10]]), "scores": torch.tensor([0.2]), "labels": torch.tensor([0])},
    ]
    found = vote_views(views, iou_thresh=0.5, max_detections=10)
    assert found["labels"].tolist() == [0, 1]
    assert found["scores"].tolist() == pytest.approx([0.5, 0.25])  # (0.8 + 0.2) / 2; 0.5 / 2
    assert found["boxes"][0].tolist() == pytest.approx([0.2, 0.0, 10.2, 10.0])  # 0.8 * x + 0.2 * (x + 1)
    assert found["boxes"][1].tolist() == [0.0, 0.0, 10.0, 10.0]


def test_a_detection_between_two_objects_lends_its_score_to_the_better_one_only():
    # A (0.9) and B (0.8) overlap at IoU 0.43: two objects. C, from the other view, overlaps both at
    # 0.67: it is A's (the better founder). Counted for both, it would raise B to (0.8 + 0.7) / 2.
    views = [
        {"boxes": torch.tensor([[0.0, 0, 10, 10], [4.0, 0, 14, 10]]), "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 0])},
        {"boxes": torch.tensor([[2.0, 0, 12, 10]]), "scores": torch.tensor([0.7]), "labels": torch.tensor([0])},
    ]
    found = vote_views(views, iou_thresh=0.55, max_detections=10)
    assert found["scores"].tolist() == pytest.approx([0.8, 0.4])
    assert found["boxes"][1].tolist() == [4.0, 0.0, 14.0, 10.0]
    assert len(vote_views(views, iou_thresh=0.55, max_detections=1)["scores"]) == 1


def test_no_detections_in_any_view_gives_none():
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    found = vote_views([empty, empty], iou_thresh=0.5, max_detections=10)
    assert found["boxes"].shape == (0, 4) and len(found["scores"]) == 0


def test_the_detection_module_flips_every_tile_and_keeps_class_ids_zero_based():
    class OracleNet(nn.Module):
        """Stands in for a torchvision SSD in eval mode: labels 1..C, 0 is background."""

        def __init__(self):
            super().__init__()
            self.inputs = 0

        def forward(self, images):
            self.inputs += len(images)
            return [{**d, "labels": d["labels"] + 1} for d in oracle_detect(images)]

    boxes, labels = seam_bees()
    net = OracleNet()
    slicing = Slicing(tile_size=300, overlap=96)
    system = DetectionModule(net, CLASSES, optimizer=torch.optim.SGD, slicing=slicing, test_time_flips=ALL_VIEWS)
    (found,) = system.detect([paint(boxes, labels)])
    _match(found, boxes, labels)
    plain = DetectionModule(OracleNet(), CLASSES, optimizer=torch.optim.SGD, slicing=slicing)
    plain.detect([paint(boxes, labels)])
    assert net.inputs == 4 * plain.net.inputs
    assert system.inference_mode == "sliced inference with test-time flips ['h', 'v', 'hv']"
    assert plain.inference_mode == "sliced inference"


@pytest.mark.parametrize("settings, key", [
    (dict(views=()), "views"), (dict(views=("h", "h")), "views"), (dict(views=("r90",)), "views"),
    (dict(views="hv"), "views"), (dict(iou_thresh=0.0), "iou_thresh"), (dict(max_detections=0), "max_detections"),
])
def test_bad_settings_are_rejected_with_the_key_name(settings, key):
    with pytest.raises(ValueError, match=f"test_time_flips.{key}"):
        TestTimeFlips(**settings)


def test_the_real_recipe_flips_at_test_time_and_tta_none_turns_it_off():
    from beedet.assembly import build_test_time_flips

    recipe = build_test_time_flips(compose_config(["+experiment=honeybee"]).get("tta"))
    assert recipe == TestTimeFlips(views=("h", "v", "hv"), iou_thresh=0.55, max_detections=400)
    assert build_test_time_flips(compose_config(["+experiment=honeybee", "tta=none"]).get("tta")) is None
    assert build_test_time_flips(compose_config([]).get("tta")) is None  # the synthetic default


@pytest.mark.slow
def test_predict_evaluate_and_serve_take_tta_from_the_checkpoint_or_the_command_line(tiny_checkpoint, caplog):
    """The session's tiny model has no test-time flips; `tta=...` on the command line of
    `beedet.predict` (evaluate.py and serving compose and pass it alike) replaces the checkpoint's,
    with a warning that the checkpoint's count threshold was chosen on the other kind of score."""
    from beedet.assembly import load_system
    from beedet.export import export_metadata

    system, _ = load_system(tiny_checkpoint)
    assert system.test_time_flips is None and system.count_threshold is not None
    for config_name in ("predict", "evaluate", "serve"):
        cfg = compose_config([f"ckpt={tiny_checkpoint}", "tta=flips", "tta.views=[h]"], config_name=config_name)
        caplog.clear()
        flipped, _ = load_system(cfg.ckpt, cfg.get("slicing"), cfg.get("tta"))
        assert flipped.test_time_flips.views == ("h",), config_name
        # An export of it says the threshold came from the views' vote (the graph is one view).
        assert export_metadata(flipped, "torchscript", "detector.pt")["checkpoint_test_time_flips"] == {"views": ["h"], "iou_thresh": 0.55}
        (warning,) = [r.getMessage() for r in caplog.records if "count threshold" in r.getMessage()]
        assert str(tiny_checkpoint) in warning and "without test-time flips" in warning and "score_threshold=" in warning
        caplog.clear()
        assert load_system(tiny_checkpoint, tta=compose_config(["tta=none"], config_name=config_name).tta)[0].test_time_flips is None
        assert not [r for r in caplog.records if "count threshold" in r.getMessage()]  # the checkpoint's own setting
