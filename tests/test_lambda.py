"""deploy/: the API Gateway -> Lambda -> SageMaker endpoint path (the course's bonus task).

The handler runs against a real boto3 ``sagemaker-runtime`` client with fake credentials: botocore's
Stubber answers for the endpoint, a closed loopback port stands in for an unreachable one, and
``python -m beedet.serve`` stands in for the endpoint itself in the end-to-end test. No AWS access.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from botocore.exceptions import ReadTimeoutError
from botocore.response import StreamingBody
from botocore.stub import Stubber

from helpers import REPO

from beedet.serving.local_server import free_port

DEPLOY = REPO / "deploy"
TEMPLATE = DEPLOY / "template.yaml"
ENDPOINT = "beedet-bees"
ACCOUNT = "123456789012"
# As the function's context carries it in Lambda.
CONTEXT = SimpleNamespace(aws_request_id="0e9a7c4e-lambda-request")
# Every byte value, so a text decode or re-encode anywhere on the way would show.
BINARY = bytes(range(256)) * 40


def load_handler():
    """deploy/lambda/handler.py as Lambda loads it: a top-level module from its own folder
    (``lambda`` is a Python keyword, so it cannot be imported as a package)."""
    spec = importlib.util.spec_from_file_location("lambda_handler_under_test", DEPLOY / "lambda" / "handler.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would; dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def handler(monkeypatch, tmp_path):
    """A freshly loaded handler module in a Lambda-like environment with fake credentials."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTESTING")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    # Keep a developer's own ~/.aws config (profiles, endpoint overrides) out of the test.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("ENDPOINT_NAME", ENDPOINT)
    return load_handler()


@pytest.fixture
def stub(handler):
    """Stubber on the handler's own runtime client; a call nobody queued an answer for fails the test."""
    with Stubber(handler.runtime_client()) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


def api_event(body: bytes | str | None, content_type: str | None = "image/jpeg", accept: str | None = None,
              base64_encoded: bool = True) -> dict:
    """An API Gateway REST API proxy event for POST /detect, as API Gateway builds it: binary bodies
    base64-encoded, header names as the client spelled them."""
    headers = {"Host": "abc123.execute-api.eu-west-1.amazonaws.com", "User-Agent": "curl/8.5.0"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if accept is not None:
        headers["Accept"] = accept
    if isinstance(body, bytes):
        body = base64.b64encode(body).decode("ascii") if base64_encoded else body.decode("latin-1")
    return {
        "resource": "/detect",
        "path": "/detect",
        "httpMethod": "POST",
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {"resourcePath": "/detect", "httpMethod": "POST", "stage": "prod", "requestId": "req-1"},
        "body": body,
        "isBase64Encoded": base64_encoded,
    }


def endpoint_answer(document: dict, content_type: str = "application/json") -> dict:
    data = json.dumps(document).encode()
    return {"Body": StreamingBody(io.BytesIO(data), len(data)), "ContentType": content_type}


def assert_names_nothing_internal(result: dict) -> None:
    """No endpoint name or URL, account, log group or traceback in an answer's body."""
    for internal in (ENDPOINT, ACCOUNT, "amazonaws.com", "127.0.0.1", "/aws/sagemaker", "Traceback", "http://", "https://"):
        assert internal not in result["body"], f"the answer names {internal!r}: {result['body']}"


DETECTIONS = {
    "width": 64,
    "height": 48,
    "detections": [{"box": [1.0, 2.0, 30.5, 40.0], "label": 0, "class": "bee", "score": 0.91}],
    "counts": {"bee": 1},
    "score_threshold": 0.5,
}


# --- the template -------------------------------------------------------------------------------


def test_template_passes_cfn_lint():
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    proc = subprocess.run([str(cfn_lint), "--", str(TEMPLATE)], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"cfn-lint found problems in {TEMPLATE}:\n{proc.stdout}{proc.stderr}"


def _template() -> dict:
    from cfnlint.decode import decode

    template, problems = decode(str(TEMPLATE))
    assert not problems and template is not None, problems
    return template


def _as_list(value) -> list:
    return list(value) if isinstance(value, list) else [value]


def test_role_may_only_invoke_that_endpoint_and_write_its_logs():
    resources = _template()["Resources"]
    roles = {name: r for name, r in resources.items() if r["Type"] == "AWS::IAM::Role"}
    assert list(roles) == ["FunctionRole"]
    assert not [r for r in resources.values() if r["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy")]
    role = roles["FunctionRole"]["Properties"]
    assert "ManagedPolicyArns" not in role, "managed policies grant more than the function needs"
    assert resources["Function"]["Properties"]["Role"] == {"Fn::GetAtt": ["FunctionRole", "Arn"]}

    statements = [s for policy in role["Policies"] for s in _as_list(policy["PolicyDocument"]["Statement"])]
    grants = {(action, json.dumps(s["Resource"], sort_keys=True)) for s in statements for action in _as_list(s["Action"])}
    assert all(s["Effect"] == "Allow" and "NotAction" not in s and "NotResource" not in s for s in statements)
    endpoint_arn = {"Fn::Sub": "arn:${AWS::Partition}:sagemaker:${AWS::Region}:${AWS::AccountId}:endpoint/${EndpointName}"}
    log_group = {"Fn::GetAtt": ["FunctionLogGroup", "Arn"]}
    assert grants == {
        ("sagemaker:InvokeEndpoint", json.dumps(endpoint_arn, sort_keys=True)),
        ("logs:CreateLogStream", json.dumps(log_group, sort_keys=True)),
        ("logs:PutLogEvents", json.dumps(log_group, sort_keys=True)),
    }
    # The function logs into that group, so the two logs grants cover all it writes.
    assert resources["Function"]["Properties"]["LoggingConfig"]["LogGroup"] == {"Ref": "FunctionLogGroup"}


def test_api_passes_images_as_binary_to_this_handler():
    template = _template()
    resources = template["Resources"]
    assert set(resources["Api"]["Properties"]["BinaryMediaTypes"]) == {"image/jpeg", "image/png", "application/x-image"}
    function = resources["Function"]["Properties"]
    assert function["Runtime"] == "python3.12"
    module, attribute = function["Handler"].split(".")
    assert (DEPLOY / function["Code"] / f"{module}.py").is_file()
    assert callable(getattr(load_handler(), attribute))
    assert function["Environment"]["Variables"]["ENDPOINT_NAME"] == {"Ref": "EndpointName"}
    assert resources["DetectMethod"]["Properties"]["Integration"]["Type"] == "AWS_PROXY"
    assert set(template["Parameters"]["Auth"]["AllowedValues"]) == {"API_KEY", "AWS_IAM", "NONE"}
    assert "InvokeUrl" in template["Outputs"]


# --- the handler, endpoint stubbed ---------------------------------------------------------------


def test_importing_creates_no_client_and_the_client_is_reused(handler):
    assert handler._client is None
    client = handler.runtime_client()
    assert client is handler.runtime_client()
    assert client.meta.service_model.service_name == "sagemaker-runtime"
    assert client.meta.region_name == "eu-west-1"


def test_image_reaches_the_endpoint_byte_for_byte(handler, stub):
    stub.add_response(
        "invoke_endpoint",
        endpoint_answer(DETECTIONS),
        expected_params={"EndpointName": ENDPOINT, "ContentType": "image/png", "Accept": "application/json", "Body": BINARY},
    )
    result = handler.lambda_handler(api_event(BINARY, content_type="image/png"), None)
    assert result["statusCode"] == 200
    assert result["headers"]["Content-Type"] == "application/json"
    assert result["isBase64Encoded"] is False
    assert json.loads(result["body"]) == DETECTIONS


@pytest.mark.parametrize(
    ("content_type", "accept", "sent_type", "sent_accept"),
    [
        (None, None, "image/jpeg", "application/json"),  # no headers: a JPEG, beedet JSON
        ("IMAGE/JPEG; charset=binary", "*/*", "image/jpeg", "application/json"),
        ("application/x-image", "text/html, application/json;verbose", "application/x-image", "application/json;verbose"),
        ("image/jpeg", "application/json;verbose;q=0.5, application/json", "image/jpeg", "application/json"),
        ("image/jpeg", "text/html,application/xhtml+xml,*/*;q=0.8", "image/jpeg", "application/json"),  # a browser
        ("image/jpeg", "application/json; format=builtin", "image/jpeg", "application/json;format=builtin"),
        ("image/jpeg", "application/json;format=beedet", "image/jpeg", "application/json;format=beedet"),
    ],
)
def test_content_type_and_accept_negotiation(handler, stub, content_type, accept, sent_type, sent_accept):
    verbose = {"prediction": [[0, 0.91, 0.1, 0.2, 0.4, 0.5]]}
    stub.add_response(
        "invoke_endpoint",
        endpoint_answer(verbose, content_type=sent_accept),
        expected_params={"EndpointName": ENDPOINT, "ContentType": sent_type, "Accept": sent_accept, "Body": BINARY},
    )
    result = handler.lambda_handler(api_event(BINARY, content_type=content_type, accept=accept), None)
    assert result["statusCode"] == 200
    assert result["headers"]["Content-Type"] == sent_accept
    assert json.loads(result["body"]) == verbose


def test_json_body_arrives_as_text_and_is_sent_as_utf8(handler, stub):
    document = json.dumps({"image": base64.b64encode(BINARY).decode("ascii")})
    stub.add_response(
        "invoke_endpoint",
        endpoint_answer(DETECTIONS),
        expected_params={"EndpointName": ENDPOINT, "ContentType": "application/json", "Accept": "application/json",
                         "Body": document.encode("utf-8")},
    )
    result = handler.lambda_handler(api_event(document, content_type="application/json", base64_encoded=False), None)
    assert result["statusCode"] == 200 and json.loads(result["body"]) == DETECTIONS


def test_payload_limit_is_invoke_endpoints_and_the_limit_itself_is_accepted(handler, stub):
    service_model = handler.runtime_client().meta.service_model
    assert handler.MAX_PAYLOAD_BYTES == service_model.operation_model("InvokeEndpoint").input_shape.members["Body"].metadata["max"]
    largest = b"\xff" * handler.MAX_PAYLOAD_BYTES
    stub.add_response(
        "invoke_endpoint",
        endpoint_answer(DETECTIONS),
        expected_params={"EndpointName": ENDPOINT, "ContentType": "image/jpeg", "Accept": "application/json", "Body": largest},
    )
    assert handler.lambda_handler(api_event(largest), None)["statusCode"] == 200


@pytest.mark.parametrize(
    ("event_args", "says"),
    [
        ({"body": None}, "no body"),
        ({"body": ""}, "no body"),
        ({"body": "aGVsbG8=!"}, "not valid base64"),  # lenient decoding would drop the "!"
        ({"body": BINARY, "base64_encoded": False}, "binary media types"),
        ({"body": BINARY, "content_type": "text/plain"}, "unsupported Content-Type"),
        ({"body": BINARY, "content_type": "image/gif"}, "unsupported Content-Type"),
        ({"body": BINARY, "accept": "text/csv"}, "unsupported Accept"),
        ({"body": BINARY, "accept": "application/json;q=0"}, "unsupported Accept"),
        ({"body": b"\0" * (6 * 1024 * 1024 + 1)}, "at most 6291456 bytes"),
    ],
    ids=["none", "empty", "not-base64", "image-as-text", "text-plain", "gif", "accept-csv", "accept-q0", "too-large"],
)
def test_bad_requests_get_400_and_never_reach_the_endpoint(handler, stub, event_args, says):
    body = event_args.pop("body")
    event = api_event(body, **event_args)
    if isinstance(body, str):  # a raw string body, as API Gateway would pass it
        event["body"] = body
    result = handler.lambda_handler(event, None)
    assert result["statusCode"] == 400
    assert result["headers"]["Content-Type"] == "application/json"
    assert says in json.loads(result["body"])["error"]


# SageMaker's ModelError message, as a real endpoint words it: the endpoint, account and log group.
def model_error_message(status: int, message: str) -> str:
    kind = "client" if status < 500 else "server"
    return (f'Received {kind} error ({status}) from primary with message "{message}". See '
            f"https://eu-west-1.console.aws.amazon.com/cloudwatch/home?region=eu-west-1#logEventViewer:group="
            f"/aws/sagemaker/Endpoints/{ENDPOINT} in account {ACCOUNT} for more information.")


# SageMaker's PyTorch serving container answers an error with its message and then the traceback.
TOOLKIT_ANSWER = ("CUDA out of memory. Tried to allocate 2.00 GiB\nTraceback (most recent call last):\n"
                  '  File "/opt/conda/lib/python3.11/site-packages/sagemaker_inference/transformer.py", line 150\n')


def test_model_failure_is_a_502_whose_details_stay_in_the_log(handler, stub, caplog):
    stub.add_client_error(
        "invoke_endpoint",
        service_error_code="ModelError",
        service_message=model_error_message(500, "CUDA out of memory"),
        http_status_code=424,
        modeled_fields={"OriginalStatusCode": 500, "OriginalMessage": TOOLKIT_ANSWER},
    )
    result = handler.lambda_handler(api_event(BINARY), CONTEXT)
    assert result["statusCode"] == 502
    answer = json.loads(result["body"])
    assert answer == {"error": "the model failed (status 500)", "endpoint_status": 500, "request_id": CONTEXT.aws_request_id}
    assert_names_nothing_internal(result)
    assert "CUDA" not in result["body"]
    # The function's log has it all, under the request ID the caller got.
    assert ENDPOINT in caplog.text and "CUDA out of memory" in caplog.text and "transformer.py" in caplog.text
    assert CONTEXT.aws_request_id in caplog.text


def test_model_rejecting_the_payload_passes_its_4xx_through(handler, stub):
    container_error = {"error": "upload.jpg is not a readable image: cannot identify image file"}
    stub.add_client_error(
        "invoke_endpoint",
        service_error_code="ModelError",
        service_message=model_error_message(415, json.dumps(container_error)),
        http_status_code=424,
        modeled_fields={"OriginalStatusCode": 415, "OriginalMessage": json.dumps(container_error)},
    )
    result = handler.lambda_handler(api_event(b"GIF89a not really"), CONTEXT)
    assert result["statusCode"] == 415
    answer = json.loads(result["body"])
    assert "rejected" in answer["error"] and answer["endpoint_message"] == container_error
    assert_names_nothing_internal(result)


def test_a_toolkit_containers_4xx_passes_its_message_without_the_traceback(handler, stub):
    refused = "the request body is not an image\nTraceback (most recent call last):\n  File \"/opt/ml/model/code/inference.py\"\n"
    stub.add_client_error(
        "invoke_endpoint",
        service_error_code="ModelError",
        service_message=model_error_message(400, refused),
        http_status_code=424,
        modeled_fields={"OriginalStatusCode": 400, "OriginalMessage": refused},
    )
    result = handler.lambda_handler(api_event(b"not an image"), CONTEXT)
    assert result["statusCode"] == 400
    assert json.loads(result["body"])["endpoint_message"] == {"error": "the request body is not an image"}
    assert_names_nothing_internal(result)
    assert "inference.py" not in result["body"]


@pytest.mark.parametrize(
    ("code", "status", "message"),
    [
        ("ValidationError", 400, f"Endpoint {ENDPOINT} of account {ACCOUNT} not found."),
        ("ModelNotReadyException", 429, f"Model for endpoint {ENDPOINT} is not ready yet"),
        ("ServiceUnavailable", 503, "Service is temporarily unavailable"),
        ("AccessDeniedException", 403, f"User: arn:aws:sts::{ACCOUNT}:assumed-role/fn-role is not authorized to perform: "
                                       f"sagemaker:InvokeEndpoint on resource: arn:aws:sagemaker:eu-west-1:{ACCOUNT}:endpoint/{ENDPOINT}"),
    ],
)
def test_sagemaker_errors_are_502_naming_only_the_error_code(handler, stub, caplog, code, status, message):
    stub.add_client_error("invoke_endpoint", service_error_code=code, service_message=message, http_status_code=status)
    result = handler.lambda_handler(api_event(BINARY), CONTEXT)
    assert result["statusCode"] == 502
    answer = json.loads(result["body"])
    assert answer == {"error": f"the model endpoint failed: {code}", "request_id": CONTEXT.aws_request_id}
    assert_names_nothing_internal(result)
    assert message in caplog.text and ENDPOINT in caplog.text


def test_a_timeout_is_a_502_after_one_attempt(handler):
    client = handler.runtime_client()
    attempts = []

    def time_out(request, **_):
        attempts.append(request.url)
        raise ReadTimeoutError(endpoint_url=request.url)

    client.meta.events.register("before-send.sagemaker-runtime.InvokeEndpoint", time_out)
    result = handler.lambda_handler(api_event(BINARY), None)
    assert result["statusCode"] == 502
    assert "did not answer" in json.loads(result["body"])["error"]
    assert_names_nothing_internal(result)
    # One attempt: a retry after a read timeout would overrun API Gateway's 29 s.
    assert len(attempts) == 1 and attempts[0].endswith(f"/endpoints/{ENDPOINT}/invocations")


def test_endpoint_url_override_and_an_unreachable_endpoint(handler, monkeypatch):
    port = free_port()  # closed again: nothing listens there
    monkeypatch.setenv(handler.ENDPOINT_URL_ENV, f"http://127.0.0.1:{port}")
    handler._client = None
    assert handler.runtime_client().meta.endpoint_url == f"http://127.0.0.1:{port}"
    result = handler.lambda_handler(api_event(BINARY), CONTEXT)
    assert result["statusCode"] == 502
    assert "could not be reached" in json.loads(result["body"])["error"]
    assert_names_nothing_internal(result)


def test_missing_endpoint_name_is_a_500_that_says_so(handler, monkeypatch):
    monkeypatch.delenv("ENDPOINT_NAME")
    result = handler.lambda_handler(api_event(BINARY), None)
    assert result["statusCode"] == 500 and "ENDPOINT_NAME" in json.loads(result["body"])["error"]


def _event(**fields) -> dict:
    """A well-formed event for BINARY, with ``fields`` replacing its entries."""
    return {**api_event(BINARY), **fields}


# Events that no API Gateway proxy integration sends: direct invocations (the console's test
# events, another service, a script), or a misconfigured integration. None of them may raise:
# an exception escaping the function reaches the caller as API Gateway's bare 502.
MALFORMED_EVENTS = {
    "none": (None, "not an API Gateway proxy event"),
    "list": ([], "not an API Gateway proxy event"),
    "string": ("POST /detect", "not an API Gateway proxy event"),
    "number": (42, "not an API Gateway proxy event"),
    "empty object": ({}, "no body"),
    "headers a list": (_event(headers=[["Content-Type", "image/jpeg"]]), '"headers" must be an object'),
    "headers a string": (_event(headers="Content-Type: image/jpeg"), '"headers" must be an object'),
    "body a number": (_event(body=12345), '"body" must be a string'),
    "body an object": (_event(body={"image": "aGVsbG8="}), '"body" must be a string'),
    "body a list": (_event(body=["aGVsbG8="]), '"body" must be a string'),
    "body false": (_event(body=False), '"body" must be a string'),
    "isBase64Encoded a string": (_event(isBase64Encoded="true"), '"isBase64Encoded" must be true or false'),
    "base64 with non-ascii": (_event(body="aGVsbG8=\u00ff"), "not valid base64"),
    "base64 without padding": (_event(body="aGVsbG8"), "not valid base64"),
    "base64 of nothing": (_event(body="===="), "not valid base64"),
    "json with a lone surrogate": (_event(body='{"image": "\ud800"}', isBase64Encoded=False,
                                          headers={"Content-Type": "application/json"}), "unpaired surrogates"),
}


@pytest.mark.parametrize("case", MALFORMED_EVENTS, ids=str)
def test_malformed_events_get_a_json_400_and_never_reach_the_endpoint(handler, stub, case):
    event, says = MALFORMED_EVENTS[case]
    result = handler.lambda_handler(event, CONTEXT)
    assert result["statusCode"] == 400, result
    assert result["headers"]["Content-Type"] == "application/json" and result["isBase64Encoded"] is False
    answer = json.loads(result["body"])
    assert set(answer) == {"error"} and says in answer["error"], answer
    assert_names_nothing_internal(result)


def test_a_failure_inside_the_function_is_a_json_500_with_nothing_internal(handler, monkeypatch, caplog):
    def broken(event):
        raise RuntimeError(f"secret: {ENDPOINT} at https://runtime.sagemaker.eu-west-1.amazonaws.com")

    monkeypatch.setattr(handler, "parse_request", broken)
    result = handler.lambda_handler(api_event(BINARY), CONTEXT)
    assert result["statusCode"] == 500 and result["headers"]["Content-Type"] == "application/json"
    assert json.loads(result["body"]) == {"error": "internal error", "request_id": CONTEXT.aws_request_id}
    assert_names_nothing_internal(result)
    assert "secret" in caplog.text and "Traceback" in caplog.text


# --- end to end: the local beedet server stands in for the endpoint -----------------------------


@pytest.fixture(scope="module")
def local_endpoint(local_server):
    """The session's ``python -m beedet.serve`` (conftest.local_server): its base URL."""
    return local_server[0]


def _post_directly(base: str, image: bytes, accept: str) -> tuple[bytes, str]:
    request = urllib.request.Request(
        f"{base}/invocations", data=image, method="POST", headers={"Content-Type": "image/jpeg", "Accept": accept}
    )
    with urllib.request.urlopen(request, timeout=120) as reply:
        return reply.read(), reply.headers["Content-Type"]


@pytest.mark.slow
@pytest.mark.parametrize("accept", ["application/json", "application/json;verbose"])
def test_api_gateway_event_gets_what_the_endpoint_answers(handler, monkeypatch, local_endpoint, honeybee_mini, accept):
    from PIL import Image

    image_path = min((honeybee_mini / "valid" / "images").glob("*.jpg"))
    image = image_path.read_bytes()
    monkeypatch.setenv(handler.ENDPOINT_URL_ENV, local_endpoint)

    result = handler.lambda_handler(api_event(image, content_type="image/jpeg", accept=accept), None)
    direct_body, direct_type = _post_directly(local_endpoint, image, accept)

    assert result["statusCode"] == 200, result["body"]
    assert result["headers"]["Content-Type"] == direct_type
    assert json.loads(result["body"]) == json.loads(direct_body)
    if accept == "application/json":
        # The endpoint decoded the very JPEG that left the client.
        answer = json.loads(result["body"])
        assert (answer["width"], answer["height"]) == Image.open(image_path).size
    else:
        assert "prediction" in json.loads(result["body"])


@pytest.mark.slow
def test_an_image_the_model_cannot_read_comes_back_as_the_servers_4xx(handler, monkeypatch, local_endpoint, honeybee_mini):
    image = min((honeybee_mini / "valid" / "images").glob("*.jpg")).read_bytes()
    monkeypatch.setenv(handler.ENDPOINT_URL_ENV, local_endpoint)
    result = handler.lambda_handler(api_event(image[: len(image) // 3], content_type="image/jpeg"), None)
    answer = json.loads(result["body"])
    # The server refused it as a model container does, SageMaker-style (ModelError), not as a 502.
    assert result["statusCode"] == 400, answer
    assert answer["endpoint_status"] == 400 and list(answer["endpoint_message"]) == ["error"]
