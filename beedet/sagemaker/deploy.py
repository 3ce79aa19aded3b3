"""Deploy a trained beedet model artifact to a SageMaker real-time endpoint, built with the
SageMaker Python SDK v3 (``sagemaker.serve.ModelBuilder``) on the pinned PyTorch inference
container.

    python -m beedet.sagemaker.deploy model_data=s3://BUCKET/beedet/JOB-BASE/JOB/output/model.tar.gz \\
        [endpoint_name=beedet-bees] [instance_type=ml.m5.xlarge] [instance_count=1] \\
        sagemaker.role=arn:aws:iam::ACCOUNT:role/NAME sagemaker.bucket=BUCKET [--dry-run]

``model_data`` is the ``model.tar.gz`` a beedet training job wrote (``model.ckpt``,
``config.yaml``, ``code/inference.py``, ``code/requirements.txt``, ``code/beedet/``). The
PyTorch inference container unpacks it to ``/opt/ml/model``, installs ``code/requirements.txt``
and serves the handlers of ``code/inference.py`` (``SAGEMAKER_PROGRAM`` /
``SAGEMAKER_SUBMIT_DIRECTORY``). The command creates a Model, an EndpointConfig and an Endpoint,
all named ``endpoint_name``, and waits until the endpoint is in service (``wait=false``: it
returns once creation has started).

Without internet (network isolation, or a VPC with no route out): the PyTorch container's start
pip-installs ``code/requirements.txt``, which fails there. Serve the model from an image that already
holds beedet and its dependencies instead, ``docker/serve.Dockerfile`` pushed to ECR (its header has
the commands), trained with ``endpoint_image=beedet`` so that the artifact carries no requirements::

    python -m beedet.sagemaker.deploy model_data=s3://.../model.tar.gz network_isolation=true \\
        image_uri=ACCOUNT.dkr.ecr.REGION.amazonaws.com/beedet-serve:TAG

``network_isolation=true`` sets ``EnableNetworkIsolation`` on the Model (SDK v3: ``ModelBuilder(network=
Networking(enable_network_isolation=True))``): the container can reach nothing, SageMaker still
fetches ``model_data`` for it. It is refused without ``image_uri``, where it could only fail at start.

``--dry-run`` runs the same SDK code against an offline AWS (``beedet.sagemaker.offline``) and
prints ``{"CreateModel": ..., "CreateEndpointConfig": ..., "CreateEndpoint": ...}``, the requests
as they would be sent. No AWS access needed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from beedet.compose import CONF_DIR
from beedet.sagemaker.aws import (
    AWSSettings,
    open_session,
    quiet_offline_sdk,
    require_sagemaker_sdk,
)
from beedet.sagemaker.offline import OfflineAWS

log = logging.getLogger("beedet.sagemaker.deploy")

# The PyTorch inference toolkit's script-mode contract: the handler module and the directory it
# lives in once model.tar.gz is unpacked to /opt/ml/model.
INFERENCE_ENVIRONMENT = {"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code"}
DEPLOY_OPERATIONS = ("CreateModel", "CreateEndpointConfig", "CreateEndpoint")
# What serves a training job's model artifact (the train config's endpoint_image; beedet.sagemaker.artifact
# writes for it): the PyTorch inference container, which pip-installs the artifact's code/requirements.txt at
# start, or an image built from docker/serve.Dockerfile, which holds every dependency and installs nothing.
ENDPOINT_IMAGES = ("pytorch", "beedet")


def check_model_data(uri: str) -> str:
    """``uri`` if it names a model artifact in S3 (``s3://.../*.tar.gz``); else ``SystemExit``."""
    if not uri.startswith("s3://") or not uri.endswith(".tar.gz"):
        raise SystemExit(f"model_data={uri!r}: give the S3 URI of a training job's model.tar.gz "
                         "(s3://<bucket>/<prefix>/<job base>/<job>/output/model.tar.gz, printed by beedet.sagemaker.launch)")
    return uri


@contextmanager
def _environment(**variables: str):
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def import_sagemaker_serve(region: str, dry_run: bool) -> None:
    """Import ``sagemaker.serve`` (ModelBuilder). The import creates a boto3 client
    (``sagemaker.ai_registry``), which needs a region and looks up credentials, on a machine
    without any by asking the EC2 instance-metadata service over the network. Import it with the
    deployment's region when none is configured, and in a dry run with that lookup switched off."""
    variables = {} if os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") else {"AWS_DEFAULT_REGION": region}
    if dry_run:
        variables["AWS_EC2_METADATA_DISABLED"] = "true"
    with _environment(**variables):
        import sagemaker.serve  # noqa: F401


def build_model_builder(session, *, role: str, region: str, image_uri: str, model_data: str,
                        instance_type: str, environment: Mapping[str, str], network_isolation: bool = False):
    """A ``ModelBuilder`` for the PyTorch inference container serving ``model_data`` (call
    :func:`import_sagemaker_serve` first). ``network_isolation``: the Model's container gets no
    network access (``EnableNetworkIsolation``).

    ModelBuilder's image-only ("pass-through") path: an ``image_uri`` with a model artifact and
    no model object or InferenceSpec, so the SDK neither repackages the artifact nor picks a
    model server of its own; the container runs the artifact's ``code/inference.py`` (an image
    built from docker/serve.Dockerfile serves its ``model.ckpt`` with ``beedet.serve`` instead)."""
    from sagemaker.core.training.configs import Networking
    from sagemaker.serve.model_builder import ModelBuilder

    env = {**INFERENCE_ENVIRONMENT, "SAGEMAKER_CONTAINER_LOG_LEVEL": "20", "SAGEMAKER_REGION": region, **environment}
    network = Networking(enable_network_isolation=True) if network_isolation else None
    return ModelBuilder(image_uri=image_uri, s3_model_data_url=model_data, role_arn=role, sagemaker_session=session,
                        instance_type=instance_type, env_vars=env, network=network, log_level=logging.WARNING)


def check_endpoint_image(endpoint_image: str) -> str:
    """``endpoint_image`` if it is one of :data:`ENDPOINT_IMAGES`; else ``ValueError`` saying what each means."""
    if endpoint_image not in ENDPOINT_IMAGES:
        raise ValueError(f"endpoint_image={endpoint_image!r}: expected pytorch (SageMaker's PyTorch inference "
                         "container, which pip-installs the artifact's requirements at start) or beedet (an image "
                         "built from docker/serve.Dockerfile, holding every dependency: starts without internet)")
    return endpoint_image


def check_network_isolation(network_isolation: bool, image_uri: str | None) -> None:
    """``SystemExit`` for an isolated endpoint on the default PyTorch container (``image_uri``
    None): its start pip-installs the artifact's requirements, which cannot work without network."""
    if network_isolation and not image_uri:
        raise SystemExit("network_isolation=true needs image_uri=<an image holding beedet and its dependencies>: the "
                         "default PyTorch inference container pip-installs the artifact's code/requirements.txt at start, "
                         "which fails without network. Build and push docker/serve.Dockerfile (see its header), train "
                         "with endpoint_image=beedet, and deploy with image_uri=<its ECR URI>")


@dataclass
class DeployedEndpoint:
    """A created endpoint, and for a dry run the requests as recorded (``requests``: operation
    name -> request, for ``DEPLOY_OPERATIONS``) and the offline AWS."""

    name: str
    arn: str
    status: str
    requests: dict[str, dict] | None = None
    offline: OfflineAWS | None = None


def deploy(cfg: DictConfig, dry_run: bool) -> DeployedEndpoint:
    """Create the endpoint that ``cfg`` (conf/deploy.yaml) describes; with ``dry_run`` against
    the offline AWS."""
    sm = cfg.sagemaker
    settings = AWSSettings.from_config(sm.region, sm.role, sm.bucket, sm.prefix, sm.framework_version, sm.py_version,
                                       config_name="deploy")
    try:
        model_data = check_model_data(cfg.model_data)
    except MissingMandatoryValue:
        raise SystemExit("model_data is required: model_data=s3://.../model.tar.gz (a beedet training job's artifact)") from None
    check_network_isolation(cfg.network_isolation, cfg.image_uri)
    import_sagemaker_serve(settings.region, dry_run)
    session, offline = open_session(settings, dry_run)
    builder = build_model_builder(
        session, role=settings.role, region=settings.region,
        image_uri=cfg.image_uri or settings.image_uri("inference", cfg.instance_type), model_data=model_data,
        instance_type=cfg.instance_type, environment=OmegaConf.to_container(cfg.environment, resolve=True),
        network_isolation=cfg.network_isolation,
    )
    builder.build(model_name=cfg.endpoint_name)
    # wait=False in a dry run: there is no endpoint to wait for, only the requests.
    endpoint = builder.deploy(endpoint_name=cfg.endpoint_name, initial_instance_count=cfg.instance_count,
                              instance_type=cfg.instance_type, wait=cfg.wait and not dry_run)
    return DeployedEndpoint(
        name=endpoint.endpoint_name, arn=endpoint.endpoint_arn, status=endpoint.endpoint_status,
        requests={op: offline.requests(op)[-1] for op in DEPLOY_OPERATIONS} if offline else None, offline=offline,
    )


def main(argv: Sequence[str] | None = None) -> None:
    from hydra import compose, initialize_config_dir

    args = list(sys.argv[1:] if argv is None else argv)
    dry_run = "--dry-run" in args
    require_sagemaker_sdk()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if dry_run:
        quiet_offline_sdk()
        log.info("dry run: nothing is sent to AWS, and the role's permissions are not checked")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="deploy", overrides=[a for a in args if a != "--dry-run"])
    endpoint = deploy(cfg, dry_run)
    log.info("%s endpoint %s (%s)", "would create" if dry_run else "created", endpoint.name, endpoint.status)
    if endpoint.requests is not None:
        print(json.dumps(endpoint.requests, indent=2))
    else:
        print(f"endpoint: {endpoint.name} ({endpoint.status}, {endpoint.arn})")


if __name__ == "__main__":
    main()
