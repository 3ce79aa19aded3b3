"""The SSD builders and conf/model/*.yaml: each config builds, trains (losses) and predicts within
the image; feature maps, anchors and the head agree with each other."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection.ssd import SSD

from beedet.assembly import build_network
from beedet.models import ssd
from beedet.models.backbones import feature_map_sizes
from helpers import CONF, compose_config

NUM_CLASSES = 4
MODEL_CONFIGS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def _targets() -> list[dict[str, torch.Tensor]]:
    """One image with two bees (labels in the network's 1..C convention), one with none."""
    return [
        {"boxes": torch.tensor([[10.0, 20.0, 40.0, 35.0], [60.0, 50.0, 75.0, 80.0]]), "labels": torch.tensor([1, 4])},
        {"boxes": torch.zeros((0, 4), dtype=torch.float32), "labels": torch.zeros((0,), dtype=torch.int64)},
    ]


def test_every_builder_has_a_config() -> None:
    assert set(MODEL_CONFIGS) >= {
        "ssd256_resnet_slim",
        "ssd300_resnet18",
        "ssd300_resnet50",
        "ssd512_resnet50",
        "ssd300_vgg16",
        "ssdlite320_mobilenet_v3",
    }


# Each takes 1-8 s on 2 busy CPU cores (ResNet-50 at 512 px, 90 GFLOPs an image, is the slowest).
@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_config_builds_trains_and_predicts(name: str) -> None:
    torch.manual_seed(0)
    cfg = compose_config([f"model={name}"])
    model = build_network(cfg.model, num_classes=NUM_CLASSES)

    assert isinstance(model, SSD)
    assert ssd.input_size(model) == cfg.model.image_size
    assert model.transform.fixed_size == (cfg.model.image_size, cfg.model.image_size)
    assert model.head.classification_head.num_columns == NUM_CLASSES + 1  # + background
    assert model.proposal_matcher.high_threshold == cfg.model.iou_thresh

    # Images of two sizes, neither the input size: the network resizes internally.
    images = [torch.rand(3, 120, 160), torch.rand(3, 90, 100)]
    model.train()
    losses = model(images, _targets())
    assert set(losses) == {"bbox_regression", "classification"}
    assert all(torch.isfinite(v) and v.requires_grad for v in losses.values())

    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2
    assert sum(len(d["boxes"]) for d in detections) > 0  # an untrained net still scores over 0.01
    for image, det in zip(images, detections):
        height, width = image.shape[1:]
        boxes = det["boxes"]
        assert boxes.shape[1] == 4 and len(det["scores"]) == len(det["labels"]) == len(boxes)
        # Clipped at the input size, then scaled back in float32: allow rounding (1e-3 px).
        assert (boxes[:, :2] >= 0).all()
        assert (boxes[:, 2] <= width + 1e-3).all() and (boxes[:, 3] <= height + 1e-3).all()
        assert (boxes[:, 2:] >= boxes[:, :2]).all()  # torchvision keeps boxes clipped to zero width
        assert ((det["labels"] >= 1) & (det["labels"] <= NUM_CLASSES)).all()


def _backbone_sides(model: SSD, image_size: int) -> list[int]:
    model.eval()
    with torch.no_grad():
        maps = model.backbone(torch.zeros(1, 3, image_size, image_size)).values()
    return [m.shape[-1] for m in maps]


@pytest.mark.parametrize(
    ("image_size", "sides"), [(300, [38, 19, 10, 5, 3, 1]), (512, [64, 32, 16, 8, 4, 2, 1])]
)
def test_resnet50_feature_maps(image_size: int, sides: list[int]) -> None:
    model = ssd.ssd_resnet(NUM_CLASSES, depth=50, image_size=image_size)
    assert _backbone_sides(model, image_size) == sides
    assert model.backbone.out_channels[0] == 1024  # conv4_x of ResNet-50


def test_slim_feature_maps_and_anchor_count() -> None:
    model = ssd.ssd_resnet_slim(NUM_CLASSES)
    assert ssd.input_size(model) == 256
    assert _backbone_sides(model, 256) == [32, 16, 8, 4, 2, 1] == feature_map_sizes(256)
    assert model.backbone.out_channels == [64, 128, 128, 128, 64, 64]
    images = model.transform([torch.rand(3, 256, 256)])[0]
    anchors = model.anchor_generator(images, list(model.backbone(images.tensors).values()))
    assert anchors[0].shape == (4 * (32**2 + 16**2 + 8**2 + 4**2 + 2**2 + 1), 4)


def test_default_anchors_start_at_bee_size() -> None:
    for image_size in (256, 300, 512):
        scales = ssd.default_anchor_scales(len(feature_map_sizes(image_size)), image_size)
        assert math.isclose(scales[0] * image_size, ssd.SMALLEST_ANCHOR_PX)
        assert math.isclose(scales[-1], ssd.LARGEST_ANCHOR_SCALE)
        assert scales == sorted(scales)


def test_anchor_scales_are_used_and_checked() -> None:
    scales = [0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9]
    model = ssd.ssd_resnet_slim(1, anchor_scales=scales, aspect_ratios=[[2, 3]] * 6)
    assert model.anchor_generator.scales == scales
    assert model.anchor_generator.num_anchors_per_location() == [6] * 6
    with pytest.raises(ValueError, match="anchor_scales needs 7 values"):
        ssd.ssd_resnet_slim(1, anchor_scales=scales[:-1])
    with pytest.raises(ValueError, match="increasing"):
        ssd.ssd_resnet_slim(1, anchor_scales=scales[::-1])
    with pytest.raises(ValueError, match="one list per feature map"):
        ssd.ssd_resnet_slim(1, aspect_ratios=[[2]] * 5)


def test_wrapper_anchor_scales_replace_torchvision_defaults() -> None:
    scales = [0.05, 0.083, 0.138, 0.229, 0.381, 0.632, 1.05]
    model = ssd.ssdlite320_mobilenet_v3_large(2, anchor_scales=scales)
    assert model.anchor_generator.scales == scales
    assert model.anchor_generator.aspect_ratios == [[2, 3]] * 6  # torchvision's, matching its head


def test_builders_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="foreground"):
        ssd.ssd_resnet_slim(0)
    with pytest.raises(ValueError, match="fixed input size of 300"):
        ssd.ssd300_vgg16(1, image_size=512)
    with pytest.raises(ValueError, match="depth must be one of"):
        ssd.ssd_resnet(1, depth=101)
    with pytest.raises(ValueError, match="extra_channels has 2 entries"):
        ssd.ssd_resnet_slim(1, extra_channels=[64, 64])


def test_channels_last_changes_layout_not_values() -> None:
    torch.manual_seed(0)
    nhwc = ssd.ssd_resnet_slim(2).eval()
    nchw = ssd.ssd_resnet_slim(2, channels_last=False).eval()
    conv = nhwc.backbone.trunk.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    nchw.load_state_dict(nhwc.state_dict())
    image = [torch.rand(3, 256, 256)]
    with torch.no_grad():
        a = nhwc.head(list(nhwc.backbone(nhwc.transform(image)[0].tensors).values()))
        b = nchw.head(list(nchw.backbone(nchw.transform(image)[0].tensors).values()))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_a_feature_pyramid_keeps_the_map_sides_and_feeds_every_level_context() -> None:
    """pyramid_channels: the same maps, each with that many channels, and the stride-8 map (where
    most bees are found) now depends on the coarsest map, which it did not without the pyramid."""
    torch.manual_seed(0)
    plain = ssd.ssd_resnet_slim(NUM_CLASSES, image_size=320)
    pyramid = ssd.ssd_resnet_slim(NUM_CLASSES, image_size=320, pyramid_channels=48).eval()
    assert _backbone_sides(pyramid, 320) == _backbone_sides(plain, 320) == feature_map_sizes(320)
    assert pyramid.backbone.out_channels == [48] * len(feature_map_sizes(320))
    check = [(c.in_channels, c.out_channels) for c in pyramid.head.classification_head.module_list]
    assert all(cin == 48 for cin, _ in check)
    # Change only the last extra block (which makes the 1x1 map): the first map must change too.
    x = torch.rand(1, 3, 320, 320)
    before = pyramid.backbone(x)["0"].detach().clone()
    with torch.no_grad():
        for p in pyramid.backbone.body.extras[-1].parameters():
            p.add_(0.5)
    assert not torch.allclose(pyramid.backbone(x)["0"], before)
    with pytest.raises(ValueError, match="pyramid channels"):
        ssd.ssd_resnet_slim(NUM_CLASSES, pyramid_channels=-1)


def test_pyramid_levels_keep_the_coarse_maps_context_out_of_the_fine_ones() -> None:
    """pyramid_levels=4 at 320 px: the 40, 20, 10 and 5 px maps are joined top-down, the 3x3 and
    1x1 maps (near-global views of a tile) are not, so changing the block that makes the 1x1 map
    changes that map and leaves every finer one as it was. Same sides and channels as before."""
    torch.manual_seed(0)
    net = ssd.ssd_resnet_slim(NUM_CLASSES, image_size=320, pyramid_channels=48, pyramid_levels=4).eval()
    assert _backbone_sides(net, 320) == feature_map_sizes(320)
    assert net.backbone.out_channels == [48] * len(feature_map_sizes(320))
    x = torch.rand(1, 3, 320, 320)
    with torch.no_grad():
        before = {k: v.clone() for k, v in net.backbone(x).items()}
        for p in net.backbone.body.extras[-1].parameters():
            p.add_(0.5)
        after = net.backbone(x)
    changed = [k for k in before if not torch.allclose(before[k], after[k])]
    assert changed == ["5"]
    # Changing the block that makes the 5x5 map (joined) reaches every finer map, not the coarser.
    with torch.no_grad():
        for p in net.backbone.body.extras[-3].parameters():
            p.add_(0.5)
        again = net.backbone(x)
    assert [k for k in after if not torch.allclose(after[k], again[k])] == ["0", "1", "2", "3", "4", "5"]
    with pytest.raises(ValueError, match="pyramid levels"):
        ssd.ssd_resnet_slim(NUM_CLASSES, pyramid_channels=48, pyramid_levels=7)
    with pytest.raises(ValueError, match="pyramid_levels needs pyramid_channels"):
        ssd.ssd_resnet_slim(NUM_CLASSES, pyramid_levels=4)
