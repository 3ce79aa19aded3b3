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

**On the wire** (:func:`encode_hyperparameters` in the launcher, :func:`decode_hyperparameters` in
``train.py``). The SDK v3 driver (``sm_drivers/scripts/environment.py``) writes every hyperparameter
into a file of ``export SM_HP_<NAME>='<value>'`` lines (NAME upper-cased, ``-`` -> ``_``) and
``SM_HPS='<JSON>'``, which ``sm_train.sh`` sources under ``set -e``; the drivers then rebuild the
command line from ``SM_HPS`` with ``json.loads`` / ``json.dumps`` on each value. So a name may hold
only letters, digits, ``_`` and ``-`` (``SM_HP_TRAINER.MAX_EPOCHS`` stops the job: "not a valid
identifier"), a value no ``'`` (it would end the shell quoting), and a value that is JSON comes back
re-spelt (``"a b"`` -> ``a b``, ``1e-3`` -> ``0.001``). Hence:

* names: ``.`` -> ``__``, ``-`` -> ``--``, and a ``_`` that begins or ends a part of the key or
  touches another ``_`` -> ``-_``, so ``__`` always means ``.``::

      trainer.max_epochs -> trainer__max_epochs      model -> model      experiment -> experiment
      data.train._target_ -> data__train__-_target-_

* values: ``%``, ``'`` and ``"`` percent-encoded (``'bees at dawn'`` -> ``%27bees at dawn%27``), and
  the first character too when the drivers would re-spell the rest (``1e-3`` -> ``%31e-3``);
  anything else (``50``, ``[default,early_stopping]``, ``s3://b/p/``) is sent as it is.

Decoding is the inverse and leaves a name or value that was not encoded as it is (dotted names
from the training toolkit or a local command line, a tuner's plain numbers), so a tuner's ranges
name beedet keys as ``optimizer__lr``. SageMaker's own names (``_tuning_objective_metric``, which
the tuning service adds to each job it starts, and ``sagemaker_*``) are not train.py's: decoding
sets them aside.
"""

from __future__ import annotations

import difflib
import json
import textwrap
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Picked with +experiment=NAME: the experiment group is not in train.yaml's defaults list.
EXPERIMENT_KEY = "experiment"
# The training toolkit writes Python's None as "None" (and drops it to "" in older versions).
_NULL_TEXTS = ("", "None")
# SageMaker's own hyperparameters: the tuning service adds the objective metric's name to every
# training job it starts; the SDK's tuner and the training toolkit use sagemaker_* names.
RESERVED_NAMES = frozenset({"_tuning_objective_metric"})
RESERVED_PREFIX = "sagemaker_"
# Characters a config key may have on the wire; anything else (a group path's '/', '@package')
# is not a key train.py takes.
_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")
# Value characters that cannot cross the driver as they are: '%' (the escape itself), "'" (ends
# the env file's quoting) and '"' (makes a JSON string, which the drivers unquote).
_VALUE_ESCAPES = frozenset("%'\"")


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
        # Only the option's own dashes: an encoded name may begin with '-' ('-_target-_').
        key = argv[i][2:] if argv[i].startswith("--") else argv[i][1:]
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


def is_reserved(name: str) -> bool:
    """True for SageMaker's own hyperparameter names (``_tuning_objective_metric``, ``sagemaker_*``),
    which configure SageMaker, never train.py."""
    return name in RESERVED_NAMES or name.startswith(RESERVED_PREFIX)


def encode_key(key: str) -> str:
    """``key`` (a config key, group or ``experiment``) as a hyperparameter name that stays a shell
    identifier in the driver's ``SM_HP_<NAME>`` (module docstring): ``trainer.max_epochs`` ->
    ``trainer__max_epochs``. :func:`decode_key` inverts it. Raises :class:`HyperparameterError`
    for a key with other characters than ASCII letters, digits, ``_``, ``-`` and ``.``."""
    bad = sorted(set(key) - _KEY_CHARS)
    if not key or bad:
        raise HyperparameterError(f"{key!r} cannot be a hyperparameter name: SageMaker's driver makes each name a "
                                  f"shell variable, and {''.join(bad) or 'an empty name'!r} has no spelling there")
    parts = []
    for part in key.split("."):
        chars = []
        for i, char in enumerate(part):
            # A '_' next to another '_' or to a '.' would run into the '__' that stands for '.'.
            edge = i == 0 or i == len(part) - 1 or part[i - 1] == "_" or part[i + 1] == "_"
            chars.append("--" if char == "-" else "-_" if char == "_" and edge else char)
        parts.append("".join(chars))
    return "__".join(parts)


def decode_key(name: str) -> str:
    """The config key of a hyperparameter name: ``__`` -> ``.``, ``-_`` -> ``_``, ``--`` -> ``-``,
    every other character as it is (so ``trainer.max_epochs`` and ``epochs`` come back unchanged)."""
    out, i = [], 0
    while i < len(name):
        pair = name[i:i + 2]
        if pair in ("__", "-_", "--"):
            out.append({"__": ".", "-_": "_", "--": "-"}[pair])
            i += 2
        else:
            out.append(name[i])
            i += 1
    return "".join(out)


def encode_value(text: str) -> str:
    """``text`` (a value as Hydra override text) as a hyperparameter value that reaches train.py's
    command line unchanged through the SDK driver (module docstring); :func:`decode_value`
    inverts it."""
    encoded = "".join(_percent(char) if char in _VALUE_ESCAPES else char for char in text)
    if encoded and _driver_respells(encoded):
        # A '%' first is not JSON, so the drivers leave the whole text alone.
        encoded = _percent(encoded[0]) + encoded[1:]
    return encoded


def decode_value(text: str) -> str:
    """A hyperparameter value as Hydra override text: percent-decoded (a value that was not encoded
    has no ``%XX`` in it and comes back as it is)."""
    return urllib.parse.unquote(text)


def encode_hyperparameters(hyperparameters: Mapping[str, str]) -> dict[str, str]:
    """``{key: value text}`` as the job's HyperParameters: :func:`encode_key` and
    :func:`encode_value` on each. Raises :class:`HyperparameterError` for a key with no encoding."""
    return {encode_key(key): encode_value(value) for key, value in hyperparameters.items()}


def decode_hyperparameters(hyperparameters: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """A job's hyperparameters as it received them -> (``{key: value text}`` for train.py, the
    reserved names set aside (:func:`is_reserved`), in the given order). Raises
    :class:`HyperparameterError` when two names decode to one key (``trainer.max_epochs`` and
    ``trainer__max_epochs``)."""
    decoded: dict[str, str] = {}
    names: dict[str, str] = {}
    reserved = []
    for name, value in hyperparameters.items():
        if is_reserved(name):
            reserved.append(name)
            continue
        key = decode_key(name)
        if key in names:
            raise HyperparameterError(f"hyperparameter {key} is given twice (as --{names[key]} and --{name})")
        names[key] = name
        decoded[key] = decode_value(value)
    return decoded, reserved


def _percent(char: str) -> str:
    """``char`` as %XX escapes of its UTF-8 bytes, whatever it is (urllib's quote keeps letters)."""
    return "".join(f"%{byte:02X}" for byte in char.encode())


def _driver_respells(text: str) -> bool:
    """True when the SDK drivers would not pass ``text`` on as it is: it parses as JSON and
    ``json.dumps`` writes it otherwise (the drivers' safe_deserialize / safe_serialize)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False
    return (value if isinstance(value, str) else json.dumps(value)) != text


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
