"""The HTTP server (beedet.serve, beedet.serving.app) over real loopback HTTP: /ping, /invocations
with a real hive frame, every kind of bad payload, boto3's sagemaker-runtime client, and a short
concurrent burst. The server runs in a subprocess started as the serving image starts it
(``python -m beedet.serve serve``, with loopback and test-sized limits)."""

from __future__ import annotations

import base64
import json
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from helpers import SERVER_MAX_BODY_BYTES, SERVER_MAX_PIXELS

MAX_BODY_BYTES = SERVER_MAX_BODY_BYTES
MAX_PIXELS = SERVER_MAX_PIXELS


def bee_frame(honeybee_mini: Path) -> Path:
    """The first 1920x1080 hive frame of honeybee-mini's valid split."""
    return next(p for p in sorted((honeybee_mini / "valid" / "images").glob("*.jpg")) if Image.open(p).size == (1920, 1080))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG header announcing width x height pixels, without the pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def server(local_server):
    return local_server


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server[0], timeout=120) as http:
        yield http


@pytest.mark.slow
def test_ping(client):
    reply = client.get("/ping")
    assert reply.status_code == 200 and reply.json() == {"status": "ok"}


@pytest.mark.slow
def test_a_bee_frame_in_every_content_type_gets_one_answer(client, honeybee_mini):
    jpeg = bee_frame(honeybee_mini).read_bytes()
    reply = client.post("/invocations", content=jpeg, headers={"Content-Type": "image/jpeg"})
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    answer = reply.json()
    assert (answer["width"], answer["height"]) == (1920, 1080)
    assert sum(answer["counts"].values()) == len(answer["detections"])
    as_json = client.post("/invocations", json={"image": base64.b64encode(jpeg).decode()})
    as_x_image = client.post("/invocations", content=jpeg, headers={"Content-Type": "application/x-image", "Accept": "*/*"})
    assert as_json.json() == answer and as_x_image.json() == answer

    verbose = client.post("/invocations", content=jpeg, headers={"Content-Type": "image/jpeg", "Accept": "application/json;verbose"})
    assert verbose.status_code == 200 and verbose.headers["content-type"] == "application/json;verbose"
    rows = verbose.json()["prediction"]
    assert rows and all(len(row) == 6 and 0 <= min(row[2:]) and max(row[2:]) <= 1 for row in rows)


@pytest.mark.slow
def test_boto3_sagemaker_runtime_client_calls_it_as_an_endpoint(server, client, honeybee_mini, monkeypatch, tmp_path):
    import boto3
    from botocore.config import Config

    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTESTING")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    runtime = boto3.client("sagemaker-runtime", region_name="eu-west-1", endpoint_url=server[0],
                           config=Config(retries={"total_max_attempts": 1}))
    jpeg = bee_frame(honeybee_mini).read_bytes()

    answer = runtime.invoke_endpoint(EndpointName="beedet-bees", Body=jpeg, ContentType="image/jpeg", Accept="application/json")
    direct = client.post("/invocations", content=jpeg, headers={"Content-Type": "image/jpeg"})
    assert answer["ContentType"] == "application/json"
    assert answer["Body"].read() == direct.content

    # A payload the model refuses comes back as SageMaker reports it: ModelError with the container's status.
    with pytest.raises(runtime.exceptions.ModelError) as caught:
        runtime.invoke_endpoint(EndpointName="beedet-bees", Body=b"not an image", ContentType="image/jpeg")
    assert caught.value.response["OriginalStatusCode"] == 400
    assert "not an image" in json.loads(caught.value.response["OriginalMessage"])["error"]


def _chunks(total: int):
    for _ in range(0, total, 100_000):
        yield b"\xff" * 100_000


# name -> (method, path, request kwargs, status, part of the error message)
BAD_REQUESTS = {
    "not an image": ("POST", "/invocations", {"content": b"hello bees", "headers": {"Content-Type": "image/jpeg"}}, 400, "not an image"),
    "empty body": ("POST", "/invocations", {"content": b"", "headers": {"Content-Type": "image/png"}}, 400, "empty"),
    "body over the limit": ("POST", "/invocations", {"content": b"\xff" * (MAX_BODY_BYTES + 1), "headers": {"Content-Type": "image/jpeg"}},
                            413, "over the server's limit"),
    # No Content-Length: the body arrives in chunks (a generator, made per request in the test).
    "chunked body over the limit": ("POST", "/invocations", {"headers": {"Content-Type": "image/jpeg"}}, 413, "over the server's limit"),
    "more pixels than max_pixels": ("POST", "/invocations", {"content": png_header_only(2000, 2000), "headers": {"Content-Type": "image/png"}},
                                    413, "more than the 3000000 allowed"),
    "decompression bomb": ("POST", "/invocations", {"content": png_header_only(100_000, 100_000), "headers": {"Content-Type": "image/png"}},
                           413, "too large"),
    "unsupported content type": ("POST", "/invocations", {"content": b"bees", "headers": {"Content-Type": "text/plain"}}, 415, "Content-Type"),
    "unsupported accept": ("POST", "/invocations", {"content": b"bees", "headers": {"Content-Type": "image/jpeg", "Accept": "text/html"}},
                           406, "Accept"),
    "bad json": ("POST", "/invocations", {"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "not valid JSON"),
    "json without image": ("POST", "/invocations", {"json": {"picture": "AAAA"}}, 400, '"image"'),
    "unknown path": ("GET", "/predict", {}, 404, "Not Found"),
    "wrong method": ("GET", "/invocations", {}, 405, "Method Not Allowed"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_REQUESTS, ids=str)
def test_bad_requests_get_a_4xx_json_error_and_the_server_goes_on(client, case):
    method, path, kwargs, status, message = BAD_REQUESTS[case]
    if "chunked" in case:
        kwargs = {**kwargs, "content": _chunks(3 * MAX_BODY_BYTES)}
    reply = client.request(method, path, **kwargs)
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    assert set(reply.json()) == {"error"} and message in reply.json()["error"]
    assert client.get("/ping").status_code == 200


@pytest.mark.slow
def test_a_truncated_frame_is_a_400(client, honeybee_mini):
    jpeg = bee_frame(honeybee_mini).read_bytes()
    reply = client.post("/invocations", content=jpeg[: len(jpeg) // 2], headers={"Content-Type": "image/jpeg"})
    assert reply.status_code == 400 and "truncated" in reply.json()["error"]


@pytest.mark.slow
def test_a_concurrent_burst_with_bad_requests_among_it_all_answered(server, honeybee_mini):
    """16 frames and 4 garbage payloads, 4 requests in flight at a time, loopback only: every frame
    gets the same answer as when sent alone, every garbage payload its 400, nothing else fails."""
    base, log = server
    jpeg = bee_frame(honeybee_mini).read_bytes()
    headers = {"Content-Type": "image/jpeg"}
    alone = httpx.post(f"{base}/invocations", content=jpeg, headers=headers, timeout=120)
    assert alone.status_code == 200
    bodies = [b"garbage" if i % 5 == 4 else jpeg for i in range(20)]

    def send(body: bytes) -> httpx.Response:
        return httpx.post(f"{base}/invocations", content=body, headers=headers, timeout=120)

    with ThreadPoolExecutor(max_workers=4) as pool:
        replies = list(pool.map(send, bodies))
    good = [r for body, r in zip(bodies, replies) if body is jpeg]
    bad = [r for body, r in zip(bodies, replies) if body is not jpeg]
    assert len(good) == 16 and len(bad) == 4
    assert [r.status_code for r in good] == [200] * 16
    assert all(r.content == alone.content for r in good)
    assert [r.status_code for r in bad] == [400] * 4
    assert httpx.get(f"{base}/ping", timeout=10).status_code == 200
    assert "Traceback" not in log.read_text(), log.read_text()[-4000:]


def test_serve_means_what_sagemaker_needs():
    from beedet.serve import sagemaker_argv

    assert sagemaker_argv([]) == ["model_dir=/opt/ml/model", "host=0.0.0.0", "port=8080"]
    # Overrides given after `serve` win over SageMaker's settings.
    assert sagemaker_argv(["port=9000", "score_threshold=0.5"]) == ["port=9000", "score_threshold=0.5", "model_dir=/opt/ml/model", "host=0.0.0.0"]


def test_the_server_needs_exactly_one_model(tmp_path):
    from beedet.serve import model_checkpoint

    (tmp_path / "model.ckpt").write_bytes(b"")
    assert model_checkpoint(None, str(tmp_path)) == tmp_path / "model.ckpt"
    assert model_checkpoint("best.ckpt", None) == Path("best.ckpt")
    for ckpt, model_dir in [(None, None), ("best.ckpt", str(tmp_path))]:
        with pytest.raises(SystemExit, match="exactly one of ckpt=PATH"):
            model_checkpoint(ckpt, model_dir)


@pytest.mark.slow
def test_a_server_that_cannot_start_says_why(tmp_path):
    from beedet.serving.local_server import ServerStartError, running_server

    missing = tmp_path / "no-such.ckpt"
    with pytest.raises(ServerStartError, match="exited with status") as info:
        with running_server([f"ckpt={missing}"], log_path=tmp_path / "serve.log", timeout=120):
            pass
    # The message carries beedet.serve's own log, which names the missing file.
    assert str(missing) in str(info.value)
