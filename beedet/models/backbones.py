"""Feature extractors for SSD: a convolutional trunk that yields the first (largest) feature map at
stride 8, then extra blocks (or, in the slim network, residual stages) that halve the map down to 1x1.

Contract with ``torchvision.models.detection.ssd.SSD``: ``SSDFeatureExtractor(images)`` takes a
float batch (B, 3, S, S), already normalised by the SSD's transform, and returns an
``OrderedDict[str, Tensor]`` of feature maps ``"0", "1", ...``, largest first, where map ``k`` is
(B, ``out_channels[k]``, ``sizes[k]``, ``sizes[k]``) with ``sizes = feature_map_sizes(S)``.

Why stride 8: bees are small at the network's input size (synthetic bee boxes are 10-35 px at
256 px; real 1920x1080 frames squashed to 300 px leave bees 3-15 px wide). A stride-8 first map
places an anchor every 8 px; a stride-16 map (what an unmodified ResNet gives at conv4_x) leaves
most small, crowded bees without a well-centred anchor.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch.nn as nn
from torch import Tensor
from torch.hub import get_dir, set_dir
from torchvision.models import WeightsEnum
from torchvision.models import (
    ResNet18_Weights,
    ResNet34_Weights,
    ResNet50_Weights,
    resnet18,
    resnet34,
    resnet50,
)
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import FeaturePyramidNetwork

# The trunk (resnet or slim) downsamples by this factor before the first feature map.
TRUNK_STRIDE = 8

# ResNet depth -> (constructor, ImageNet weights, channels of conv4_x = ``layer3``).
# IMAGENET1K_V1 is the classic torchvision recipe that NVIDIA's SSD300 v1.1 also starts from.
RESNETS = {
    18: (resnet18, ResNet18_Weights.IMAGENET1K_V1, 256),
    34: (resnet34, ResNet34_Weights.IMAGENET1K_V1, 256),
    50: (resnet50, ResNet50_Weights.IMAGENET1K_V1, 1024),
}


class SSDFeatureExtractor(nn.Module):
    """``trunk`` gives the first feature map; each block of ``extras`` turns the previous map into
    the next, smaller one. See the module docstring for the output contract."""

    def __init__(self, trunk: nn.Module, extras: nn.ModuleList, out_channels: list[int]) -> None:
        super().__init__()
        if len(out_channels) != len(extras) + 1:
            raise ValueError(f"{len(out_channels)} out_channels for 1 trunk map + {len(extras)} extra blocks")
        self.trunk = trunk
        self.extras = extras
        # torchvision's SSD reads this attribute to size its head.
        self.out_channels = list(out_channels)

    # Annotated and built the way TorchScript accepts (torchvision's VGG extractor does the same),
    # so that beedet.export can script the network.
    def forward(self, images: Tensor) -> dict[str, Tensor]:
        x = self.trunk(images)
        maps = [x]
        for block in self.extras:
            x = block(x)
            maps.append(x)
        return OrderedDict([(str(i), m) for i, m in enumerate(maps)])


class PyramidFeatures(nn.Module):
    """An :class:`SSDFeatureExtractor` whose maps are refined top-down by torchvision's
    ``FeaturePyramidNetwork`` (Lin et al. 2017): each map gets the upsampled context of the coarser
    ones, then a 3x3 conv, and every map comes out with ``channels`` channels. The same output
    contract (same sides, ``out_channels`` = ``channels`` per map). Why: in a small from-scratch
    trunk the stride-8 map, where most bees are found, has seen only a few convolutions; the
    pyramid gives it what the deeper maps learnt about comb, crowds and shadows.

    ``levels``: how many of the largest maps the pyramid joins (None: all). The coarser maps then
    reach the head each through its own 1x1 and 3x3 conv (a pyramid level without the top-down
    path), so they give no context to the finer maps. Why: the last map is 1x1, one vector for the
    whole input. Added to every position of every finer map, it lets the network learn what kind
    of *scene* an input is (which of a few hundred training photos it resembles) and call every bee
    in it by that scene's class. A from-scratch network on 496 photos learnt exactly that: a
    hive-frame tile whose 1x1 vector happened to resemble a pollen photo came out as 100-150
    "pollen bees", and moving the tile 4 px changed it (bench/README.md, the 176k-image long run).
    """

    def __init__(self, extractor: SSDFeatureExtractor, channels: int, levels: int | None = None) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"pyramid channels must be >= 1, got {channels}")
        in_channels = list(extractor.out_channels)
        if levels is None:
            levels = len(in_channels)
        if not 1 <= levels <= len(in_channels):
            raise ValueError(f"pyramid levels must be between 1 and the {len(in_channels)} maps, got {levels}")
        self.body = extractor
        self.fpn = FeaturePyramidNetwork(in_channels[:levels], channels)
        # The same two convs an FPN level has (lateral 1x1, output 3x3), without the top-down sum.
        self.coarse = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, channels, kernel_size=1), nn.Conv2d(channels, channels, kernel_size=3, padding=1))
            for c in in_channels[levels:]
        )
        self.levels = levels
        self.out_channels = [channels] * len(in_channels)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        maps = self.body(images)
        names = list(maps)
        fine = self.fpn(OrderedDict((name, maps[name]) for name in names[: self.levels]))
        for name, conv in zip(names[self.levels :], self.coarse):
            fine[name] = conv(maps[name])
        return fine


def feature_map_sizes(image_size: int) -> list[int]:
    """Side of every feature map for a square input of ``image_size`` px, largest first.

    The trunk gives ceil(S / 8); each extra block then roughly halves the side down to 1
    (300 px -> 38, 19, 10, 5, 3, 1 as in SSD300; 512 px -> 64, 32, 16, 8, 4, 2, 1 as in SSD512;
    256 px -> 32, 16, 8, 4, 2, 1).
    """
    return _sides_down_to_one(math.ceil(image_size / TRUNK_STRIDE))


def _sides_down_to_one(first_size: int) -> list[int]:
    sizes = [first_size]
    while sizes[-1] > 1:
        sizes.append(_extra_block_output_size(sizes[-1]))
    return sizes


def _extra_block_output_size(size: int) -> int:
    # A 3x3 map becomes 1x1 with an unpadded 3x3 conv (SSD300's last block); every other map goes
    # through a padded stride-2 3x3 conv: ceil(size / 2).
    return 1 if size == 3 else (size + 1) // 2


def extra_block(in_channels: int, out_channels: int, in_size: int) -> nn.Sequential:
    """One SSD extra block: 1x1 conv to ``out_channels // 2``, then a 3x3 conv that shrinks the map
    (stride 2 and padding 1, or unpadded for a 3x3 input), each followed by BatchNorm and ReLU,
    as in NVIDIA's SSD300 v1.1."""
    mid = out_channels // 2
    shrink = (
        nn.Conv2d(mid, out_channels, kernel_size=3, bias=False)
        if in_size == 3
        else nn.Conv2d(mid, out_channels, kernel_size=3, stride=2, padding=1, bias=False)
    )
    return nn.Sequential(
        nn.Conv2d(in_channels, mid, kernel_size=1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        shrink,
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def extra_blocks(in_channels: int, first_size: int, extra_channels: list[int]) -> nn.ModuleList:
    """The extra blocks after a trunk whose map is ``first_size`` px wide, down to 1x1.

    ``extra_channels[i]`` is the output width of block ``i``; there must be one per extra map.
    """
    sizes = _sides_down_to_one(first_size)
    if len(extra_channels) != len(sizes) - 1:
        raise ValueError(
            f"extra_channels has {len(extra_channels)} entries, but a {first_size}x{first_size} first map "
            f"needs {len(sizes) - 1} extra blocks to reach 1x1 (map sides {sizes})"
        )
    blocks = nn.ModuleList()
    channels = [in_channels, *extra_channels]
    for i, size in enumerate(sizes[:-1]):
        blocks.append(extra_block(channels[i], channels[i + 1], size))
    return blocks


def default_extra_channels(num_blocks: int, wide: int, narrow: int) -> list[int]:
    """The first two extra blocks ``wide``, the rest ``narrow`` (SSD300's 512, 512, 256, 256, 256)."""
    return [wide if i < 2 else narrow for i in range(num_blocks)]


log = logging.getLogger(__name__)


class PretrainedWeightsError(RuntimeError):
    """``pretrained_backbone`` asked for ImageNet weights that cannot be loaded; the message says
    which file and the ways to supply it. Raised while the network is built, before training."""


# Suffixes of a weight file in a pretrained weights directory (torch hub's files are .pth).
WEIGHT_FILE_SUFFIXES = (".pth", ".pt")
# The directory :func:`weights_from_directory` supplies weights from, while it is active.
_supplied_dir: Path | None = None


@contextmanager
def weights_from_directory(directory: str | os.PathLike) -> Iterator[None]:
    """While active, :func:`imagenet_state_dict` takes ImageNet weights from ``directory`` (a
    SageMaker job's ``pretrained`` channel, beedet's ``pretrained_dir``), never from torch hub's
    cache or the network. The file for ``weights`` is the one named as torchvision names it (the
    basename of ``weights.url``, e.g. ``resnet50-0676ba61.pth``, as torch hub caches it), else the
    directory's only ``.pth`` / ``.pt`` file (:data:`WEIGHT_FILE_SUFFIXES`), whatever its name.
    Meanwhile torch hub's directory is a fresh temporary one, where that file is linked under
    torchvision's name: the builders that read the hub cache themselves (torchvision's VGG-16 and
    MobileNet, after :func:`imagenet_state_dict` has checked the file) find it there too. The hub
    directory is restored on exit."""
    global _supplied_dir
    previous_hub, previous_dir = get_dir(), _supplied_dir
    with tempfile.TemporaryDirectory(prefix="beedet-hub-") as hub:
        set_dir(hub)
        _supplied_dir = Path(directory)
        try:
            yield
        finally:
            set_dir(previous_hub)
            _supplied_dir = previous_dir


def imagenet_state_dict(weights: WeightsEnum) -> dict[str, Tensor]:
    """The ImageNet state dict of ``weights`` through torchvision's weights API: from the torch hub
    cache, downloading it there first when missing (inside :func:`weights_from_directory`: from
    that directory only). Read with ``weights_only=True``: tensors and plain data, no pickled code.
    Without a network and no cached file (or with an unreadable one) it raises
    :class:`PretrainedWeightsError` naming the file and the ways to supply it: a run that asked for
    a pretrained base never trains from random weights instead."""
    filename = weights.url.rsplit("/", 1)[-1]
    if _supplied_dir is None:
        cache = where = f"{get_dir()}/checkpoints/"
    else:
        cache, where = None, str(_supply_from_directory(weights, filename, _supplied_dir))
    try:
        return weights.get_state_dict(progress=True, weights_only=True)
    # URLError, socket errors and unreadable files are OSErrors; a truncated or corrupt cached
    # file fails in torch.load (RuntimeError, EOFError, UnpicklingError: also a file holding
    # pickled objects other than tensors, which weights_only refuses).
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise PretrainedWeightsError(
            f"{_asks_for(weights, filename)}, which could not be loaded from {where}: {err}. "
            f"{_ways_to_supply(weights, filename, cache)}"
        ) from err


def _supply_from_directory(weights: WeightsEnum, filename: str, directory: Path) -> Path:
    """Link ``directory``'s file for ``weights`` (see :func:`weights_from_directory`) into torch
    hub's cache under ``filename``; returns the file. Raises :class:`PretrainedWeightsError` when
    the directory holds none, or several candidates."""
    named = directory / filename
    candidates = []
    if directory.is_dir():
        candidates = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in WEIGHT_FILE_SUFFIXES)
    if named.is_file():
        found = named
    elif len(candidates) == 1:
        found = candidates[0]
    else:
        holds = ("several weight files (" + ", ".join(p.name for p in candidates) + ")" if candidates
                 else "no .pth or .pt file" if directory.is_dir() else "nothing (it is not a directory)")
        raise PretrainedWeightsError(
            f"{_asks_for(weights, filename)}; the pretrained weights directory {directory} (pretrained_dir: a "
            f"SageMaker job's `pretrained` channel) holds {holds}: put {filename} there, under that name or as its "
            f"only .pth/.pt file. {_ways_to_supply(weights, filename, None)}")
    link = Path(get_dir()) / "checkpoints" / filename
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(found.resolve())
    log.info("ImageNet weights %s from %s (pretrained_dir), not torch hub", weights, found)
    return found


def _asks_for(weights: WeightsEnum, filename: str) -> str:
    return (f"model.pretrained_backbone=true (the built-in's use_pretrained_model=1) needs the ImageNet weights "
            f"{weights} ({filename})")


def _ways_to_supply(weights: WeightsEnum, filename: str, cache: str | None) -> str:
    """The ways to supply ``weights``: the SageMaker channels, ``cache`` (torch hub's checkpoints
    folder; None: inside :func:`weights_from_directory`, whose temporary hub is no place for it),
    the network, and the switch to train from random weights on purpose."""
    cache = f"{cache}, torch hub's cache" if cache else "torch hub's cache when no pretrained_dir is given"
    return (f"Supply them in one of these ways: give a SageMaker job a `pretrained` channel holding {filename} "
            f"(+channels.pretrained=s3://.../ with the launcher; outside a job, pretrained_dir=DIR); put {filename} in "
            f"{cache} (TORCH_HOME moves it: $TORCH_HOME/hub/checkpoints/); or run with network access so "
            f"that torch hub downloads it from {weights.url}. Or start from an earlier beedet model instead: a `model` "
            f"channel holding its model.tar.gz (outside a job, init_checkpoint=PATH). To train from random weights on "
            f"purpose, set model.pretrained_backbone=false (use_pretrained_model=0).")


def resnet_trunk(depth: int, pretrained: bool) -> tuple[nn.Sequential, int]:
    """A torchvision ResNet through conv4_x (``layer3``) with that stage's stride set to 1, so its
    output is at stride 8 (38x38 at 300 px). Returns the trunk and its output channels.

    With ``pretrained`` the ImageNet weights (``RESNETS[depth][1]``) are loaded through
    torchvision's weights API, i.e. from the torch hub cache (``$TORCH_HOME/hub/checkpoints``),
    downloading them there first when a network is available. The layer names (``conv1``, ``bn1``,
    ``layer1``...) are the ResNet's, so the trunk's state dict keys match the ImageNet checkpoint.
    BatchNorm layers stay ordinary, trainable ``BatchNorm2d`` (as in NVIDIA's SSD300): fine at the
    batch sizes beedet trains with (16+); with very small batches consider freezing them.
    """
    if depth not in RESNETS:
        raise ValueError(f"ResNet depth must be one of {sorted(RESNETS)}, got {depth}")
    constructor, weights, channels = RESNETS[depth]
    resnet = constructor(weights=None)
    if pretrained:
        resnet.load_state_dict(imagenet_state_dict(weights))
    _remove_stride(resnet.layer3[0])
    trunk = nn.Sequential(
        OrderedDict(
            conv1=resnet.conv1,
            bn1=resnet.bn1,
            relu=resnet.relu,
            maxpool=resnet.maxpool,
            layer1=resnet.layer1,
            layer2=resnet.layer2,
            layer3=resnet.layer3,
        )
    )
    return trunk, channels


def _remove_stride(block: BasicBlock | Bottleneck) -> None:
    # BasicBlock strides in conv1, torchvision's Bottleneck (ResNet v1.5) in conv2; the shortcut
    # strides in downsample[0]. Setting all three to 1 keeps the pretrained weights valid.
    block.conv1.stride = (1, 1)
    block.conv2.stride = (1, 1)
    if block.downsample is not None:
        block.downsample[0].stride = (1, 1)


def slim_resnet(widths: Sequence[int], blocks: Sequence[int]) -> tuple[nn.Sequential, nn.ModuleList, list[int]]:
    """A small ResNet-style network of torchvision ``BasicBlock``s for training from scratch on a CPU.

    ``widths[0]`` is the stem (3x3 conv, stride 2); ``widths[1:]`` are stages of ``blocks[i]``
    blocks, each starting with a stride-2 block. The stem and the first two stages form the trunk,
    whose output is the stride-8 first feature map; every later stage gives one more feature map
    (stride 16, 32, ...). Returns ``(trunk, later_stages, channels of each map)``: the later stages
    take the place of the first extra blocks.

    Width goes where maps are small: at 256 px a 32-to-32-channel 3x3 conv costs 38 M multiply-adds
    on the 64x64 stride-4 map, 9 M on the 32x32 stride-8 one.
    """
    if len(widths) < 3 or len(blocks) != len(widths) - 1 or min(blocks) < 1:
        raise ValueError(
            f"widths must be (stem, stage1, stage2, ...) with at least two stages and blocks one count "
            f"(>= 1) per stage; got widths={tuple(widths)}, blocks={tuple(blocks)}"
        )
    stem = OrderedDict(
        conv1=nn.Conv2d(3, widths[0], kernel_size=3, stride=2, padding=1, bias=False),
        bn1=nn.BatchNorm2d(widths[0]),
        relu=nn.ReLU(inplace=True),
    )
    stages = [_basic_stage(i, o, n, stride=2) for i, o, n in zip(widths[:-1], widths[1:], blocks)]
    trunk = nn.Sequential(OrderedDict(**stem, layer1=stages[0], layer2=stages[1]))
    later = nn.ModuleList(stages[2:])
    _init_like_torchvision_resnet(trunk)
    _init_like_torchvision_resnet(later)
    return trunk, later, list(widths[2:])


def _basic_stage(in_channels: int, out_channels: int, count: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(out_channels),
        )
    first = BasicBlock(in_channels, out_channels, stride=stride, downsample=downsample)
    return nn.Sequential(first, *(BasicBlock(out_channels, out_channels) for _ in range(count - 1)))


def _init_like_torchvision_resnet(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
