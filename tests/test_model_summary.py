"""The model summary table (``beedet.model_summary``) and its command line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from beedet.models import ssd
from beedet.model_summary import main, summarize


def _count(text: str, label: str) -> int:
    return int(re.search(rf"^{label}: ([\d,]+)$", text, re.MULTILINE).group(1).replace(",", ""))


def _row(text: str, layer: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(layer + " ("))


@pytest.fixture(scope="module")
def slim():
    return ssd.ssd_resnet_slim(4)


def test_totals_match_the_parameters(slim) -> None:
    text = summarize(slim, 256)
    assert _count(text, "Total params") == sum(p.numel() for p in slim.parameters())
    assert _count(text, "Trainable params") == sum(p.numel() for p in slim.parameters() if p.requires_grad)


def test_parameter_column_sums_to_the_total(slim) -> None:
    for depth in (1, 2, 3, 5):
        text = summarize(slim, 256, max_depth=depth)
        table = text.split("Total params")[0]
        rows = table.splitlines()[3:-1]  # between the header rules and the closing rule
        column = [line.rsplit(None, 1)[-1] for line in rows]
        assert sum(int(c.replace(",", "")) for c in column if c != "--") == _count(text, "Total params"), depth


def test_rows_show_output_shapes_and_respect_depth(slim) -> None:
    text = summarize(slim, 256, max_depth=3)
    assert "[1, 64, 32, 32]" in _row(text, "backbone.trunk.layer2")  # stride 8: the first map
    assert "[1, 128, 16, 16]" in _row(text, "backbone.extras.0")
    assert "backbone.trunk.layer2.0 (" not in text  # depth 4 is not listed
    assert "backbone.trunk.layer2.0.conv1 (" in summarize(slim, 256, max_depth=5)


def test_summary_restores_each_modules_mode() -> None:
    model = ssd.ssd_resnet_slim(1).train()
    model.backbone.trunk.bn1.eval()  # e.g. a frozen BatchNorm
    summarize(model, 256)
    assert model.training and model.head.training and not model.backbone.trunk.bn1.training


def test_feature_maps_and_anchors(slim) -> None:
    text = summarize(slim, 256)
    for shape in ("64 x 32 x 32", "128 x 16 x 16", "128 x 8 x 8", "128 x 4 x 4", "64 x 2 x 2", "64 x 1 x 1"):
        assert shape in text
    assert _count(text, "Total anchors") == 4 * (32**2 + 16**2 + 8**2 + 4**2 + 2**2 + 1)


def test_cli_composes_the_real_config_and_writes_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    main(["model=ssd256_resnet_slim", "num_classes=2", "depth=2", "model.widths=[16,24,32,64]"])
    out = capsys.readouterr().out
    assert "ssd_resnet_slim" in out and "num_classes=2" in out
    assert "[1, 3, 256, 256]" in _row(out, "transform")
    assert "32 x 32 x 32" in out  # the override reached the network
    assert list(tmp_path.iterdir()) == []  # no Hydra output directory
