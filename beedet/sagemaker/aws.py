"""What the SageMaker launcher and the deploy command share (``conf/sagemaker/default.yaml``):
the account settings they need, checked with messages that say how to set them; the pinned
PyTorch container image; and the SDK session, real or offline (``--dry-run``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Literal

from beedet.sagemaker.offline import OfflineAWS

# arn:<partition>:iam::<12-digit account>:role/<optional path/>name
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$")
# S3 bucket naming rules (3-63 chars, lower case, digits, dots, hyphens).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class AWSSettings:
    """Checked account settings: ``region`` (e.g. eu-west-1), ``role`` (an IAM role ARN that
    SageMaker assumes), ``bucket`` and ``prefix`` (where code, checkpoints and model artifacts go:
    ``s3://bucket/prefix/...``), and the pinned PyTorch container (``framework_version``,
    ``py_version``)."""

    region: str
    role: str
    bucket: str
    prefix: str
    framework_version: str
    py_version: str

    @classmethod
    def from_config(cls, region: str | None, role: str | None, bucket: str | None, prefix: str,
                    framework_version: str, py_version: str, *, config_name: str) -> AWSSettings:
        """Check the ``sagemaker.*`` values of ``conf/<config_name>.yaml``. ``region=None`` takes
        boto3's own default (AWS_REGION / AWS_DEFAULT_REGION / ~/.aws/config). Raises
        ``SystemExit`` naming the key and how to set it."""
        where = f"(conf/sagemaker/default.yaml, composed by conf/{config_name}.yaml)"
        if not role:
            raise SystemExit(f"sagemaker.role is not set {where}: pass sagemaker.role=arn:aws:iam::<account>:role/<name> "
                             "or set BEEDET_SAGEMAKER_ROLE; it is the IAM role SageMaker runs the job or endpoint as")
        if not _ROLE_ARN.match(role):
            raise SystemExit(f"sagemaker.role={role!r} is not an IAM role ARN (arn:aws:iam::<12-digit account>:role/<name>) {where}")
        if not bucket:
            raise SystemExit(f"sagemaker.bucket is not set {where}: pass sagemaker.bucket=<bucket name> or set "
                             "BEEDET_SAGEMAKER_BUCKET; code, checkpoints and model artifacts go to s3://<bucket>/<prefix>/")
        if bucket.startswith("s3://") or not _BUCKET.match(bucket):
            raise SystemExit(f"sagemaker.bucket={bucket!r} is not an S3 bucket name (just the name, no s3:// or key) {where}")
        if not region:
            import boto3

            region = boto3.Session().region_name
            if not region:
                raise SystemExit(f"sagemaker.region is not set {where} and boto3 has no default region: pass "
                                 "sagemaker.region=<e.g. eu-west-1> or set AWS_DEFAULT_REGION")
        return cls(region, role, bucket, prefix.strip("/"), str(framework_version), py_version)

    def s3_uri(self, *parts: str) -> str:
        """``s3://bucket/prefix/<parts...>``."""
        return "s3://" + "/".join(p.strip("/") for p in (self.bucket, self.prefix, *parts) if p.strip("/"))

    def image_uri(self, scope: Literal["training", "inference"], instance_type: str) -> str:
        """The AWS Deep Learning Container for PyTorch at the pinned version, for this region and
        instance type (CPU or GPU build), from the SDK's own image table (no network)."""
        from sagemaker.core import image_uris

        return image_uris.retrieve("pytorch", region=self.region, version=self.framework_version,
                                   py_version=self.py_version, instance_type=instance_type, image_scope=scope)


def require_sagemaker_sdk() -> None:
    """Raise ``SystemExit`` with the install command when the SageMaker SDK v3 is missing (it is
    the optional ``sagemaker`` extra of beedet)."""
    try:
        import boto3  # noqa: F401
        import sagemaker.core
        import sagemaker.train  # noqa: F401
    except ImportError as err:
        raise SystemExit(f"the SageMaker SDK v3 is not installed ({err}): pip install -e '.[sagemaker]'") from None


def open_session(settings: AWSSettings, dry_run: bool):
    """A SageMaker SDK ``Session`` for ``settings`` (default bucket and prefix set, so the SDK puts
    everything under ``s3://bucket/prefix/``), and the :class:`OfflineAWS` behind it when
    ``dry_run`` (else ``None``). Offline, the SDK's telemetry is switched off and the user's SDK
    defaults files are not read, so the dry run opens no socket."""
    import boto3
    from sagemaker.core.helper.session_helper import Session

    if not dry_run:
        boto_session = boto3.Session(region_name=settings.region)
        return Session(boto_session=boto_session, default_bucket=settings.bucket, default_bucket_prefix=settings.prefix), None
    offline = OfflineAWS(region=settings.region, bucket=settings.bucket)
    sdk_config = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}
    session = Session(boto_session=offline.boto_session, default_bucket=settings.bucket,
                      default_bucket_prefix=settings.prefix, sagemaker_config=sdk_config)
    return session, offline


def quiet_offline_sdk() -> None:
    """Raise the SDK's log level to errors: offline, its notes (role permissions it cannot verify,
    the SDK defaults it applied) describe the stand-in AWS, not the job."""
    for name in ("sagemaker", "sagemaker.config"):
        logging.getLogger(name).setLevel(logging.ERROR)
