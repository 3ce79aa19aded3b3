"""beedet.serving.app in-process, with fake detectors that fail or stall on purpose: what a caller
learns from a 500 (nothing but an ID; the log has the rest), the inference timeout (a 503, queued
requests dropped, never two model runs at once), and its way from conf/serve.yaml to create_app.

The app is driven through httpx's ASGI transport in one event loop, so the tests need no port, no
subprocess and no trained model; tests/test_server.py covers the real server over loopback HTTP."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Callable

import httpx
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from helpers import CONF, compose_config

from beedet.serving.app import DEFAULT_INFERENCE_TIMEOUT_S, create_app
from beedet.serving.handlers import Detector

SECRET = "secret /opt/ml/model/internal-weights.pt"


class FakeSystem:
    """What predict_fn uses of a DetectionModule: ``device``, ``class_names`` and ``detect``,
    which calls ``run(images)``; ``inference_mode`` for beedet.serve's start-up log line."""

    def __init__(self, run: Callable[[list[torch.Tensor]], None]) -> None:
        self.run = run
        self.device = torch.device("cpu")
        self.class_names = ["bee"]
        self.inference_mode = "whole-frame inference"

    def detect(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        self.run(images)
        return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}]


def fake_detector(run: Callable[[list[torch.Tensor]], None]) -> Detector:
    return Detector(system=FakeSystem(run), score_threshold=0.5)  # type: ignore[arg-type]


def png(width: int, height: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 128, dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def post(app, *bodies: bytes, path: str = "/invocations", stagger_until: threading.Event | None = None) -> list[httpx.Response]:
    """POST each body as image/png to ``app``, all at once in one event loop; with ``stagger_until``
    the later ones are sent only once that event is set (e.g. the first one's model run started)."""

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://beedet", timeout=30) as client:
            first = asyncio.create_task(client.post(path, content=bodies[0], headers={"Content-Type": "image/png"}))
            if stagger_until is not None:
                assert await asyncio.to_thread(stagger_until.wait, 10), "the first request never reached the model"
            rest = [asyncio.create_task(client.post(path, content=b, headers={"Content-Type": "image/png"})) for b in bodies[1:]]
            return [await first, *[await r for r in rest]]

    return asyncio.run(scenario())


# --- internal errors: a generic 500, the details in the log --------------------------------------


def test_an_internal_error_answers_500_without_its_details_and_logs_them(caplog):
    # The two requests run concurrently, so which reaches the model first is up to the event loop:
    # the failure is tied to the image (9 px wide fails, 8 px wide works), not to the call order.
    def fail_on_nine_pixels_wide(images):
        if images[0].shape[-1] == 9:
            raise RuntimeError(SECRET)

    app = create_app(fake_detector(fail_on_nine_pixels_wide))
    with caplog.at_level("INFO", logger="beedet.serving"):
        failed, after = post(app, png(9), png(8))
    assert failed.status_code == 500 and failed.headers["content-type"] == "application/json"
    answer = failed.json()
    assert set(answer) == {"error", "request_id"} and answer["error"] == "internal error"
    assert "secret" not in failed.text and "/opt/ml" not in failed.text and "RuntimeError" not in failed.text
    # The log has everything, under the ID the caller got.
    assert SECRET in caplog.text and "Traceback" in caplog.text and answer["request_id"] in caplog.text
    # The server goes on serving.
    assert after.status_code == 200 and after.json()["detections"] == []


def test_an_internal_error_through_invoke_endpoint_leaks_nothing_either():
    def fail(images):
        raise RuntimeError(SECRET)

    (reply,) = post(create_app(fake_detector(fail)), png(8), path="/endpoints/beedet-bees/invocations")
    assert reply.status_code == 424 and reply.headers["x-amzn-ErrorType"] == "ModelError"
    assert reply.json()["OriginalStatusCode"] == 500
    assert "secret" not in reply.text and "/opt/ml" not in reply.text


def test_bad_input_keeps_its_useful_4xx_message():
    app = create_app(fake_detector(lambda images: None), max_pixels=100)
    not_an_image, too_many_pixels = post(app, b"hello bees", png(20, 20))
    assert not_an_image.status_code == 400 and "not an image" in not_an_image.json()["error"]
    assert too_many_pixels.status_code == 413 and "more than the 100 allowed" in too_many_pixels.json()["error"]
    assert set(not_an_image.json()) == set(too_many_pixels.json()) == {"error"}


# --- the inference timeout ------------------------------------------------------------------------


class SlowModel:
    """A model whose runs wait until ``release`` is set; records each run's image width and the
    most runs ever under way at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.widths: list[int] = []
        self.running = 0
        self.most_running = 0
        self.finished = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, images: list[torch.Tensor]) -> None:
        with self._lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            self.widths.append(int(images[0].shape[-1]))
        self.started.set()
        try:
            self.release.wait(10)
        finally:
            with self._lock:
                self.running -= 1
            self.finished.set()


def test_a_slow_model_answers_503_in_time_and_the_server_goes_on():
    model = SlowModel()
    app = create_app(fake_detector(model), inference_timeout_s=0.3)
    start = time.monotonic()
    (slow,) = post(app, png(8))
    assert time.monotonic() - start < 5, "the timeout did not cut the wait short"
    assert slow.status_code == 503, slow.text
    answer = slow.json()
    assert set(answer) == {"error", "request_id"} and "0.3 s" in answer["error"] and "try again" in answer["error"]
    model.release.set()
    (after,) = post(app, png(8))
    assert after.status_code == 200


def test_a_request_queued_behind_a_stalled_run_times_out_without_running():
    """A runs (stalled), B waits behind it: both get 503. B never reaches the model, and C, sent
    after A's run ended, runs alone: a timed-out run never overlaps the next one."""
    model = SlowModel()
    app = create_app(fake_detector(model), inference_timeout_s=0.3)
    a, b = post(app, png(8), png(9), stagger_until=model.started)
    assert (a.status_code, b.status_code) == (503, 503), (a.text, b.text)
    model.release.set()
    assert model.finished.wait(10)
    (c,) = post(app, png(10))
    assert c.status_code == 200
    assert model.widths == [8, 10]
    assert model.most_running == 1


def test_no_timeout_waits_for_the_model():
    model = SlowModel()
    threading.Timer(0.5, model.release.set).start()
    (reply,) = post(create_app(fake_detector(model), inference_timeout_s=None), png(8))
    assert reply.status_code == 200


@pytest.mark.parametrize("timeout", [0, -1.0])
def test_the_timeout_must_be_positive(timeout):
    with pytest.raises(ValueError, match="inference_timeout_s"):
        create_app(fake_detector(lambda images: None), inference_timeout_s=timeout)


def test_serve_yaml_sets_the_timeout_and_beedet_serve_passes_it_on(monkeypatch):
    assert OmegaConf.load(CONF / "serve.yaml").inference_timeout_s == DEFAULT_INFERENCE_TIMEOUT_S
    from beedet import serve

    given: dict = {}
    monkeypatch.setattr(serve, "keep_freed_memory", lambda: True)
    monkeypatch.setattr(serve, "load_detector", lambda *args, **kwargs: fake_detector(lambda images: None))
    monkeypatch.setattr(serve, "create_app", lambda detector, **kwargs: given.update(kwargs) or "app")
    monkeypatch.setattr(serve.uvicorn, "run", lambda app, **kwargs: None)
    serve.main(compose_config(["ckpt=best.ckpt", "inference_timeout_s=7.5"], config_name="serve"))
    assert given["inference_timeout_s"] == 7.5
