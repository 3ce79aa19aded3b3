"""pretrained_backbone=True loads ImageNet weights through torchvision's weights API from the torch
hub cache, without touching the network.

Each test writes a state dict filled with a recognisable pattern where torch hub caches the real
checkpoint (``<hub dir>/checkpoints/<basename of Weights.url>``), forbids any socket connection,
builds the network and checks the pattern arrived in the backbone. VGG-16 is not tested this way:
its ImageNet checkpoint is about 0.5 GB to write. Weights that cannot be loaded stop the build
(:class:`beedet.models.backbones.PretrainedWeightsError`), for VGG-16 too
(``tests/test_builtin_hyperparameters.py``).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torchvision.models import (
    MobileNet_V3_Large_Weights,
    ResNet18_Weights,
    WeightsEnum,
    mobilenet_v3_large,
    resnet18,
)

from beedet.models import ssd
from beedet.models.backbones import PretrainedWeightsError


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty torch hub directory, with every socket connection failing the test."""

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        yield tmp_path
    finally:
        torch.hub.set_dir(previous)


def _write_patterned_checkpoint(network: nn.Module, weights: WeightsEnum, hub: Path) -> dict[str, torch.Tensor]:
    """Fill every tensor of ``network``'s state dict with a pattern unique to that tensor (positive,
    so BatchNorm variances stay valid) and save it where torch hub caches ``weights``."""
    state = {}
    for i, (key, value) in enumerate(network.state_dict().items()):
        if value.is_floating_point():
            state[key] = 1.0 + i + torch.linspace(0.0, 0.5, value.numel()).reshape(value.shape)
        else:
            state[key] = torch.full_like(value, i)
    path = hub / "checkpoints" / Path(weights.url).name
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return state


def test_resnet_trunk_gets_imagenet_weights_from_hub_cache(offline_hub: Path) -> None:
    written = _write_patterned_checkpoint(resnet18(weights=None), ResNet18_Weights.IMAGENET1K_V1, offline_hub)

    model = ssd.ssd_resnet(4, depth=18, pretrained_backbone=True)

    trunk = model.backbone.trunk.state_dict()
    expected = {k: v for k, v in written.items() if not k.startswith(("layer4.", "fc."))}
    assert set(trunk) == set(expected)  # conv1 .. layer3, under the ResNet's own names
    for key, value in expected.items():
        torch.testing.assert_close(trunk[key], value, rtol=0, atol=0, msg=f"trunk weight {key} not loaded")
    # BatchNorm stays trainable (the documented choice), and the stride change kept the weights usable.
    assert model.backbone.trunk.bn1.weight.requires_grad
    assert model.backbone.trunk.layer3[0].conv1.stride == (1, 1)


def test_without_pretrained_backbone_nothing_is_loaded(offline_hub: Path) -> None:
    written = _write_patterned_checkpoint(resnet18(weights=None), ResNet18_Weights.IMAGENET1K_V1, offline_hub)
    model = ssd.ssd_resnet(4, depth=18, pretrained_backbone=False)
    assert not torch.equal(model.backbone.trunk.conv1.weight, written["conv1.weight"])


def test_ssdlite_backbone_gets_imagenet_weights_from_hub_cache(offline_hub: Path) -> None:
    written = _write_patterned_checkpoint(
        mobilenet_v3_large(weights=None), MobileNet_V3_Large_Weights.IMAGENET1K_V1, offline_hub
    )

    model = ssd.ssdlite320_mobilenet_v3_large(4, pretrained_backbone=True)

    # torchvision regroups MobileNet's blocks into its SSDlite extractor, so keys differ: match
    # each written feature tensor to an identical tensor in the backbone (patterns are unique).
    loaded = list(model.backbone.features.state_dict().values())
    features = {k: v for k, v in written.items() if k.startswith("features.")}
    for key, value in features.items():
        assert any(t.shape == value.shape and torch.equal(t, value) for t in loaded), f"{key} not loaded"
    assert len(loaded) == len(features)


def test_offline_without_cached_weights_stops_naming_the_ways_to_supply_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No network and nothing cached: building the network stops (before any training) with the
    file, the hub cache folder, TORCH_HOME, network access and the switch to train from scratch on
    purpose; it never trains from random weights instead."""
    import urllib.error

    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        with pytest.raises(PretrainedWeightsError) as stopped:
            ssd.ssd_resnet(4, depth=18, pretrained_backbone=True)
    finally:
        torch.hub.set_dir(previous)
    message = str(stopped.value)
    assert Path(ResNet18_Weights.IMAGENET1K_V1.url).name in message and f"{tmp_path}/checkpoints/" in message
    for way in ("TORCH_HOME", "network access", "no route to host", "model.pretrained_backbone=false"):
        assert way in message, way


def test_a_corrupt_cached_file_stops_too(offline_hub: Path) -> None:
    """A truncated download left in the cache is not random weights either: it stops, naming the file."""
    path = offline_hub / "checkpoints" / Path(ResNet18_Weights.IMAGENET1K_V1.url).name
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(PretrainedWeightsError, match=path.name):
        ssd.ssd_resnet(4, depth=18, pretrained_backbone=True)
