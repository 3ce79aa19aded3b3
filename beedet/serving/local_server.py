"""``python -m beedet.serve`` in a background process, ready when this returns: for notebooks,
tests and benchmarks that call the server the way a client (or the Lambda function) would.

    with running_server(["ckpt=outputs/.../best.ckpt"], log_path=Path("serve.log")) as url:
        requests.post(f"{url}/invocations", data=jpeg_bytes, headers={"Content-Type": "image/jpeg"})

The server gets a free loopback port; the context yields its base URL (``http://127.0.0.1:PORT``)
once ``GET /ping`` answers 200, and stops the process on exit. A server that exits or does not
answer in time raises :class:`ServerStartError` with the end of its log, so a bad checkpoint path
reads as beedet.serve's own message rather than a connection error.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

# beedet.serve's own arguments that running_server sets itself.
_MANAGED = ("host=", "port=")


class ServerStartError(RuntimeError):
    """beedet.serve exited, or did not answer GET /ping in time; the message ends with its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it; it is free again when this returns)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_server(
    args: Sequence[str],
    *,
    log_path: Path,
    timeout: float = 180.0,
    host: str = "127.0.0.1",
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[str]:
    """Run ``python -m beedet.serve *args host=HOST port=<free>`` and yield its base URL once it
    answers ``GET /ping``. ``args`` are beedet.serve's (``ckpt=...`` or ``serve model_dir=...``,
    limits such as ``max_body_bytes=...`` or ``inference_timeout_s=...``); stdout and stderr go to ``log_path``. ``env``
    replaces the environment (default: this process's)."""
    managed = [a for a in args if a.startswith(_MANAGED)]
    if managed:
        raise ValueError(f"running_server picks the host and port itself; drop {managed}")
    port = free_port(host)
    url = f"http://{host}:{port}"
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "beedet.serve", *args, f"host={host}", f"port={port}"]
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, cwd=cwd, env=dict(env) if env is not None else None,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_ping(proc, url, log_path, timeout)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for_ping(proc: subprocess.Popen, url: str, log_path: Path, timeout: float) -> None:
    # Loading the model takes seconds (imports, checkpoint, one warm-up); poll rather than guess.
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise ServerStartError(f"beedet.serve exited with status {proc.returncode} before answering "
                                   f"GET {url}/ping:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise ServerStartError(f"beedet.serve did not answer GET {url}/ping within {timeout:.0f} s:\n{_tail(log_path)}")
        time.sleep(0.3)


def _tail(log_path: Path, chars: int = 4000) -> str:
    try:
        return log_path.read_text(errors="replace")[-chars:]
    except OSError:
        return f"(no log at {log_path})"

