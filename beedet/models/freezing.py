"""Freezing parameters by name: the built-in detector's ``freeze_layer_pattern``, on beedet's names."""

from __future__ import annotations

import re

from torch import nn


def freeze_matching(net: nn.Module, pattern: str) -> list[str]:
    """Stop training every parameter of ``net`` whose name matches ``pattern`` (``re.search``, as
    the built-in algorithm applies its pattern to MXNet layer names) and return their names.

    beedet's names are PyTorch's (``backbone.trunk.layer1.0.conv1.weight`` for a ResNet,
    ``backbone.features.0.weight`` for VGG), not MXNet's (``conv1_``, ``stage1_``). A pattern that
    matches nothing is a ValueError listing names it could match, never a silent no-op.
    """
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"freeze pattern {pattern!r} is not a valid regular expression: {exc}") from None
    frozen = []
    for name, parameter in net.named_parameters():
        if regex.search(name):
            parameter.requires_grad_(False)
            frozen.append(name)
    if not frozen:
        prefixes = sorted({".".join(name.split(".")[:3]) + "." for name, _ in net.named_parameters()})
        raise ValueError(f"freeze pattern {pattern!r} matches no parameter of this network (MXNet layer names "
                         f"such as conv1_ do not exist here); parameter names start with: {', '.join(prefixes[:12])}"
                         + (", ..." if len(prefixes) > 12 else ""))
    return frozen
