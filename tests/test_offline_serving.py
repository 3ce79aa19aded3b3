"""An endpoint that starts without internet (issue 18): a model artifact written for the serving
image (``endpoint_image="beedet"``, beedet/sagemaker/artifact.py) holds no code/requirements.txt,
and the serving image's command (docker/serve.Dockerfile: ``python -m beedet.serve serve``) starts
on it and answers /ping and /invocations in an interpreter that refuses every non-loopback socket
connection, every name lookup but loopback's, and any pip.

The refusals come from an audit hook (``sys.addaudithook``) that a ``sitecustomize.py`` on
PYTHONPATH installs before any other import, in the server's process; it writes each refusal, and
one "armed" line per process, to a log the tests read. The first test shows that the guard catches
what matters: the PyTorch serving toolkit's start (``pip install -r code/requirements.txt`` when the
file exists) is refused on a default artifact, as is a connection to a routable address.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

from helpers import REPO, TINY_SYNTHETIC, compose_config, save_checkpoint

CLASSES = ["bee", "drone", "pollenbee", "queen"]

# Installed as sitecustomize.py: Python imports it at startup, before the program's own imports.
GUARD = r'''
"""Network and pip guard for beedet's offline-serving tests (tests/test_offline_serving.py)."""
import errno
import ipaddress
import json
import os
import re
import socket
import sys

_LOG = os.environ["BEEDET_GUARD_LOG"]
_SOCKET_EVENTS = {"socket.connect", "socket.sendto", "socket.sendmsg"}
_NAME_EVENTS = {"socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr"}
_PROCESS_EVENTS = {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn"}
_PIP = re.compile(r"(^|[\s/'\"])pip[0-9.]*(\s|['\"]|$)")


def _note(kind, detail):
    with open(_LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps({"pid": os.getpid(), "kind": kind, "detail": detail}) + "\n")


def _loopback(host):
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host).split("%", 1)[0]
    if host in ("", "localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name: looking it up would ask a DNS server
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or address.is_unspecified or (mapped is not None and mapped.is_loopback)


def _hook(event, args):
    if event in _SOCKET_EVENTS:
        address = args[1]
        if isinstance(address, tuple) and not _loopback(address[0]):
            _note("network", f"{event} {address!r}")
            raise OSError(errno.ENETUNREACH, f"offline guard: {event} to {address!r} refused")
    elif event in _NAME_EVENTS:
        if not _loopback(args[0]):
            _note("network", f"{event} {args[0]!r}")
            raise socket.gaierror(socket.EAI_NONAME, f"offline guard: looking up {args[0]!r} refused")
    elif event in _PROCESS_EVENTS:
        text = repr(args)
        if _PIP.search(text):
            _note("pip", f"{event} {text[:300]}")
            raise PermissionError(f"offline guard: {event} running pip refused")
    elif event == "import" and (args[0] == "pip" or str(args[0]).startswith("pip.")):
        _note("pip", f"import {args[0]}")
        raise ImportError(f"offline guard: importing {args[0]} refused")


_note("armed", " ".join(getattr(sys, "orig_argv", [])))
sys.addaudithook(_hook)
'''

# What SageMaker's PyTorch serving container does on start before loading code/inference.py
# (sagemaker_pytorch_serving_container.torchserve.start_torchserve and _install_requirements).
TOOLKIT_START = r'''
import os, subprocess, sys
requirements = os.path.join(sys.argv[1], "requirements.txt")
if os.path.exists(requirements):
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-r", requirements])
print("toolkit start: nothing to install")
'''

# Connections the guard must refuse (a documentation-only address: nothing answers it anyway) and allow.
PROBE = r'''
import socket
server = socket.create_server(("127.0.0.1", 0))
socket.create_connection(server.getsockname(), timeout=5).close()
print("loopback: connected")
try:
    socket.create_connection(("192.0.2.1", 80), timeout=5)
except OSError as exc:
    print("routable:", exc)
'''


def guarded_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """This process's environment with the guard installed, and the guard's log. TORCH_HOME is an
    empty folder, so a weight download could not be served from a cache instead of the network."""
    guard_dir = tmp_path / "guard"
    guard_dir.mkdir(parents=True)
    (guard_dir / "sitecustomize.py").write_text(GUARD)
    log = tmp_path / "guard.log"
    log.touch()
    (tmp_path / "torch-home").mkdir()
    pythonpath = os.pathsep.join(p for p in (str(guard_dir), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": pythonpath, "BEEDET_GUARD_LOG": str(log), "TORCH_HOME": str(tmp_path / "torch-home")}
    return env, log


def guard_entries(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def run_guarded(code: str, args: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, list[dict]]:
    env, log = guarded_env(tmp_path)
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, check=False)
    return proc, guard_entries(log)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A beedet checkpoint written by the system's own ``on_save_checkpoint`` without training
    (random weights: only starting and answering are tested), of a ResNet-18 SSD whose stored config
    says it was trained from ImageNet weights (``pretrained_backbone: true``), as a real recipe's is:
    serving must not fetch them."""
    from beedet.assembly import build_network, build_system

    overrides = [*TINY_SYNTHETIC, "model=ssd300_resnet18"]
    built = compose_config(overrides)
    stored = compose_config([*overrides, "model.pretrained_backbone=true"]) if "pretrained_backbone" in built.model else built
    system = build_system(stored, build_network(built.model, num_classes=len(CLASSES)), CLASSES)
    path = tmp_path_factory.mktemp("checkpoint") / "best.ckpt"
    save_checkpoint(system, path)
    return path


@pytest.fixture(scope="module")
def artifacts(checkpoint, tmp_path_factory) -> dict[str, Path]:
    """endpoint image -> a model directory as SageMaker unpacks that artifact's model.tar.gz."""
    from beedet.sagemaker.artifact import write_model_artifact
    from beedet.sagemaker.deploy import ENDPOINT_IMAGES

    root = tmp_path_factory.mktemp("artifacts")
    return {image: write_model_artifact(root / image, checkpoint, endpoint_image=image) for image in ENDPOINT_IMAGES}


def test_the_offline_artifact_installs_nothing_where_the_default_one_needs_pip(artifacts, tmp_path):
    offline, default = artifacts["beedet"], artifacts["pytorch"]
    assert {p.relative_to(offline).as_posix() for p in offline.iterdir()} == {"model.ckpt", "config.yaml", "code"}
    assert (offline / "code" / "inference.py").is_file() and (offline / "code" / "beedet" / "serve.py").is_file()
    assert not (offline / "code" / "requirements.txt").exists()
    assert "pytorch-lightning" in (default / "code" / "requirements.txt").read_text()

    # The PyTorch container's start on each: the default artifact needs pip (refused offline), the
    # offline one installs nothing.
    proc, refused = run_guarded(TOOLKIT_START, [str(default / "code")], tmp_path / "default")
    assert proc.returncode != 0 and "offline guard" in proc.stderr
    assert [e["kind"] for e in refused if e["kind"] != "armed"] == ["pip"]
    assert "install" in refused[-1]["detail"] and "requirements.txt" in refused[-1]["detail"]
    proc, refused = run_guarded(TOOLKIT_START, [str(offline / "code")], tmp_path / "offline")
    assert proc.returncode == 0 and "nothing to install" in proc.stdout, proc.stderr
    assert [e["kind"] for e in refused] == ["armed"]

    # And the guard refuses a routable connection while loopback works.
    proc, refused = run_guarded(PROBE, [], tmp_path / "probe")
    assert "loopback: connected" in proc.stdout and "routable: [Errno" in proc.stdout, proc.stdout + proc.stderr
    assert [(e["kind"], "192.0.2.1" in e["detail"]) for e in refused if e["kind"] != "armed"] == [("network", True)]


@pytest.mark.slow
def test_the_serving_image_command_answers_from_the_offline_artifact_with_the_network_refused(artifacts, tmp_path):
    """``python -m beedet.serve serve`` (the image's ENTRYPOINT and CMD) on /opt/ml/model's layout."""
    from beedet.serving.local_server import running_server

    env, log = guarded_env(tmp_path)
    frame = Image.new("RGB", (320, 240), (90, 70, 40))
    ImageDraw.Draw(frame).ellipse((100, 80, 140, 100), fill=(220, 180, 40))
    jpeg = io.BytesIO()
    frame.save(jpeg, format="JPEG")
    with running_server(["serve", f"model_dir={artifacts['beedet']}"], log_path=tmp_path / "serve.log", env=env,
                        cwd=REPO, timeout=120) as url:
        assert httpx.get(f"{url}/ping", timeout=30).json() == {"status": "ok"}
        reply = httpx.post(f"{url}/invocations", content=jpeg.getvalue(), headers={"Content-Type": "image/jpeg"},
                           timeout=60)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert (answer["width"], answer["height"]) == (320, 240) and set(answer["counts"]) == set(CLASSES)
    entries = guard_entries(log)
    # The guard ran in the server's own process, and refused nothing there.
    assert any(e["kind"] == "armed" and "beedet.serve" in e["detail"] for e in entries), entries
    assert [e for e in entries if e["kind"] != "armed"] == []
    assert "Traceback" not in (tmp_path / "serve.log").read_text()
