"""beedet.serving.handlers on their own: model_fn / input_fn / predict_fn / output_fn as SageMaker's
inference toolkit calls them, on a real 1920x1080 hive frame, with every content type, both answer
formats and every kind of bad request."""

from __future__ import annotations

import base64
import inspect
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from beedet.data.images import load_image
from beedet.inference.detections import detections_document, score_threshold_for
from beedet.serving import handlers
from beedet.serving.handlers import (
    Prediction,
    RequestError,
    answer_format,
    decode_request,
    input_fn,
    model_fn,
    output_fn,
    predict_fn,
)


def bee_frame(honeybee_mini: Path) -> Path:
    """The first 1920x1080 hive frame of honeybee-mini's valid split."""
    return next(p for p in sorted((honeybee_mini / "valid" / "images").glob("*.jpg")) if Image.open(p).size == (1920, 1080))


def encoded(pixels: np.ndarray, fmt: str, **save_args) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **save_args)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A few dozen bytes of PNG whose header announces width x height RGB pixels (a decompression
    bomb's header; the pixel data is left out, so decoding it would fail as truncated)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint, tmp_path_factory) -> Path:
    """A model directory as SageMaker unpacks model.tar.gz: model.ckpt at its top level."""
    folder = tmp_path_factory.mktemp("model")
    (folder / "model.ckpt").symlink_to(tiny_checkpoint)
    return folder


@pytest.fixture(scope="module")
def detector(model_dir):
    return model_fn(str(model_dir))


def test_handlers_have_the_toolkits_signatures():
    """The inference toolkit counts parameters: one more than it passes means 'give me the context'."""
    counts = {name: len(inspect.signature(getattr(handlers, name)).parameters)
              for name in ("model_fn", "input_fn", "predict_fn", "output_fn")}
    assert counts == {"model_fn": 1, "input_fn": 2, "predict_fn": 2, "output_fn": 2}


@pytest.mark.slow
def test_model_fn_loads_the_artifacts_checkpoint_at_its_count_threshold(detector, tiny_checkpoint):
    checkpoint = torch.load(tiny_checkpoint, map_location="cpu", weights_only=False)
    assert detector.class_names == checkpoint["beedet"]["class_names"]
    assert detector.score_threshold == score_threshold_for(checkpoint["beedet"].get("count_threshold"))
    assert not detector.system.training


def test_model_fn_says_what_the_folder_holds_instead(tmp_path):
    (tmp_path / "best.ckpt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"model\.ckpt.*best\.ckpt"):
        model_fn(str(tmp_path))


@pytest.mark.slow
def test_a_jpeg_frame_gets_beedet_json_as_beedet_predict_writes_it(detector, honeybee_mini):
    frame = bee_frame(honeybee_mini)
    body, content_type = output_fn(predict_fn(input_fn(frame.read_bytes(), "image/jpeg"), detector), "application/json")
    assert content_type == "application/json"
    answer = json.loads(body)
    assert set(answer) == {"width", "height", "detections", "counts", "score_threshold"}
    assert (answer["width"], answer["height"]) == (1920, 1080)
    assert answer["score_threshold"] == detector.score_threshold
    # The same detections beedet.predict writes for this file: one decoding, one detect, one document.
    image = torch.from_numpy(load_image(frame).copy()).permute(2, 0, 1).float().div(255)
    expected = detections_document((1920, 1080), detector.system.detect([image])[0], detector.class_names, detector.score_threshold)
    assert answer["detections"] == expected["detections"] and answer["counts"] == expected["counts"]
    assert sum(answer["counts"].values()) == len(answer["detections"])
    for det in answer["detections"]:
        x1, y1, x2, y2 = det["box"]
        assert 0 <= x1 <= x2 <= 1920 and 0 <= y1 <= y2 <= 1080
        assert det["class"] == detector.class_names[det["label"]] and det["score"] >= detector.score_threshold


@pytest.mark.slow
def test_every_content_type_carries_the_same_image(detector, honeybee_mini):
    frame = bee_frame(honeybee_mini)
    jpeg = frame.read_bytes()
    pixels = input_fn(jpeg, "image/jpeg")
    assert pixels.shape == (1080, 1920, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(input_fn(jpeg, "application/x-image"), pixels)
    np.testing.assert_array_equal(input_fn(jpeg, "Image/JPEG; charset=binary"), pixels)
    np.testing.assert_array_equal(input_fn(encoded(pixels, "PNG", compress_level=1), "image/png"), pixels)
    b64 = base64.b64encode(jpeg).decode("ascii")
    np.testing.assert_array_equal(input_fn(json.dumps({"image": b64}).encode(), "application/json"), pixels)
    # As the inference toolkit passes JSON (decoded text), with line-wrapped base64, as a data URL.
    wrapped = "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76))
    np.testing.assert_array_equal(input_fn(json.dumps({"image": wrapped}), "application/json"), pixels)
    np.testing.assert_array_equal(input_fn(json.dumps({"image": "data:image/jpeg;base64," + b64}), "application/json"), pixels)
    # As TorchServe passes JSON when it decodes request bodies itself.
    np.testing.assert_array_equal(input_fn({"image": b64}, "application/json"), pixels)


@pytest.mark.slow
def test_boxes_are_in_pixels_of_the_image_as_displayed(detector):
    """A portrait phone photo: stored 64x32 with EXIF orientation 6, displayed 32 wide, 64 high."""
    exif = Image.Exif()
    exif[0x0112] = 6
    body = encoded(np.full((32, 64, 3), 128, np.uint8), "JPEG", exif=exif.tobytes())
    answer = json.loads(output_fn(predict_fn(input_fn(body, "image/jpeg"), detector), "application/json")[0])
    assert (answer["width"], answer["height"]) == (32, 64)


@pytest.mark.slow
def test_verbose_is_the_builtin_detectors_format(detector, honeybee_mini):
    prediction = predict_fn(input_fn(bee_frame(honeybee_mini).read_bytes(), "image/jpeg"), detector)
    body, content_type = output_fn(prediction, "application/json;verbose")
    assert content_type == "application/json;verbose"
    for spelling in ("application/json; verbose", "text/html, application/json;verbose"):
        assert output_fn(prediction, spelling) == (body, content_type)
    rows = json.loads(body)["prediction"]
    # Every detection (the client thresholds, as with the built-in algorithm), best first.
    assert len(rows) == len(prediction.scores) > 0
    assert [row[1] for row in rows] == sorted((row[1] for row in rows), reverse=True)
    for class_id, score, *box in rows:
        assert isinstance(class_id, float) and class_id.is_integer() and 0 <= class_id < len(detector.class_names)
        assert 0 <= box[0] <= box[2] <= 1 and 0 <= box[1] <= box[3] <= 1
    best = int(torch.argmax(prediction.scores))
    x1, y1, x2, y2 = prediction.boxes[best].tolist()
    assert rows[0][0] == float(prediction.labels[best])
    assert rows[0][2:] == pytest.approx([x1 / 1920, y1 / 1080, x2 / 1920, y2 / 1080], abs=1e-6)


@pytest.mark.parametrize(("accept", "chosen"), [
    (None, ("application/json", "beedet")),
    ("", ("application/json", "beedet")),
    ("*/*", ("application/json", "beedet")),
    ("application/*", ("application/json", "beedet")),
    ("application/json", ("application/json", "beedet")),
    ("APPLICATION/JSON;VERBOSE", ("application/json;verbose", "builtin")),
    ("application/json;q=0.2, application/json;verbose", ("application/json;verbose", "builtin")),
    ("application/json;verbose;q=0.1, application/json;q=0.9", ("application/json", "beedet")),
    ("application/json;format=builtin", ("application/json", "builtin")),
    ("application/jsonlines", ("application/jsonlines", "beedet")),
    ("application/jsonlines;format=builtin", ("application/jsonlines", "builtin")),
])
def test_accept_negotiation(accept, chosen):
    assert answer_format(accept) == chosen


@pytest.mark.parametrize(("accept", "chosen"), [
    (None, ("application/json", "builtin")),
    ("*/*", ("application/json", "builtin")),
    ("application/json", ("application/json", "builtin")),
    ("application/json;format=beedet", ("application/json", "beedet")),
    ("application/jsonlines", ("application/jsonlines", "builtin")),
])
def test_a_builtin_endpoint_answers_plain_json_as_the_builtin_did(accept, chosen):
    assert answer_format(accept, "builtin") == chosen


def _fake_prediction(json_format: str) -> Prediction:
    return Prediction(width=200, height=100, boxes=torch.tensor([[10.0, 20.0, 50.0, 60.0], [0.0, 0.0, 20.0, 10.0]]),
                      scores=torch.tensor([0.2, 0.9]), labels=torch.tensor([1, 0]), class_names=["bee", "drone"],
                      score_threshold=0.5, json_format=json_format)


def test_output_documents_for_each_format_and_json_lines():
    builtin = _fake_prediction("builtin")
    body, content_type = output_fn(builtin, "application/json")
    assert content_type == "application/json"
    assert json.loads(body) == {"prediction": [[0.0, 0.9, 0.0, 0.0, 0.1, 0.1], [1.0, 0.2, 0.05, 0.2, 0.25, 0.6]]}
    mine = json.loads(output_fn(builtin, "application/json;format=beedet")[0])
    assert [d["class"] for d in mine["detections"]] == ["bee"] and mine["counts"] == {"bee": 1, "drone": 0}
    # Batch transform: one document per line, newline-terminated, whatever the document.
    lines, content_type = output_fn(_fake_prediction("beedet"), "application/jsonlines")
    assert content_type == "application/jsonlines" and lines.endswith(b"\n") and lines.count(b"\n") == 1
    assert json.loads(lines) == json.loads(output_fn(_fake_prediction("beedet"), "application/json")[0])


@pytest.mark.parametrize("accept", ["text/html", "image/png, text/csv", "application/json;q=0"])
def test_an_accept_without_either_format_is_406(accept):
    with pytest.raises(RequestError) as caught:
        answer_format(accept)
    assert caught.value.status_code == 406 and "format=builtin" in str(caught.value)
    assert "application/jsonlines" in str(caught.value)


def test_request_errors_look_like_the_toolkits():
    """status_code, message and phrase: what sagemaker_inference's handle_error reads."""
    err = RequestError(415, "no")
    assert (err.status_code, err.message, err.phrase, str(err)) == (415, "no", "no", "no")


BAD_REQUESTS = {
    "not an image": (b"just some text, not an image", "image/jpeg", 400, "not an image"),
    "empty body": (b"", "image/png", 400, "empty"),
    "unsupported content type": (b"x", "text/plain", 415, "unsupported Content-Type"),
    "form upload": (b"image=...", "multipart/form-data; boundary=x", 415, "unsupported Content-Type"),
    "json not json": (b"{'image': 1", "application/json", 400, "not valid JSON"),
    "json without image": (b'{"img": "AAAA"}', "application/json", 400, r"must be an object \{\"image\""),
    "json image not a string": (b'{"image": [1, 2]}', "application/json", 400, "base64 string"),
    "json bad base64": (b'{"image": "not base64!"}', "application/json", 400, "not valid base64"),
    "json of garbage": (json.dumps({"image": base64.b64encode(b"garbage").decode()}).encode(), "application/json", 400,
                        'JSON "image": not an image'),
    "decompression bomb": (png_header_only(100_000, 100_000), "image/png", 413, "too large"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=str)
def test_bad_requests_get_a_4xx_that_says_why(case):
    body, content_type, status, message = BAD_REQUESTS[case]
    with pytest.raises(RequestError, match=message) as caught:
        input_fn(body, content_type)
    assert caught.value.status_code == status


def test_a_truncated_frame_is_a_400(honeybee_mini):
    jpeg = bee_frame(honeybee_mini).read_bytes()
    with pytest.raises(RequestError, match="truncated") as caught:
        input_fn(jpeg[: len(jpeg) // 2], "image/jpeg")
    assert caught.value.status_code == 400


def test_the_pixel_limit_refuses_before_decoding():
    """A header announcing 4 MP is refused at max_pixels=3 MP (decoding would fail: no pixel data),
    and a real 64x64 image at max_pixels=4000."""
    with pytest.raises(RequestError, match="4000000 pixels, more than the 3000000 allowed") as caught:
        decode_request(png_header_only(2000, 2000), "image/png", max_pixels=3_000_000)
    assert caught.value.status_code == 413
    small = encoded(np.zeros((64, 64, 3), np.uint8), "PNG")
    assert decode_request(small, "image/png", max_pixels=4096).shape == (64, 64, 3)
    with pytest.raises(RequestError, match="more than the 4000 allowed"):
        decode_request(small, "image/png", max_pixels=4000)


def test_only_photo_formats_are_decoded():
    """Pillow reads many formats; a request may only use the photo ones (the others are attack surface)."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "ICO")
    with pytest.raises(RequestError, match="not an image") as caught:
        input_fn(buffer.getvalue(), "application/x-image")
    assert caught.value.status_code == 400


@pytest.mark.slow
def test_a_model_artifacts_inference_py_answers_a_bee_frame_on_its_own(tiny_checkpoint, detector, honeybee_mini, tmp_path):
    """What SageMaker's PyTorch container does with a training job's model.tar.gz: code/ on sys.path,
    import inference, model_fn(model_dir), then one request, in a fresh interpreter that imports
    the artifact's own copy of beedet."""
    from beedet.sagemaker.artifact import write_model_artifact

    model = write_model_artifact(tmp_path / "model", tiny_checkpoint)
    code = model / "code"
    script = (
        "import json, pathlib, sys, inference, beedet\n"
        f"assert pathlib.Path(beedet.__file__).is_relative_to({str(code)!r}), beedet.__file__\n"
        f"model = inference.model_fn({str(model)!r})\n"
        f"body = pathlib.Path({str(bee_frame(honeybee_mini))!r}).read_bytes()\n"
        "answer, content_type = inference.output_fn(inference.predict_fn(inference.input_fn(body, 'image/jpeg'), model), 'application/json')\n"
        "print(content_type); print(answer.decode())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(code)}
    proc = subprocess.run([sys.executable, "-c", script], check=False, cwd=code, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    content_type, answer = proc.stdout.strip().splitlines()[-2:]
    assert content_type == "application/json"
    answer = json.loads(answer)
    assert (answer["width"], answer["height"]) == (1920, 1080) and list(answer["counts"]) == detector.class_names
