"""The SageMaker inference container's HTTP contract as a FastAPI app, for one loaded detector.

    GET  /ping                                  200 {"status": "ok"} once the model is loaded
    POST /invocations                           the handlers' contract (beedet.serving.handlers)
    POST /endpoints/{endpoint_name}/invocations the same, addressed as SageMaker runtime's
                                                InvokeEndpoint: boto3's ``sagemaker-runtime`` client
                                                with ``endpoint_url=http://HOST:PORT`` calls it

A bad request gets a 4xx and ``{"error": "<what is wrong>"}``: 400 not an image / truncated /
bad JSON, 413 body over ``max_body_bytes`` or image over ``max_pixels``, 415 Content-Type, 406
Accept. A request the model does not answer within ``inference_timeout_s`` gets a 503
``{"error": "<the limit; try again>", "request_id": ID}``. An unexpected failure gets a 500
``{"error": "internal error", "request_id": ID}`` and nothing more: exception text and tracebacks
name files, paths and internals, so they go to the server's log only, under the same ID, never to
the caller. The server keeps serving after any of them.
On the InvokeEndpoint path an error is wrapped as SageMaker runtime wraps a model container's
error: HTTP 424, ``x-amzn-ErrorType: ModelError`` and ``{"Message", "OriginalStatusCode",
"OriginalMessage"}``, so boto3 raises ``ModelError`` exactly as against a real endpoint.

Concurrency: the event loop only moves bytes. Decoding runs in worker threads (at most
``decode_threads`` at once, which bounds the memory of decoded images in flight) and the model runs
on one thread of its own (one model, one set of weights; torch already uses every core for one
image), in arrival order.

The inference timeout counts from the moment a decoded image joins the model's queue, so it covers
the wait behind other requests as well as the model's own run. A request still waiting when it
expires is dropped from the queue and never runs. A Python thread cannot be stopped, so a run
already under way finishes in the background and its answer is thrown away; the model's thread
stays busy with it until then, which keeps the next requests queued behind it: a timed-out run never
overlaps a new one, so the memory bound holds under overload too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import anyio
import anyio.to_thread
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from beedet.serving.handlers import (
    DEFAULT_MAX_PIXELS,
    Detector,
    Prediction,
    RequestError,
    answer_format,
    decode_request,
    output_fn,
    predict_fn,
)

log = logging.getLogger("beedet.serving")

# SageMaker's InvokeEndpoint refuses bodies over 6 MB; the same limit here means that what this
# server accepts, a real endpoint accepts too.
DEFAULT_MAX_BODY_BYTES = 6 * 1024 * 1024
# SageMaker gives a model container 60 s to answer an invocation, then fails it with a timeout of its
# own that carries nothing from the container. 50 s leaves time to decode and to send the answer, so
# a caller hears this server's 503 (with a request ID) rather than that.
DEFAULT_INFERENCE_TIMEOUT_S = 50.0
# The 500 body: the same for every internal failure, whatever the exception said.
INTERNAL_ERROR = "internal error"


class InferenceTimeout(Exception):
    """The model did not answer one request within the server's inference timeout (a 503)."""


def create_app(detector: Detector, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
               decode_threads: int = 2, inference_timeout_s: float | None = DEFAULT_INFERENCE_TIMEOUT_S) -> FastAPI:
    """The app serving ``detector`` (see the module docstring). ``max_body_bytes``: larger request
    bodies get a 413 (checked on Content-Length before reading, and while reading); ``max_pixels``:
    larger images get a 413 before their pixels are decoded; ``decode_threads``: images decoded at once;
    ``inference_timeout_s``: seconds a decoded image may wait for the model and run on it before the
    request gets a 503 (None: no limit)."""
    if max_body_bytes <= 0 or max_pixels <= 0 or decode_threads <= 0:
        raise ValueError(f"max_body_bytes, max_pixels and decode_threads must be positive, got "
                         f"{max_body_bytes}, {max_pixels}, {decode_threads}")
    if inference_timeout_s is not None and not inference_timeout_s > 0:
        raise ValueError(f"inference_timeout_s must be positive seconds or None (no limit), got {inference_timeout_s}")
    # One worker: the model runs one image at a time, in the order requests were queued (the
    # executor's queue is FIFO), and a queued request can still be cancelled (Future.cancel).
    model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="beedet-model")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            # Requests still queued at shutdown are dropped; a run under way finishes on its own.
            model_thread.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="beedet", summary="Bee detection: the SageMaker inference container contract",
                  docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    decoding = anyio.CapacityLimiter(decode_threads)

    async def run_model(image: np.ndarray) -> Prediction:
        # run_in_executor's future cancels the queued job when wait_for gives up on it; a running
        # one cannot be cancelled and finishes with its result unread (module docstring).
        future = asyncio.get_running_loop().run_in_executor(model_thread, predict_fn, image, detector)
        if inference_timeout_s is None:
            return await future
        try:
            return await asyncio.wait_for(future, inference_timeout_s)
        except asyncio.TimeoutError:
            raise InferenceTimeout(f"the model did not answer within the server's limit of {inference_timeout_s:g} s "
                                   "(it is busy, or the image takes long to process); try again later") from None

    async def invoke(request: Request) -> Response:
        try:
            # Header checks first: a wrong Content-Type or Accept costs no body read and no decode.
            content_type = request.headers.get("content-type")
            accept = request.headers.get("accept") or ""
            answer_format(accept, detector.json_format)  # a 406 before the body is read
            body = await _read_body(request, max_body_bytes)
            image = await anyio.to_thread.run_sync(lambda: decode_request(body, content_type, max_pixels=max_pixels),
                                                   limiter=decoding)
            prediction = await run_model(image)
            answer, answer_type = output_fn(prediction, accept)
        except RequestError as err:
            log.warning("refused a request (%d): %s", err.status_code, err.message)
            return _error(err.status_code, err.message)
        except InferenceTimeout as err:
            # 503, not 504: this server is the origin, not a gateway waiting on another server. The
            # model is busy, which is what 503 means and what a client may retry later; a 504 would
            # read as a proxy's or load balancer's timeout.
            request_id = _request_id()
            log.warning("request %s: %s", request_id, err)
            return _error(503, str(err), request_id=request_id)
        except Exception:  # one request failed; the server goes on serving the others
            # Exception text and tracebacks name files, paths and internals: they go to the log,
            # and the caller gets only an ID to quote.
            request_id = _request_id()
            log.exception("request %s failed with an internal error; answered 500", request_id)
            return _error(500, INTERNAL_ERROR, request_id=request_id)
        return Response(content=answer, media_type=answer_type)

    @app.get("/ping")
    async def ping() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        return await invoke(request)

    @app.post("/endpoints/{endpoint_name}/invocations")
    async def invoke_endpoint(endpoint_name: str, request: Request) -> Response:
        return _as_sagemaker_runtime(await invoke(request))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> Response:
        # Unknown paths and methods answer in the same {"error": ...} shape as everything else.
        return _error(err.status_code, str(err.detail), headers=err.headers)

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    too_large = f"the request body is over the server's limit of {limit} bytes; send a smaller image"
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise RequestError(413, too_large)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # chunked uploads announce no length
            raise RequestError(413, too_large)
        chunks.append(chunk)
    return b"".join(chunks)


def _request_id() -> str:
    """An ID that ties a 5xx answer to its lines in the server's log."""
    return uuid.uuid4().hex


def _error(status: int, message: str, headers: dict[str, str] | None = None, *, request_id: str | None = None) -> JSONResponse:
    document = {"error": message} if request_id is None else {"error": message, "request_id": request_id}
    return JSONResponse(document, status_code=status, headers=headers)


def _as_sagemaker_runtime(response: Response) -> Response:
    """A container answer as SageMaker runtime passes it on: a success as it is, an error as ModelError."""
    if response.status_code < 400:
        return response
    original = bytes(response.body).decode("utf-8", "replace")
    try:
        message = json.loads(original)["error"]
    except (ValueError, KeyError, TypeError):
        message = original
    kind = "client" if response.status_code < 500 else "server"
    return JSONResponse(
        {
            "Message": f'Received {kind} error ({response.status_code}) from the beedet server with message "{message}"',
            "OriginalStatusCode": response.status_code,
            "OriginalMessage": original,
        },
        status_code=424,
        headers={"x-amzn-ErrorType": "ModelError"},
    )

