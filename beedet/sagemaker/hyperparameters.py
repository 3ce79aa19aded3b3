"""A training job's hyperparameters as Hydra overrides of ``conf/train.yaml``.

SageMaker passes a job's hyperparameters to the entry script as command-line pairs, sorted by key
(``python train.py --experiment honeybee_tiled --trainer.max_epochs 50``; the training toolkit
writes a one-letter key as ``-k``), and as the JSON object ``SM_HPS``. Each becomes one override::

    --experiment honeybee_tiled    ->  +experiment=honeybee_tiled   (experiments are added, not set)
    --trainer.max_epochs 50        ->  trainer.max_epochs=50
    --model ssd300_resnet50        ->  model=ssd300_resnet50        (a config group's option)
    --evaluation.size_bins None    ->  evaluation.size_bins=null    (Python's None as the toolkit writes it)

Values are passed through as Hydra override text, so lists (``[1024,4096]``) and quoted strings
keep Hydra's syntax. A key that is neither a config group, ``experiment``, nor a key of the config
composed with the job's group choices raises :class:`HyperparameterError` listing the valid keys.
"""

from __future__ import annotations

import difflib
import json
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Picked with +experiment=NAME: the experiment group is not in train.yaml's defaults list.
EXPERIMENT_KEY = "experiment"
# The training toolkit writes Python's None as "None" (and drops it to "" in older versions).
_NULL_TEXTS = ("", "None")


class HyperparameterError(ValueError):
    """The job's hyperparameters cannot become train.py overrides; the message says which and why."""


def is_hyperparameter_argv(argv: Sequence[str]) -> bool:
    """True when ``argv`` is a (possibly empty) list of ``--key value`` / ``-k value`` pairs, the
    way SageMaker starts an entry script; False for Hydra's own arguments (``key=value``,
    ``-cp DIR -cn NAME`` as Lightning's DDP launcher re-runs a Hydra script)."""
    return len(argv) % 2 == 0 and all(_is_key_token(argv[i]) for i in range(0, len(argv), 2))


def parse_hyperparameter_argv(argv: Sequence[str]) -> dict[str, str]:
    """``["--trainer.max_epochs", "50", "-k", "v"]`` -> ``{"trainer.max_epochs": "50", "k": "v"}``.
    Raises :class:`HyperparameterError` for a stray value or a repeated key."""
    if not is_hyperparameter_argv(argv):
        raise HyperparameterError(f"expected --key value pairs, as SageMaker passes hyperparameters; got {list(argv)}")
    pairs: dict[str, str] = {}
    for i in range(0, len(argv), 2):
        key = argv[i].lstrip("-")
        if key in pairs:
            raise HyperparameterError(f"hyperparameter --{key} is given twice ({pairs[key]!r} and {argv[i + 1]!r})")
        pairs[key] = argv[i + 1]
    return pairs


def hyperparameters_from_json(values: Mapping[str, Any]) -> dict[str, str]:
    """``SM_HPS`` / ``hyperparameters.json`` values as the text the drivers would pass on the
    command line: strings as they are (JSON strings unquoted), other JSON values JSON-encoded
    (``50``, ``true``, ``[1, 2]``), None as ``null``."""
    texts = {}
    for key, value in values.items():
        if isinstance(value, str):
            try:
                decoded = json.loads(value)
            except json.JSONDecodeError:
                decoded = value
            # The SDK v2 JSON-encodes string hyperparameters ('"honeybee_tiled"'); v3 does not.
            value = decoded if isinstance(decoded, str) else value
        texts[str(key)] = value if isinstance(value, str) else json.dumps(value)
    return texts


def to_overrides(hyperparameters: Mapping[str, str]) -> list[str]:
    """The Hydra overrides for ``hyperparameters`` (``{key: value text}``), in the given order."""
    overrides = []
    for key, value in hyperparameters.items():
        value = "null" if value in _NULL_TEXTS else value
        overrides.append(f"+{key}={value}" if key == EXPERIMENT_KEY else f"{key}={value}")
    return overrides


def config_keys(cfg: DictConfig) -> set[str]:
    """Every dotted key of ``cfg`` (inner nodes and leaves; list items are not keys), unresolved."""
    keys: set[str] = set()

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for name, child in node.items():
                key = f"{prefix}{name}"
                keys.add(key)
                walk(child, key + ".")

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return keys


def check_keys(hyperparameters: Iterable[str], valid: Iterable[str]) -> None:
    """Raise :class:`HyperparameterError` for every key of ``hyperparameters`` not in ``valid``,
    with the closest valid keys for each and then all of them. ``hydra.*`` keys are left to Hydra."""
    valid = sorted(set(valid))
    unknown = [key for key in hyperparameters if key not in valid and not key.startswith("hydra.")]
    if not unknown:
        return
    lines = []
    for key in unknown:
        close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
        lines.append(f"  --{key}" + (f"  (did you mean {', '.join('--' + c for c in close)}?)" if close else ""))
    listing = textwrap.fill(", ".join(valid), width=110, initial_indent="  ", subsequent_indent="  ",
                            break_on_hyphens=False)
    raise HyperparameterError(
        "unknown hyperparameter" + ("s" if len(unknown) > 1 else "") + ":\n" + "\n".join(lines)
        + f"\nvalid keys ({len(valid)}; config groups and '{EXPERIMENT_KEY}' take an option name, "
        "the rest a value; from conf/train.yaml composed with this job's group choices):\n" + listing
    )


def _is_key_token(token: str) -> bool:
    if token.startswith("--"):
        return len(token) > 2 and "=" not in token
    # The toolkit's one-letter keys: -k value.
    return len(token) == 2 and token[0] == "-" and token[1].isalpha()
