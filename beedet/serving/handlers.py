"""SageMaker inference handlers for a trained beedet detector, and the request/response contract.

SageMaker's PyTorch serving container calls, per model and per request (a model artifact's
``code/inference.py`` re-exports these; ``beedet.serving.app`` serves the same contract locally)::

    model = model_fn(model_dir)                    # once: <model_dir>/model.ckpt -> Detector
    data = input_fn(body, content_type)            # request body -> uint8 (H, W, 3) RGB array
    prediction = predict_fn(data, model)           # -> Prediction (every detection the model made)
    body, content_type = output_fn(prediction, accept)

Request (``Content-Type``):
  ``image/jpeg``, ``image/png``, ``application/x-image``: the image file's bytes. Decoded by
  content (JPEG, PNG, BMP, TIFF or WebP, whichever the bytes are), as ``beedet.data.images`` reads
  files: EXIF orientation applied, any pixel format converted to RGB; a missing Content-Type means
  ``application/x-image``.
  ``application/json``: ``{"image": "<base64 of the image file's bytes>"}``; whitespace in the
  base64 is ignored and a ``data:image/...;base64,`` prefix is allowed.

Response (``Accept``):
  ``application/json`` (also a missing Accept, ``*/*``, ``application/*``): the detector's JSON
  format (:attr:`Detector.json_format`): ``beedet`` unless the model was trained with the built-in
  algorithm's hyperparameter names (its config's ``endpoint_json``) or the endpoint's
  ``BEEDET_JSON_FORMAT`` variable says ``builtin``. ``application/json;format=beedet`` and
  ``application/json;format=builtin`` ask for one by name.
  ``application/jsonlines``: the same document on one line ending in a newline, what a batch
  transform job (``AssembleWith=Line``) writes per record.

  beedet JSON: the detections at or above the detector's score threshold (by default the checkpoint's
  count threshold, as ``beedet.predict``; see ``beedet.inference.detections``)::

      {"width": W, "height": H,
       "detections": [{"box": [x1, y1, x2, y2], "label": 0, "class": "bee", "score": 0.93}, ...],
       "counts": {"bee": n, ...}, "score_threshold": 0.41}

  with boxes in pixels of the image as sent (after EXIF orientation) and ``label`` the 0-based class
  id (0 is the first real class, not background).
  builtin (also ``application/json;verbose``, the JumpStart spelling): the SageMaker built-in Object
  Detection algorithm's format, so clients written for it keep working: ``{"prediction": [[class_id, score, xmin, ymin, xmax, ymax],
  ...]}`` with class_id a float (``0.0`` is the first class, "bee"), coordinates divided by the image's width and
  height (0..1), every detection the model made, highest score first: like the built-in
  algorithm, it leaves the thresholding to the client. The answer's Content-Type is the media type
  chosen (``application/json`` or ``application/jsonlines``).

Errors raise :class:`RequestError` with an HTTP status: 400 (not an image, truncated or corrupt,
bad JSON or base64, empty body), 413 (more pixels than ``max_pixels``: a decompression bomb),
415 (unsupported Content-Type), 406 (an Accept that allows neither format). In SageMaker's
containers it is the inference toolkit's ``BaseInferenceToolkitError``, so the toolkit answers with
that status instead of a 500; ``beedet.serving.app`` answers ``{"error": message}``.

Every image goes through ``DetectionModule.detect``: a large frame is sliced into native-resolution
tiles when the checkpoint was trained with slicing (``beedet.inference.tiling``), else squashed whole into the
network's input, as validation did. The handlers keep SageMaker's exact signatures (the
toolkit counts their parameters); limits other than the defaults go through :func:`decode_request`.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from beedet.assembly import load_system
from beedet.data.images import DEFAULT_MAX_PIXELS, ImageError, ImageTooLarge, decode_image
from beedet.inference.detections import detections_document, score_threshold_for
from beedet.training.system import DetectionModule

try:
    # In SageMaker's serving containers the inference toolkit answers this exception type with its
    # status code; any other exception becomes a 500.
    from sagemaker_inference.errors import BaseInferenceToolkitError as _StatusError
except ImportError:  # elsewhere: the same constructor and attributes

    class _StatusError(Exception):  # type: ignore[no-redef]
        def __init__(self, status_code: int, message: str, phrase: str) -> None:
            self.status_code = status_code
            self.message = message
            self.phrase = phrase
            super().__init__(status_code, message, phrase)


JSON = "application/json"
VERBOSE_JSON = "application/json;verbose"
JSONLINES = "application/jsonlines"
# The two JSON documents an endpoint answers with (module docstring).
BEEDET_FORMAT, BUILTIN_FORMAT = "beedet", "builtin"
JSON_FORMATS = (BEEDET_FORMAT, BUILTIN_FORMAT)
# The endpoint variable that chooses the answer to plain application/json at deploy time.
JSON_FORMAT_VARIABLE = "BEEDET_JSON_FORMAT"
IMAGE_CONTENT_TYPES = ("image/jpeg", "image/png", "application/x-image")
CONTENT_TYPES = (*IMAGE_CONTENT_TYPES, JSON)
# Pillow decoders a request may use; the others (PSD, ICNS, FLI, ...) are attack surface, not bee photos.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP")
# DEFAULT_MAX_PIXELS (40 MP) comes from beedet.data.images: one limit for every decode (training,
# predict, inspect and serving); beedet.serving.app imports it from here.
# The checkpoint inside a model artifact (beedet.sagemaker.artifact).
CHECKPOINT_NAME = "model.ckpt"


class RequestError(_StatusError):
    """A request the detector cannot answer; ``status_code`` is the HTTP status (4xx), ``message``
    (also ``str()``) says what is wrong and what to send instead."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(status_code, message, message)

    def __str__(self) -> str:
        return self.message


@dataclass
class Detector:
    """What :func:`model_fn` returns: a trained system in eval mode, on its device, the score
    threshold of its beedet JSON answers, and ``json_format``, the document plain
    ``application/json`` gets (``beedet`` or ``builtin``)."""

    system: DetectionModule
    score_threshold: float
    json_format: str = BEEDET_FORMAT

    def __post_init__(self) -> None:
        if self.json_format not in JSON_FORMATS:
            raise ValueError(f"json_format must be one of {JSON_FORMATS}, got {self.json_format!r}")

    @property
    def class_names(self) -> list[str]:
        return self.system.class_names

    @property
    def device(self) -> torch.device:
        return self.system.device


@dataclass(frozen=True)
class Prediction:
    """What :func:`predict_fn` returns: every detection the model made on one image, on the CPU.
    ``boxes`` float (N, 4) xyxy in pixels of the image of ``width`` x ``height``; ``scores`` (N,);
    ``labels`` int64 (N,) 0-based class ids into ``class_names``."""

    width: int
    height: int
    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    score_threshold: float
    json_format: str = BEEDET_FORMAT


def load_detector(ckpt: str | os.PathLike, *, slicing: DictConfig | None = None, tta: DictConfig | None = None,
                  score_threshold: float | None = None,
                  device: str | torch.device | None = None, json_format: str | None = None) -> Detector:
    """A :class:`Detector` from a beedet checkpoint. ``slicing``: a ``conf/slicing`` config replacing
    the checkpoint's (None keeps it); ``tta``: a ``conf/tta`` config replacing its test-time
    flips (None keeps them); ``score_threshold``: None means the checkpoint's count
    threshold (``beedet.inference.detections.score_threshold_for``); ``device``: None picks CUDA when there is
    one; ``json_format``: None means the ``BEEDET_JSON_FORMAT`` variable, else the checkpoint config's
    ``endpoint_json``, else beedet."""
    system, run_cfg = load_system(ckpt, slicing, tta)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    threshold = score_threshold if score_threshold is not None else score_threshold_for(system.count_threshold)
    if json_format is None:
        json_format = os.environ.get(JSON_FORMAT_VARIABLE) or run_cfg.get("endpoint_json") or BEEDET_FORMAT
    return Detector(system=system.to(device), score_threshold=float(threshold), json_format=str(json_format).lower())


def checkpoint_in(model_dir: str | os.PathLike) -> Path:
    """``<model_dir>/model.ckpt``, the checkpoint of a model artifact; FileNotFoundError saying
    what the folder holds instead when it is missing."""
    ckpt = Path(model_dir) / CHECKPOINT_NAME
    if not ckpt.is_file():
        held = sorted(p.name for p in Path(model_dir).iterdir()) if Path(model_dir).is_dir() else "no such folder"
        raise FileNotFoundError(f"{ckpt}: no beedet checkpoint in the model directory (it holds: {held}); "
                                f"a beedet training job's model.tar.gz has {CHECKPOINT_NAME} at its top level")
    return ckpt


def model_fn(model_dir: str) -> Detector:
    """The detector of a model artifact: ``<model_dir>/model.ckpt``, at its count threshold, on CUDA
    when there is one."""
    return load_detector(checkpoint_in(model_dir))


def media_type(header: str | None) -> str:
    """``"image/jpeg"`` of ``"Image/JPEG; charset=x"``: the lower-case type without parameters."""
    return (header or "").split(";", 1)[0].strip().lower()


def decode_request(body: bytes | str | dict, content_type: str | None, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The request's image as uint8 (H, W, 3) RGB, as displayed. ``body``: the raw request body
    (for JSON also its text, as the SageMaker toolkit passes it, or the parsed object). Raises :class:`RequestError`
    (see the module docstring), 413 when the image has more than ``max_pixels`` pixels."""
    media = media_type(content_type) or "application/x-image"
    if media not in CONTENT_TYPES:
        raise RequestError(415, f"unsupported Content-Type {content_type!r}: send the image file's bytes as "
                                f"{', '.join(IMAGE_CONTENT_TYPES)}, or {JSON} with {{\"image\": \"<base64>\"}}")
    if media == JSON:
        data, name = _image_from_json(body), 'the JSON "image"'
    else:
        data, name = (body.encode() if isinstance(body, str) else bytes(body)), "the request body"
    if not data:
        raise RequestError(400, f"{name} is empty: send the bytes of an image file")
    try:
        return decode_image(data, name, max_pixels=max_pixels, formats=IMAGE_FORMATS)
    except ImageTooLarge as err:
        raise RequestError(413, f"{err}; send a smaller image") from err
    except ImageError as err:
        raise RequestError(400, str(err)) from err


def input_fn(body: bytes | str | dict, content_type: str) -> np.ndarray:
    """SageMaker's input handler: :func:`decode_request` with :data:`DEFAULT_MAX_PIXELS`."""
    return decode_request(body, content_type)


def predict_fn(data: np.ndarray, model: Detector) -> Prediction:
    """Every detection ``model`` makes on ``data`` (uint8 (H, W, 3) RGB, as :func:`input_fn` returns)."""
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 3 and data.shape[2] == 3):
        raise TypeError(f"predict_fn takes a uint8 (H, W, 3) RGB array as input_fn returns, got {type(data).__name__} "
                        f"{getattr(data, 'dtype', '')} {getattr(data, 'shape', '')}")
    # uint8 to the device first: a quarter of the bytes of the float image.
    image = torch.tensor(data).to(model.device).permute(2, 0, 1).float().div_(255)
    detections = model.system.detect([image])[0]
    return Prediction(
        width=int(data.shape[1]), height=int(data.shape[0]),
        boxes=detections["boxes"].float().cpu(), scores=detections["scores"].float().cpu(),
        labels=detections["labels"].long().cpu(), class_names=list(model.class_names),
        score_threshold=model.score_threshold, json_format=model.json_format,
    )


def answer_format(accept: str | None, json_format: str = BEEDET_FORMAT) -> tuple[str, str]:
    """``(Content-Type, document)`` for an Accept header: the Content-Type :data:`JSON`,
    :data:`VERBOSE_JSON` (asked for so) or :data:`JSONLINES`, the document ``beedet`` or ``builtin`` (``json_format`` where the header
    names none). Media ranges are weighed by their q values, the first of equals wins; raises
    :class:`RequestError` 406 when the header allows none of them."""
    if accept is None or not accept.strip():
        return JSON, json_format
    best, best_q = None, 0.0
    for item in accept.split(","):
        media, *params = [part.strip().lower() for part in item.split(";")]
        q, document, verbose = 1.0, json_format, False
        for param in params:
            key, _, value = param.partition("=")
            key, value = key.strip(), value.strip().strip('"')
            if key == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
            elif key == "verbose":
                document, verbose = BUILTIN_FORMAT, True
            elif key == "format" and value in JSON_FORMATS:
                document = value
        if media in (JSON, JSONLINES):
            # ;verbose (JumpStart's spelling) comes back as the Content-Type, as clients of it expect.
            offer = (VERBOSE_JSON if verbose and media == JSON else media, document)
        elif media in ("*/*", "application/*"):
            offer = (JSON, json_format)
        else:
            continue
        if q > best_q:
            best, best_q = offer, q
    if best is None:
        raise RequestError(406, f"unsupported Accept {accept!r}: the detector answers {JSON} ({json_format} JSON; "
                                f"{JSON};format=beedet or {JSON};format=builtin to choose) or {JSONLINES}")
    return best


def output_fn(prediction: Prediction, accept: str) -> tuple[bytes, str]:
    """The answer's bytes and Content-Type in the format ``accept`` asks for (module docstring)."""
    media, kind = answer_format(accept, prediction.json_format)
    document = verbose_document(prediction) if kind == BUILTIN_FORMAT else beedet_document(prediction)
    text = json.dumps(document, separators=(",", ":"))
    return (text + "\n" if media == JSONLINES else text).encode("utf-8"), media


def beedet_document(prediction: Prediction) -> dict:
    """beedet JSON: the detections at or above ``prediction.score_threshold``, in pixels."""
    detections = {"boxes": prediction.boxes, "scores": prediction.scores, "labels": prediction.labels}
    document = detections_document((prediction.width, prediction.height), detections, prediction.class_names,
                                   prediction.score_threshold)
    return {**document, "score_threshold": prediction.score_threshold}


def verbose_document(prediction: Prediction) -> dict:
    """The built-in Object Detection algorithm's ``{"prediction": [[class_id, score, xmin, ymin,
    xmax, ymax], ...]}``: every detection, highest score first, coordinates normalised to 0..1."""
    order = torch.argsort(prediction.scores, descending=True, stable=True)
    scale = torch.tensor([prediction.width, prediction.height, prediction.width, prediction.height], dtype=torch.float32)
    boxes = (prediction.boxes[order] / scale).clamp_(0.0, 1.0).tolist()
    rows = [
        [float(label), round(score, 6), *(round(v, 6) for v in box)]
        for label, score, box in zip(prediction.labels[order].tolist(), prediction.scores[order].tolist(), boxes)
    ]
    return {"prediction": rows}


def _image_from_json(body: bytes | str | dict) -> bytes:
    try:
        # A dict: TorchServe parses JSON bodies itself unless decode_input_request=false.
        document = body if isinstance(body, dict) else json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise RequestError(400, f'the application/json body is not valid JSON ({err}); send {{"image": "<base64>"}}') from None
    if not isinstance(document, dict) or "image" not in document:
        raise RequestError(400, 'the application/json body must be an object {"image": "<base64 of the image file>"}, '
                                f"got {type(document).__name__}" + (f" with keys {sorted(document)}" if isinstance(document, dict) else ""))
    encoded = document["image"]
    if not isinstance(encoded, str):
        raise RequestError(400, f'"image" must be a base64 string, got {type(encoded).__name__}')
    if encoded.startswith("data:") and "," in encoded:  # a data URL: data:image/png;base64,....
        encoded = encoded.split(",", 1)[1]
    try:
        return base64.b64decode("".join(encoded.split()), validate=True)
    except (binascii.Error, ValueError) as err:
        raise RequestError(400, f'"image" is not valid base64 ({err})') from None
