"""The SageMaker inference container's HTTP contract as a FastAPI app, for one loaded detector.

    GET  /ping                                  200 {"status": "ok"} once the model is loaded
    POST /invocations                           the handlers' contract (beedet.serving.handlers)
    POST /endpoints/{endpoint_name}/invocations the same, addressed as SageMaker runtime's
                                                InvokeEndpoint: boto3's ``sagemaker-runtime`` client
                                                with ``endpoint_url=http://HOST:PORT`` calls it

A bad request gets a 4xx and ``{"error": "<what is wrong>"}``: 400 not an image / truncated /
bad JSON, 413 body over ``max_body_bytes`` or image over ``max_pixels``, 415 Content-Type, 406
Accept; an unexpected failure is a 500 with the same shape. The server keeps serving after either.
On the InvokeEndpoint path an error is wrapped as SageMaker runtime wraps a model container's
error: HTTP 424, ``x-amzn-ErrorType: ModelError`` and ``{"Message", "OriginalStatusCode",
"OriginalMessage"}``, so boto3 raises ``ModelError`` exactly as against a real endpoint.

Concurrency: the event loop only moves bytes. Decoding runs in worker threads (at most
``decode_threads`` at once, which bounds the memory of decoded images in flight) and the model runs
in one worker thread at a time (one model, one set of weights; torch already uses every core for one
image), in arrival order.
"""

from __future__ import annotations

import json
import logging

import anyio
import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from beedet.serving.handlers import (
    DEFAULT_MAX_PIXELS,
    Detector,
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


def create_app(detector: Detector, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
               decode_threads: int = 2) -> FastAPI:
    """The app serving ``detector`` (see the module docstring). ``max_body_bytes``: larger request
    bodies get a 413 (checked on Content-Length before reading, and while reading); ``max_pixels``:
    larger images get a 413 before their pixels are decoded; ``decode_threads``: images decoded at once."""
    if max_body_bytes <= 0 or max_pixels <= 0 or decode_threads <= 0:
        raise ValueError(f"max_body_bytes, max_pixels and decode_threads must be positive, got "
                         f"{max_body_bytes}, {max_pixels}, {decode_threads}")
    app = FastAPI(title="beedet", summary="Bee detection: the SageMaker inference container contract",
                  docs_url=None, redoc_url=None, openapi_url=None)
    decoding = anyio.CapacityLimiter(decode_threads)
    inference = anyio.CapacityLimiter(1)

    async def invoke(request: Request) -> Response:
        try:
            # Header checks first: a wrong Content-Type or Accept costs no body read and no decode.
            content_type = request.headers.get("content-type")
            chosen = answer_format(request.headers.get("accept"))
            body = await _read_body(request, max_body_bytes)
            image = await anyio.to_thread.run_sync(lambda: decode_request(body, content_type, max_pixels=max_pixels),
                                                   limiter=decoding)
            prediction = await anyio.to_thread.run_sync(predict_fn, image, detector, limiter=inference)
            answer, answer_type = output_fn(prediction, chosen)
        except RequestError as err:
            log.warning("refused a request (%d): %s", err.status_code, err.message)
            return _error(err.status_code, err.message)
        except Exception as err:  # one request failed; the server goes on serving the others
            log.exception("failed to answer a request")
            return _error(500, f"internal error while answering the request: {type(err).__name__}: {err}")
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


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


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

