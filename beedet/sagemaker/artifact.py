"""The model artifact a training job leaves in ``SM_MODEL_DIR`` (SageMaker tars it into
``model.tar.gz``), laid out as the SageMaker PyTorch serving container expects it::

    model.ckpt            the best checkpoint, weights and beedet metadata only (no optimizer
                          state): ``beedet.assembly.load_system("model.ckpt")`` rebuilds the detector
    config.yaml           the resolved run config stored in that checkpoint (what rebuilds the model)
    code/inference.py     the serving entry point: re-exports model_fn, input_fn, predict_fn and
                          output_fn from ``beedet.serving.handlers``
    code/requirements.txt beedet's runtime dependencies less torch and torchvision, which the
                          PyTorch serving container provides (its own CUDA build); only for
                          ``endpoint_image="pytorch"``
    code/beedet/          a copy of the beedet package, so inference.py imports it without pip

Which image serves the artifact decides whether it carries ``code/requirements.txt``
(the run config's ``endpoint_image``, one of ``beedet.sagemaker.deploy.ENDPOINT_IMAGES``):

* ``pytorch`` (the default; ``beedet.sagemaker.deploy`` without ``image_uri``): SageMaker's PyTorch
  inference container puts ``code/`` on ``sys.path`` and, because the file exists, runs ``pip
  install -r code/requirements.txt`` before importing ``inference.py``. The endpoint therefore needs
  PyPI at every start: it cannot start under network isolation or in a VPC without internet.
* ``beedet``: an image built from ``docker/serve.Dockerfile``, which already holds beedet and every
  dependency and serves ``/opt/ml/model/model.ckpt`` with ``python -m beedet.serve serve``. The
  artifact has no ``requirements.txt``, so nothing is installed when the endpoint starts and nothing
  is fetched: it starts without internet (deploy it with ``network_isolation=true``). Served by the
  PyTorch container instead, such an artifact fails at ``import inference`` (no Hydra, no Lightning
  there).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import pytorch_lightning as pl
import torch

import beedet
from beedet.checkpointing import PAYLOAD_KEY, load_checkpoint
from beedet.sagemaker.deploy import check_endpoint_image
from beedet.training.best_checkpoint import reported_checkpoint

PACKAGE_DIR = Path(beedet.__file__).resolve().parent
# Provided by the SageMaker PyTorch serving container, built for its CUDA: never pip-installed over it.
CONTAINER_PACKAGES = ("torch", "torchvision")
# What serving needs from a Lightning checkpoint: load_system reads "state_dict" and "beedet"; the
# rest are small and say where the weights came from. Optimizer and loop state are left out.
CHECKPOINT_KEYS = ("state_dict", "beedet", "epoch", "global_step", "pytorch-lightning_version")
HANDLERS_MODULE = "beedet.serving.handlers"
HANDLER_NAMES = ("model_fn", "input_fn", "predict_fn", "output_fn")

INFERENCE_SOURCE = f'''"""SageMaker PyTorch serving entry point for this beedet model artifact (written by
beedet.sagemaker.artifact). The handlers live in {HANDLERS_MODULE}; the copy of beedet beside
this file (code/beedet/) provides them, and model_fn loads ../model.ckpt from the model directory."""

from {HANDLERS_MODULE} import {", ".join(HANDLER_NAMES)}

__all__ = {list(HANDLER_NAMES)!r}
'''


class ModelArtifact(pl.Callback):
    """Writes the model artifact (:func:`write_model_artifact`) of the run's best checkpoint
    (``trainer.checkpoint_callback.best_model_path``, else the last one saved) into ``model_dir``
    when fitting ends, on global rank 0, for ``endpoint_image`` (``pytorch`` or ``beedet``). A
    SageMaker training job adds it (``job_overrides`` in ``beedet.sagemaker.training_job``) with its
    ``SM_MODEL_DIR`` and the run config's ``endpoint_image``: what SageMaker keeps as model.tar.gz
    is the checkpoint plus the serving code. Raises ``ValueError`` for an unknown image, when the
    callback is built (before training)."""

    def __init__(self, model_dir: str, endpoint_image: str = "pytorch") -> None:
        check_endpoint_image(endpoint_image)
        self.model_dir = model_dir
        self.endpoint_image = endpoint_image

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        best = reported_checkpoint(trainer)
        if trainer.is_global_zero and best:
            write_model_artifact(self.model_dir, best, endpoint_image=self.endpoint_image)


def write_model_artifact(model_dir: str | os.PathLike, checkpoint: str | os.PathLike,
                         requirements: Sequence[str] | None = None, *, endpoint_image: str = "pytorch") -> Path:
    """Write the artifact (see the module docstring) for ``checkpoint`` (a beedet training
    checkpoint) into ``model_dir``, replacing an earlier artifact's files there. ``requirements``:
    the lines of code/requirements.txt; None: :func:`runtime_requirements`. ``endpoint_image``:
    ``pytorch`` writes code/requirements.txt, ``beedet`` writes none (and takes no
    ``requirements``): nothing is installed when the endpoint starts. Returns ``model_dir``."""
    check_endpoint_image(endpoint_image)
    if endpoint_image != "pytorch" and requirements is not None:
        raise ValueError(f"requirements are for endpoint_image='pytorch'; an endpoint_image={endpoint_image!r} "
                         "artifact installs nothing (its image holds every dependency)")
    model_dir = Path(model_dir)
    # The same safe read as serving's: tensors and plain data, trusted targets only.
    full, payload = load_checkpoint(checkpoint)
    model_dir.mkdir(parents=True, exist_ok=True)
    slim = {k: full[k] for k in CHECKPOINT_KEYS if k in full} | {PAYLOAD_KEY: payload.to_plain()}
    _atomic_write(model_dir / "model.ckpt", lambda f: torch.save(slim, f))
    _atomic_write(model_dir / "config.yaml", lambda f: f.write(payload.config_yaml.encode()))

    code = model_dir / "code"
    if code.exists():
        shutil.rmtree(code)
    shutil.copytree(PACKAGE_DIR, code / "beedet", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (code / "inference.py").write_text(INFERENCE_SOURCE)
    if endpoint_image == "pytorch":
        lines = runtime_requirements() if requirements is None else list(requirements)
        (code / "requirements.txt").write_text("".join(line + "\n" for line in lines))
    return model_dir


def runtime_requirements() -> list[str]:
    """beedet's runtime dependencies as pip requirement lines, without extras and without
    :data:`CONTAINER_PACKAGES`. Read from the installed distribution's metadata; where beedet runs
    from a copied source tree (a SageMaker job's code), from the ``pyproject.toml`` or the
    ``requirements.txt`` beside the package. Raises ``FileNotFoundError`` when none is found."""
    try:
        lines = metadata.requires("beedet") or []
    except metadata.PackageNotFoundError:
        lines = _requirements_beside_package(PACKAGE_DIR.parent)
    return [line for line in lines if not _is_extra(line) and requirement_name(line) not in CONTAINER_PACKAGES]


def _requirements_beside_package(root: Path) -> list[str]:
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and sys.version_info >= (3, 11):  # tomllib is 3.11+
        import tomllib

        return list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])
    requirements = root / "requirements.txt"
    if requirements.is_file():
        return [s for s in (line.split("#", 1)[0].strip() for line in requirements.read_text().splitlines()) if s]
    raise FileNotFoundError(f"beedet is not installed and neither {pyproject} nor {requirements} exists: "
                            "cannot tell the serving container which packages to install")


def requirement_name(requirement: str) -> str:
    """The normalised project name of a requirement line (``torch>=2.4`` -> ``torch``)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else requirement.strip().lower()


def _is_extra(requirement: str) -> bool:
    return bool(re.search(r";.*\bextra\s*==", requirement))


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
