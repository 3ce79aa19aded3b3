"""The model-summary command: a layer-by-layer summary of a detection network, like Keras'
``model.summary()``.

    python -m beedet.model_summary                               # the default model (conf/train.yaml)
    python -m beedet.model_summary model=ssd300_resnet50 num_classes=4 depth=4
    python -m beedet.model_summary model=ssd512_resnet50 model.anchor_scales=[...]

``num_classes`` (foreground classes, default 4 as in the synthetic and honeybee data) and
``depth`` (how many levels of the module tree to list, default 3) belong to this command; every
other argument is a Hydra override of the real ``conf/`` (composed with Hydra's compose API, so no
output directory is created). The network is built by ``beedet.assembly.build_network`` exactly
as ``train.py`` builds it, then one blank image at its input size is run through it.

It lives above ``beedet.models`` because it composes a whole config and builds the network through
``beedet.assembly``; ``beedet.models`` itself imports nothing above it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping

import torch
import torch.nn as nn
from torch import Tensor
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSD

from beedet.assembly import build_network
from beedet.compose import compose_train_config, split_int_options
from beedet.models.ssd import input_size
from beedet.reporting.text_table import text_table

DEFAULT_NUM_CLASSES = 4
DEFAULT_DEPTH = 3
USAGE = __doc__


def summarize(model: nn.Module, image_size: int, max_depth: int = DEFAULT_DEPTH) -> str:
    """The summary table of ``model`` for one blank ``image_size`` x ``image_size`` image.

    One row per module down to ``max_depth`` levels of the module tree (module path, type, output
    shape of its first call, parameters; "--" for a module that was not called). The parameter
    column counts each parameter once: a row whose children are listed shows only the
    parameters it holds itself, a row at the depth limit everything below it, so the column sums
    to the total. For an ``SSD`` (fed ``[image (3, S, S)]``) the feature maps fed to the head and
    the anchors follow; any other module is fed a batch (1, 3, S, S).
    """
    if max_depth < 1:
        raise ValueError(f"max_depth must be >= 1, got {max_depth}")
    shown = [(name, module) for name, module in model.named_modules() if name and name.count(".") < max_depth]
    outputs, head_inputs, anchors = _run_once(model, image_size, shown)

    rows = [(f"{name} ({type(module).__name__})", outputs.get(name, "--"), _row_params(module, name, max_depth))
            for name, module in shown]
    own = sum(p.numel() for p in model.parameters(recurse=False))
    if own:
        rows.insert(0, (f"(top level) ({type(model).__name__})", "--", own))

    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lines = text_table(["Layer (type)", "Output shape", "Param #"], [(a, b, _count(c)) for a, b, c in rows], right=(2,))
    lines += [
        f"Total params: {total:,}",
        f"Trainable params: {trainable:,}",
        f"Non-trainable params: {total - trainable:,}",
        f"Input: 3 x {image_size} x {image_size}",
    ]
    if isinstance(model, SSD):
        lines += ["", *_feature_map_lines(model, image_size, head_inputs, anchors)]
    return "\n".join(lines)


def _run_once(
    model: nn.Module, image_size: int, shown: list[tuple[str, nn.Module]]
) -> tuple[dict[str, str], list[Tensor], Tensor | None]:
    """Run one blank image in eval mode with hooks; return output shapes by module path, the SSD
    head's input feature maps and the anchors of the image."""
    outputs: dict[str, str] = {}
    captured: dict[str, object] = {}

    def record(name: str):
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            outputs.setdefault(name, _describe(output))

        return hook

    # Hooks must return None: a returned value would replace the module's input or output.
    def keep_head_input(_module: nn.Module, args: tuple) -> None:
        captured.setdefault("maps", args[0])

    def keep_anchors(_module: nn.Module, _inputs: object, output: list[Tensor]) -> None:
        captured.setdefault("anchors", output[0])

    handles = [module.register_forward_hook(record(name)) for name, module in shown]
    if isinstance(model, SSD):
        handles.append(model.head.register_forward_pre_hook(keep_head_input))
        handles.append(model.anchor_generator.register_forward_hook(keep_anchors))
    # Restore every module's own mode afterwards: some may be frozen in eval mode on purpose.
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            if isinstance(model, SSD):
                model([torch.zeros(3, image_size, image_size)])
            else:
                model(torch.zeros(1, 3, image_size, image_size))
    finally:
        for module, training in modes.items():
            module.training = training
        for handle in handles:
            handle.remove()
    return outputs, list(captured.get("maps", [])), captured.get("anchors")


def _row_params(module: nn.Module, name: str, max_depth: int) -> int | None:
    children_listed = name.count(".") + 1 < max_depth and any(True for _ in module.children())
    count = sum(p.numel() for p in module.parameters(recurse=not children_listed))
    return None if children_listed and count == 0 else count


def _describe(output: object) -> str:
    shapes = [str(list(t.shape)) for t in _tensors(output)]
    if not shapes:
        return "--"
    if len(shapes) <= 2:
        return ", ".join(shapes)
    return f"{shapes[0]} ... {shapes[-1]} ({len(shapes)} tensors)"


def _tensors(output: object) -> list[Tensor]:
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, ImageList):
        return [output.tensors]
    if isinstance(output, Mapping):
        return [t for value in output.values() for t in _tensors(value)]
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _tensors(item)]
    return []


def _feature_map_lines(model: SSD, image_size: int, maps: list[Tensor], anchors: Tensor | None) -> list[str]:
    generator = model.anchor_generator
    per_location = generator.num_anchors_per_location()
    rows = []
    for k, (fmap, n) in enumerate(zip(maps, per_location)):
        _, channels, height, width = fmap.shape
        rows.append(
            (
                str(k),
                f"{channels} x {height} x {width}",
                f"{image_size / height:.1f}",
                str(n),
                f"{height * width * n:,}",
                _anchor_sides(generator, k, image_size),
            )
        )
    expected = sum(fmap.shape[-2] * fmap.shape[-1] * n for fmap, n in zip(maps, per_location))
    if anchors is not None and anchors.shape[0] != expected:
        raise RuntimeError(f"the anchor generator made {anchors.shape[0]} anchors, the head predicts for {expected}")
    header = ["Map", "Shape (C x H x W)", "Cell px", "Anchors/cell", "Anchors", "Square anchor sides px"]
    return [
        f"Feature maps fed to the SSD head ({len(maps)}):",
        *text_table(header, rows, right=(2, 3, 4)),
        f"Total anchors: {expected:,}",
    ]


def _anchor_sides(generator: nn.Module, level: int, image_size: int) -> str:
    if not isinstance(generator, DefaultBoxGenerator):
        return "--"
    s, s_next = generator.scales[level], generator.scales[level + 1]
    return f"{s * image_size:.0f}, {math.sqrt(s * s_next) * image_size:.0f}"


def _count(value: int | None) -> str:
    return "--" if value is None else f"{value:,}"


def main(argv: list[str] | None = None) -> None:
    """Parse ``num_classes=`` and ``depth=``, pass everything else to Hydra, print the summary."""
    args = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return
    options, overrides = split_int_options(args, {"num_classes": DEFAULT_NUM_CLASSES, "depth": DEFAULT_DEPTH})
    cfg = compose_train_config(overrides)
    model = build_network(cfg.model, options["num_classes"])
    print(f"{cfg.model._target_}  num_classes={options['num_classes']} (+1 background inside the network)")
    print(summarize(model, input_size(model), max_depth=options["depth"]))


if __name__ == "__main__":
    main()
