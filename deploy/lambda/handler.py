"""AWS Lambda function behind an API Gateway REST API (proxy integration) that calls a SageMaker endpoint.

Request (an API Gateway REST API proxy event):
  POST with the image itself as the body and its media type in ``Content-Type``: ``image/jpeg``
  (the default when the header is missing), ``image/png`` or ``application/x-image``. The API lists
  these as binary media types, so API Gateway hands the body over base64-encoded with
  ``isBase64Encoded: true``. ``application/json`` (a JSON document carrying base64 image data, as the
  endpoint's handlers accept it) arrives as text and is passed on as its UTF-8 bytes.
  ``Accept``: ``application/json`` (beedet JSON) or ``application/json;verbose`` (the SageMaker built-in
  detector's ``{"prediction": [[class, score, xmin, ymin, xmax, ymax], ...]}``); missing, ``*/*`` or
  ``application/*`` mean ``application/json``.

Response (an API Gateway proxy result):
  200: the endpoint's answer byte for byte, with the endpoint's ``Content-Type``.
  400 ``{"error": msg}``: the request is bad before the endpoint sees it (no body, body not valid
      base64, an image that arrived as text, unsupported Content-Type or Accept, more than
      InvokeEndpoint's 6 MB payload limit), or the event is not an API Gateway proxy event at all
      (None, not an object, headers not an object, a body that is not a string, ...).
  4xx ``{"error", "endpoint_status", "endpoint_message": {"error": msg}}``: the model container
      rejected the payload with that status (SageMaker reports it as a ModelError), e.g. bytes that
      are not an image; ``msg`` is the container's own message (its first line only).
  502 ``{"error", "request_id", ...}``: the endpoint failed (ModelError with a 5xx, then also
      ``endpoint_status``; any other SageMaker error such as an unknown endpoint or throttling, named
      by its error code; a timeout, no connection).
  500 ``{"error", "request_id"}``: the function itself is misconfigured (no ENDPOINT_NAME) or failed.

No answer names the endpoint, its URL, the account or the container's internals: SageMaker's error
messages carry the endpoint's name, the account and its log group, connection errors the endpoint
URL, and a model container's 5xx body may hold a traceback (SageMaker's PyTorch serving container
answers every error with one). All of that goes to the function's log, next to ``request_id`` (the
Lambda request ID), which the 5xx answers carry so that a caller's report can be found there.

Environment:
  ENDPOINT_NAME: the SageMaker endpoint to invoke (required).
  AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME: optional; sends InvokeEndpoint to another server, e.g. the local
      ``python -m beedet.serve``, which serves ``POST /endpoints/{name}/invocations`` like SageMaker.

Only the standard library and boto3 (both in Lambda's Python runtime): deploy this folder as is.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

LOG = logging.getLogger(__name__)

IMAGE_TYPES = ("image/jpeg", "image/png", "application/x-image")
JSON_TYPE = "application/json"
DEFAULT_CONTENT_TYPE = "image/jpeg"
VERBOSE_JSON = "application/json;verbose"

# InvokeEndpoint refuses bodies over 6 MB (6291456 bytes, the Body limit in botocore's service model);
# refusing them here gives the caller a 400 that says so instead of a 502 from SageMaker.
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024

ENDPOINT_URL_ENV = "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"

# API Gateway gives up on an integration after 29 s. One attempt that times out at 3 + 24 s still
# leaves this function time to answer with its own 502 and a message; a retry would overrun the
# 29 s, so the caller retries instead.
CLIENT_CONFIG = Config(connect_timeout=3, read_timeout=24, retries={"mode": "standard", "total_max_attempts": 1})

_client = None


class BadRequest(ValueError):
    """The request cannot be sent to the endpoint; the message tells the caller why."""


@dataclass(frozen=True)
class EndpointRequest:
    """What InvokeEndpoint gets: the raw payload and its media types (no parameters except ;verbose)."""

    body: bytes
    content_type: str
    accept: str


def runtime_client():
    """The ``sagemaker-runtime`` client, created on first use and kept for the container's lifetime
    (warm invocations reuse its connection pool). Creating it needs no network."""
    global _client
    if _client is None:
        # botocore >= 1.31 reads AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME itself; passing it on keeps the
        # override working with an older boto3 in the runtime too.
        _client = boto3.client("sagemaker-runtime", endpoint_url=os.environ.get(ENDPOINT_URL_ENV) or None, config=CLIENT_CONFIG)
    return _client


def lambda_handler(event: Any, context: Any) -> dict[str, Any]:
    """API Gateway proxy event in, proxy result out (the module docstring gives both contracts).
    Never raises: an exception escaping a proxy integration's function reaches the caller as API
    Gateway's bare 502, so even a failure of this code answers a JSON 500."""
    request_id = getattr(context, "aws_request_id", None)
    try:
        return handle(event, request_id)
    except Exception:  # a bug here, not a bad request: the details go to the log only
        LOG.exception("request %s failed inside the function", request_id)
        return json_response(500, with_request_id({"error": "internal error"}, request_id))


def handle(event: Any, request_id: str | None) -> dict[str, Any]:
    """:func:`lambda_handler`'s work, which may raise on a bug; ``request_id`` goes into 5xx answers."""
    try:
        request = parse_request(event)
    except BadRequest as err:
        LOG.warning("bad request %s: %s", request_id, err)
        return json_response(400, {"error": str(err)})
    endpoint = os.environ.get("ENDPOINT_NAME")
    if not endpoint:
        LOG.error("ENDPOINT_NAME is not set")
        return json_response(500, with_request_id({"error": "the function's ENDPOINT_NAME environment variable is not set"},
                                                  request_id))
    try:
        answer = runtime_client().invoke_endpoint(
            EndpointName=endpoint,
            ContentType=request.content_type,
            Accept=request.accept,
            Body=request.body,
        )
        body = answer["Body"].read()
    except ClientError as err:
        LOG.error("endpoint %s error on request %s: %s; response %s", endpoint, request_id, err,
                  {k: err.response.get(k) for k in ("OriginalStatusCode", "OriginalMessage", "LogStreamArn")})
        return endpoint_error_response(err, request_id)
    except BotoCoreError as err:  # timeouts and connection failures: no answer at all
        # The message names the endpoint's URL: the log's business, not the caller's.
        LOG.error("endpoint %s unreachable on request %s: %s", endpoint, request_id, err)
        return json_response(502, with_request_id({"error": "the model endpoint did not answer in time or could not be "
                                                            "reached; try again later"}, request_id))
    headers = {"Content-Type": answer.get("ContentType") or JSON_TYPE}
    if answer.get("InvokedProductionVariant"):
        headers["X-Invoked-Production-Variant"] = answer["InvokedProductionVariant"]
    return proxy_response(200, body, headers)


def parse_request(event: Any) -> EndpointRequest:
    """Check an API Gateway proxy event and take out the payload; raises BadRequest saying what is
    wrong, also for an event of the wrong shape (a direct invocation, another integration)."""
    if not isinstance(event, dict):
        raise BadRequest(f"the event is not an API Gateway proxy event (a JSON object), got {type(event).__name__}: "
                         "call this function through its API")
    raw_headers = event.get("headers")
    if raw_headers is not None and not isinstance(raw_headers, dict):
        raise BadRequest(f'the event\'s "headers" must be an object, got {type(raw_headers).__name__}')
    # Header names keep the client's spelling in proxy events; HTTP says they are case-insensitive.
    headers = {str(k).lower(): str(v) for k, v in (raw_headers or {}).items() if v is not None}
    raw_type = headers.get("content-type", "").strip() or DEFAULT_CONTENT_TYPE
    content_type = raw_type.split(";", 1)[0].strip().lower()
    if content_type not in (*IMAGE_TYPES, JSON_TYPE):
        raise BadRequest(f"unsupported Content-Type {raw_type!r}; send one of {', '.join((*IMAGE_TYPES, JSON_TYPE))}")
    body = event.get("body")
    if body is None or body == "":
        raise BadRequest(f"the request has no body; POST the image bytes with Content-Type {content_type}")
    if not isinstance(body, str):
        raise BadRequest(f'the event\'s "body" must be a string (text, or base64 with isBase64Encoded), got {type(body).__name__}')
    base64_encoded = event.get("isBase64Encoded")
    if base64_encoded is not None and not isinstance(base64_encoded, bool):
        raise BadRequest(f'the event\'s "isBase64Encoded" must be true or false, got {base64_encoded!r}')
    if base64_encoded:
        try:
            payload = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as err:
            raise BadRequest(f"the body is marked base64-encoded but is not valid base64 ({err})") from None
    elif content_type in IMAGE_TYPES:
        # Without binary media types API Gateway decodes image bytes as UTF-8 text, which mangles them.
        raise BadRequest(
            f"the {content_type} body arrived as text, not base64: send the image with a Content-Type header of "
            f"{', '.join(IMAGE_TYPES)}, which the API lists as binary media types (deploy/template.yaml does)"
        )
    else:
        try:
            payload = body.encode("utf-8")
        except UnicodeEncodeError:  # JSON text can carry lone surrogates ("\ud800"), which UTF-8 cannot
            raise BadRequest("the body is not valid Unicode text (it holds unpaired surrogates)") from None
    if not payload:
        raise BadRequest("the request body is empty after base64 decoding")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise BadRequest(
            f"the payload is {len(payload)} bytes; a SageMaker endpoint accepts at most {MAX_PAYLOAD_BYTES} "
            "bytes (6 MB): send a smaller or more compressed image"
        )
    return EndpointRequest(body=payload, content_type=content_type, accept=negotiate_accept(headers.get("accept")))


def negotiate_accept(header: str | None) -> str:
    """The answer format for an Accept header: ``application/json``, ``application/json;verbose``, or
    ``application/json;format=beedet`` / ``;format=builtin`` (the endpoint's two documents by name).

    Media ranges are weighed by their q values (first wins a tie); raises BadRequest when none is
    one of the two formats or a wildcard that covers application/json.
    """
    if not header or not header.strip():
        return JSON_TYPE
    best, best_q = None, 0.0
    for item in header.split(","):
        media, *params = [part.strip().lower() for part in item.split(";")]
        q, flags, document = 1.0, set(), None
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
            elif name.strip() == "format" and value.strip().strip('"') in ("beedet", "builtin"):
                document = value.strip().strip('"')
            elif name.strip():
                flags.add(name.strip())
        if media == JSON_TYPE:
            offer = VERBOSE_JSON if "verbose" in flags else (f"{JSON_TYPE};format={document}" if document else JSON_TYPE)
        elif media in ("*/*", "application/*"):
            offer = JSON_TYPE
        else:
            continue
        if q > best_q:
            best, best_q = offer, q
    if best is None:
        raise BadRequest(f"unsupported Accept {header!r}; the endpoint answers {JSON_TYPE} or {VERBOSE_JSON}")
    return best


def endpoint_error_response(err: ClientError, request_id: str | None = None) -> dict[str, Any]:
    """A SageMaker error as a proxy result: the model's own 4xx passes through with the container's
    message (the caller sent something the model cannot read, and the message says what); anything
    else is the endpoint's failure, a 502 naming only the error code or the model's status. SageMaker's
    own ``Message`` never passes: it names the endpoint, the account and the endpoint's log group."""
    code = err.response.get("Error", {}).get("Code", "Unknown")
    if code != "ModelError":
        return json_response(502, with_request_id({"error": f"the model endpoint failed: {code}"}, request_id))
    # ModelError: the container answered with a non-2xx status; SageMaker keeps its status and body.
    original_status = err.response.get("OriginalStatusCode")
    if isinstance(original_status, int) and 400 <= original_status < 500:
        document: dict[str, Any] = {
            "error": f"the model rejected the request (status {original_status})",
            "endpoint_status": original_status,
        }
        message = container_message(err.response.get("OriginalMessage"))
        if message:
            document["endpoint_message"] = {"error": message}
        return json_response(original_status, document)
    # A 5xx body is the container's internals (a traceback, from SageMaker's PyTorch container): log only.
    return json_response(502, with_request_id({"error": f"the model failed (status {original_status})",
                                               "endpoint_status": original_status}, request_id))


# A 4xx message is one sentence; anything longer is not meant for the caller.
MAX_MESSAGE_CHARS = 500


def container_message(original: Any) -> str | None:
    """What a model container said when it refused a request, fit for the caller: beedet's
    ``{"error": msg}`` gives ``msg``; a text answer gives its first line (SageMaker's PyTorch serving
    container answers ``"<message>\\n<traceback>"``); at most :data:`MAX_MESSAGE_CHARS` characters."""
    if not isinstance(original, str):
        return None
    try:
        document = json.loads(original)
    except ValueError:
        text = original.strip().splitlines()[0] if original.strip() else ""
    else:
        text = document.get("error") if isinstance(document, dict) else None
        if not isinstance(text, str):
            return None
    return text[:MAX_MESSAGE_CHARS] or None


def with_request_id(document: dict[str, Any], request_id: str | None) -> dict[str, Any]:
    """``document`` with the Lambda request ID (when there is one), which finds the function's log lines."""
    return document if request_id is None else {**document, "request_id": request_id}


def json_response(status: int, document: dict[str, Any]) -> dict[str, Any]:
    return proxy_response(status, json.dumps(document).encode("utf-8"), {"Content-Type": JSON_TYPE})


def proxy_response(status: int, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """An API Gateway proxy result; a body that is not UTF-8 text goes back base64-encoded."""
    try:
        return {"statusCode": status, "headers": headers, "body": body.decode("utf-8"), "isBase64Encoded": False}
    except UnicodeDecodeError:
        return {"statusCode": status, "headers": headers, "body": base64.b64encode(body).decode("ascii"), "isBase64Encoded": True}
