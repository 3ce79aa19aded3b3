"""bf16-mixed on a CPU (the honeybee recipe's precision): Lightning trains in it, and a CPU that
would have to emulate bfloat16 gets a warning instead of a silently slow run."""

from __future__ import annotations

import logging

import pytest

from beedet import assembly
from helpers import compose_config


def _trainer(precision: str, tmp_path):
    cfg = compose_config(["trainer=cpu", f"trainer.precision={precision}", "~logger", "~callbacks"], run_dir=tmp_path)
    return assembly.build_trainer(cfg)


@pytest.mark.parametrize("native, warned", [(True, False), (False, True)])
def test_bf16_on_a_cpu_warns_only_where_it_would_be_emulated(monkeypatch, caplog, tmp_path, native, warned):
    monkeypatch.setattr(assembly, "cpu_has_native_bf16", lambda: native)
    with caplog.at_level(logging.WARNING, logger="beedet.assembly"):
        trainer = _trainer("bf16-mixed", tmp_path)
    assert trainer.precision == "bf16-mixed"
    assert ("emulated" in caplog.text) is warned
    if warned:
        assert "trainer.precision=32-true" in caplog.text


def test_32_bit_training_never_warns(monkeypatch, caplog, tmp_path):
    monkeypatch.setattr(assembly, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="beedet.assembly"):
        _trainer("32-true", tmp_path)
    assert "emulated" not in caplog.text


def test_the_honeybee_recipe_trains_in_bf16_mixed():
    assert compose_config(["+experiment=honeybee"]).trainer.precision == "bf16-mixed"
