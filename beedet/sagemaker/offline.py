"""An AWS that answers locally, for ``--dry-run``: the SageMaker SDK builds and "sends" its real
requests through a real boto3 session, and this module records each one at the botocore layer and
answers it, so nothing reaches the network and no credentials are needed.

Recording happens at botocore's ``before-call`` event, after botocore has validated the
parameters against the service model and serialised them: a recorded SageMaker request is the
exact JSON body that would go over the wire (for ``CreateTrainingJob`` it is valid input for
``aws sagemaker create-training-job --cli-input-json``). S3 uploads are recorded with their bytes.

Answers: ``Create*`` gets an ARN, ``Describe*`` gets the matching ``Create*`` request echoed back
(only the fields the response shape has) with a creation time and an in-progress status, S3 gets
a bucket that exists and successful uploads, and IAM is "access denied" (so the SDK skips its
role-permission check with a warning instead of trusting made-up permissions). Any other call
raises :class:`OfflineCallError`, and a ``before-send`` guard refuses every HTTP request, so a
change in the SDK shows up as a clear error instead of a network attempt.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

# The account the offline answers claim (ARNs need one); AWS's documentation example account.
OFFLINE_ACCOUNT = "123456789012"

# A Describe* answer's status fields, by resource: the state right after Create* returns.
_CREATED_STATUS: dict[str, dict[str, str]] = {
    "TrainingJob": {"TrainingJobStatus": "InProgress", "SecondaryStatus": "Starting"},
    "Endpoint": {"EndpointStatus": "Creating"},
}
# The request field that names each resource (Describe* is looked up by it).
_NAME_FIELD = {"TrainingJob": "TrainingJobName", "Model": "ModelName",
               "EndpointConfig": "EndpointConfigName", "Endpoint": "EndpointName"}


class OfflineCallError(RuntimeError):
    """The SDK made an AWS call that the offline session does not answer (or tried to send an
    HTTP request): the dry run stops rather than guess or reach the network."""


@dataclass
class AWSCall:
    """One recorded request. ``request`` is the JSON body for SageMaker calls (PascalCase keys,
    exactly as serialised), and ``{"Bucket", "Key", "Body": bytes}`` for S3 uploads."""

    service: str
    operation: str
    request: dict[str, Any]


@dataclass
class OfflineAWS:
    """A boto3 session (``.boto_session``) whose every client answers locally; ``.calls`` lists what
    was asked, in order. Hand ``.boto_session`` to the SDK in place of a real one."""

    region: str
    bucket: str
    calls: list[AWSCall] = field(default_factory=list)

    def __post_init__(self) -> None:
        import boto3

        # Dummy credentials keep botocore from searching the machine's credential chain (and
        # the instance-metadata endpoint); nothing is ever signed for a real server.
        self.boto_session = boto3.Session(
            region_name=self.region, aws_access_key_id="offline", aws_secret_access_key="offline"
        )
        events = self.boto_session.events
        # Registered on the session before any client exists: botocore copies the session's
        # handlers into each client it creates, including clients the SDK creates later.
        events.register("before-parameter-build", self._keep_api_params)
        events.register("before-call", self._answer)
        events.register("before-send", self._refuse_send)

    def requests(self, operation: str) -> list[dict[str, Any]]:
        """The recorded requests of one operation (e.g. ``"CreateTrainingJob"``), in order."""
        return [call.request for call in self.calls if call.operation == operation]

    def uploads(self) -> dict[str, bytes]:
        """Every object the SDK uploaded: ``s3://bucket/key`` -> bytes."""
        return {f"s3://{c.request['Bucket']}/{c.request['Key']}": c.request["Body"]
                for c in self.calls if c.operation == "PutObject"}

    # -- botocore event handlers ------------------------------------------------------------

    @staticmethod
    def _keep_api_params(params: dict, context: dict, **_: Any) -> None:
        # S3 requests are not JSON on the wire; keep the caller's parameters for the recording.
        context["beedet_api_params"] = params

    def _refuse_send(self, request: Any, **_: Any) -> None:
        raise OfflineCallError(f"dry run: refusing to send an HTTP request to {request.url}")

    def _answer(self, model: Any, params: dict, context: dict, **_: Any) -> tuple[Any, dict]:
        service, operation = model.service_model.service_name, model.name
        if service == "iam":
            return _error(403, "AccessDenied", "dry run: IAM is not consulted offline")
        if service == "s3":
            return self._answer_s3(operation, context.get("beedet_api_params", {}))
        if service == "sagemaker":
            body = json.loads(params["body"] or b"{}")
            return self._answer_sagemaker(model, operation, body)
        raise OfflineCallError(f"dry run: {service}.{operation} has no offline answer")

    def _answer_s3(self, operation: str, api_params: dict) -> tuple[Any, dict]:
        if operation == "PutObject":
            body = api_params["Body"]
            data = body if isinstance(body, bytes) else body.read()
            self.calls.append(AWSCall("s3", operation, {"Bucket": api_params["Bucket"], "Key": api_params["Key"], "Body": data}))
            return _ok({"ETag": f'"{hashlib.md5(data).hexdigest()}"'})
        if operation == "ListBuckets":
            return _ok({"Buckets": [{"Name": self.bucket, "CreationDate": dt.datetime.now(dt.timezone.utc)}]})
        if operation == "HeadBucket":
            return _ok({})
        raise OfflineCallError(f"dry run: s3.{operation} has no offline answer")

    def _answer_sagemaker(self, model: Any, operation: str, body: dict) -> tuple[Any, dict]:
        verb, resource = re.match(r"(Create|Describe)?(.*)", operation).groups()
        if verb == "Create" and resource in _NAME_FIELD:
            self.calls.append(AWSCall("sagemaker", operation, body))
            return _ok({f"{resource}Arn": self._arn(resource, body[_NAME_FIELD[resource]])})
        if verb == "Describe" and resource in _NAME_FIELD:
            name = body[_NAME_FIELD[resource]]
            created = [r for r in self.requests(f"Create{resource}") if r[_NAME_FIELD[resource]] == name]
            if not created:
                return _error(400, "ValidationException", f"dry run: no {resource} named {name} was created")
            fields = model.output_shape.members
            answer = {k: v for k, v in created[-1].items() if k in fields}
            now = dt.datetime.now(dt.timezone.utc)
            answer.update({f"{resource}Arn": self._arn(resource, name), "CreationTime": now, **_CREATED_STATUS.get(resource, {})})
            if "LastModifiedTime" in fields:
                answer["LastModifiedTime"] = now
            if resource == "TrainingJob":
                # Where the job will write its model artifact (the SDK reads it from the answer).
                output = created[-1]["OutputDataConfig"]["S3OutputPath"].rstrip("/")
                answer["ModelArtifacts"] = {"S3ModelArtifacts": f"{output}/{name}/output/model.tar.gz"}
            return _ok(answer)
        raise OfflineCallError(f"dry run: sagemaker.{operation} has no offline answer")

    def _arn(self, resource: str, name: str) -> str:
        kind = re.sub(r"(?<!^)([A-Z])", r"-\1", resource).lower()  # TrainingJob -> training-job
        return f"arn:aws:sagemaker:{self.region}:{OFFLINE_ACCOUNT}:{kind}/{name.lower()}"


def _ok(parsed: dict) -> tuple[Any, dict]:
    from botocore.awsrequest import AWSResponse

    return AWSResponse(None, 200, {}, None), {**parsed, "ResponseMetadata": {"HTTPStatusCode": 200}}


def _error(status: int, code: str, message: str) -> tuple[Any, dict]:
    from botocore.awsrequest import AWSResponse

    return AWSResponse(None, status, {}, None), {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}
