"""The project's real ``conf/`` composed outside a Hydra run, for small commands that take Hydra
overrides beside a few ``key=value`` options of their own (``python -m beedet.model_summary``,
``python -m beedet.fit_anchors``). Hydra's compose API creates no output directory and leaves the
working directory alone, so these commands write nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_train_config(overrides: Sequence[str] = ()) -> DictConfig:
    """``conf/train.yaml`` with ``overrides``, as ``python train.py <overrides>`` would see it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def split_int_options(
    args: Sequence[str], defaults: Mapping[str, int | None]
) -> tuple[dict[str, int | None], list[str]]:
    """Separate a command's own integer options (``key=N`` for a key in ``defaults``) from the
    Hydra overrides among ``args``. Returns (the options, defaults filled in; the other args in
    order). A non-integer value for an own option exits with a message."""
    options = dict(defaults)
    overrides = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key in options:
            try:
                options[key] = int(value)
            except ValueError:
                raise SystemExit(f"{key} must be an integer, got {value!r}") from None
        else:
            overrides.append(arg)
    return options, overrides
