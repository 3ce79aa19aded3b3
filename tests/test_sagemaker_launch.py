"""The SageMaker launcher and deploy command, offline: ``--dry-run`` runs the real SageMaker SDK v3
code (ModelTrainer, ModelBuilder) against beedet.sagemaker.offline, and these tests check the
requests it would send. No AWS access and no network (sockets are blocked while they run)."""

from __future__ import annotations

import io
import json
import socket
import tarfile

import pytest
from helpers import compose_config

ACCOUNT_SETTINGS = [
    "sagemaker.region=eu-west-1",
    "sagemaker.role=arn:aws:iam::111122223333:role/beedet-sagemaker",
    "sagemaker.bucket=bee-bucket",
]
CHANNELS = ["channels.train=s3://bee-bucket/honeybee/train/", "channels.validation=s3://bee-bucket/honeybee/valid/"]


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a dry run tried to open a network connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def no_account_env(monkeypatch):
    """The user's own BEEDET_SAGEMAKER_* variables must not leak into what the tests compose."""
    monkeypatch.delenv("BEEDET_SAGEMAKER_ROLE", raising=False)
    monkeypatch.delenv("BEEDET_SAGEMAKER_BUCKET", raising=False)


def _channel_uris(request):
    return {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in request["InputDataConfig"]}


def test_cli_dry_run_spot_multi_instance_request(no_network, no_account_env, capsys):
    from beedet.sagemaker.launch import main
    from beedet.sagemaker.metrics import METRIC_DEFINITIONS

    overrides = ["+experiment=honeybee_tiled", "instance_type=ml.g5.xlarge", "instance_count=2", "spot=true",
                 "trainer.max_epochs=3", *CHANNELS, *ACCOUNT_SETTINGS]
    launched = main([*overrides, "--dry-run"])
    cfg = compose_config(overrides, config_name="launch")
    # Printed: the request exactly as botocore validated and serialised it.
    request = json.loads(capsys.readouterr().out)
    assert request == launched.request
    job = request["TrainingJobName"]
    assert job.startswith("beedet-honeybee-tiled-")

    # The pinned framework: the PyTorch training container at the configured version (GPU build).
    sm = cfg.sagemaker
    image = request["AlgorithmSpecification"]["TrainingImage"]
    assert image.endswith(f"/pytorch-training:{sm.framework_version}-gpu-{sm.py_version}"), image
    assert ".dkr.ecr.eu-west-1.amazonaws.com/" in image

    # The experiment and the train override travel as --key value hyperparameters, named as the
    # SDK's driver can export them; the launcher's own keys (instance_count, channels, sagemaker.*) do not.
    assert request["HyperParameters"] == {"experiment": "honeybee_tiled", "trainer__max_epochs": "3"}

    # Channels from config, and the SDK's code and driver channels under s3://bucket/prefix/.
    channels = _channel_uris(request)
    assert channels["train"] == "s3://bee-bucket/honeybee/train/"
    assert channels["validation"] == "s3://bee-bucket/honeybee/valid/"
    assert channels["code"].startswith(f"s3://bee-bucket/beedet/beedet-honeybee-tiled/{job}/")

    # Checkpoints: per-job S3 URI synced with /opt/ml/checkpoints; spot with a wait limit.
    assert request["CheckpointConfig"] == {
        "S3Uri": f"s3://bee-bucket/beedet/beedet-honeybee-tiled/{job}/checkpoints", "LocalPath": "/opt/ml/checkpoints"}
    assert launched.checkpoints == request["CheckpointConfig"]["S3Uri"]
    assert launched.model_artifact == f"s3://bee-bucket/beedet/beedet-honeybee-tiled/{job}/output/model.tar.gz"
    assert request["TensorBoardOutputConfig"] == {
        "S3OutputPath": "s3://bee-bucket/beedet/beedet-honeybee-tiled/tensorboard", "LocalPath": "/opt/ml/output/tensorboard"}
    assert request["EnableManagedSpotTraining"] is True
    stop = request["StoppingCondition"]
    assert stop["MaxRuntimeInSeconds"] == cfg.max_run and stop["MaxWaitTimeInSeconds"] == 2 * cfg.max_run
    assert request["ResourceConfig"]["InstanceType"] == "ml.g5.xlarge"
    assert request["ResourceConfig"]["InstanceCount"] == 2
    assert request["RoleArn"] == "arn:aws:iam::111122223333:role/beedet-sagemaker"

    # Metric definitions are the shipped regexes, unchanged.
    assert request["AlgorithmSpecification"]["MetricDefinitions"] == [
        {"Name": d["Name"], "Regex": d["Regex"]} for d in METRIC_DEFINITIONS]

    # Two instances: the SDK's torchrun driver starts train.py (the choice travels in the
    # uploaded driver channel, not in the API request).
    uploads = launched.offline.uploads()
    drivers = channels["sm_drivers"]
    assert json.loads(uploads[f"{drivers}/distributed.json"]) == {"process_count_per_node": None, "smp": None}
    assert b"torchrun_driver.py" in uploads[f"{drivers}/sm_train.sh"]
    source = json.loads(uploads[f"{drivers}/sourcecode.json"])
    assert source["entry_script"] == "train.py" and source["requirements"] == "requirements.txt"
    assert source["source_dir"].endswith(".tar.gz")

    # The job's code is one archive of train.py, beedet/ and conf/ with a requirements file.
    [archive] = [data for uri, data in uploads.items() if uri.startswith(channels["code"])]
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        code = {m.name: m for m in tar.getmembers()}
        requirements = tar.extractfile("requirements.txt").read().decode().split()
    assert {"train.py", "conf/train.yaml", "conf/experiment/honeybee_tiled.yaml", "beedet/assembly.py",
            "beedet/sagemaker/launch.py", "requirements.txt"} <= set(code)
    assert {path.split("/")[0] for path in code} == {"train.py", "beedet", "conf", "requirements.txt"}
    assert not any("__pycache__" in path for path in code)
    assert any(r.startswith("pytorch-lightning") for r in requirements)
    # The container's CUDA torch must not be replaced by pip.
    assert not any(r.startswith(("torch>", "torch=", "torchvision")) for r in requirements)


def test_an_augmented_manifest_channel_is_sent_as_the_built_in_takes_it(no_network, no_account_env, capsys):
    """``channels.train={s3_uri, attribute_names}``: the real SDK Channel, serialised by botocore as
    CreateTrainingJob sends it, in Pipe mode (SageMaker allows AugmentedManifestFile in no other)
    with the RecordIO wrapper; the job's own code channels stay in File mode."""
    from beedet.sagemaker.launch import main

    manifest = "s3://bee-bucket/gt/honeybee/manifests/output/output.manifest"
    launched = main([*ACCOUNT_SETTINGS, f"channels.train={{s3_uri: {manifest}, attribute_names: [source-ref, honeybee-boxes]}}",
                     "channels.validation=s3://bee-bucket/honeybee/valid/", "--dry-run"])
    request = json.loads(capsys.readouterr().out)
    assert request == launched.request
    channels = {c["ChannelName"]: c for c in request["InputDataConfig"]}
    assert channels["train"] == {
        "ChannelName": "train",
        "DataSource": {"S3DataSource": {"S3DataType": "AugmentedManifestFile", "S3Uri": manifest,
                                        "S3DataDistributionType": "FullyReplicated",
                                        "AttributeNames": ["source-ref", "honeybee-boxes"]}},
        "ContentType": "application/x-recordio", "RecordWrapperType": "RecordIO", "InputMode": "Pipe"}
    assert channels["validation"]["DataSource"]["S3DataSource"]["S3DataType"] == "S3Prefix"
    assert {channels[c].get("InputMode", "File") for c in ("validation", "code", "sm_drivers")} == {"File"}
    assert request["AlgorithmSpecification"]["TrainingInputMode"] == "File"


@pytest.mark.parametrize("channel, message", [
    ("{s3_uri: s3://b/gt/, attribute_names: [source-ref, bees]}", "the augmented manifest file itself"),
    ("{s3_uri: s3://b/x.manifest, attribute_names: [bees]}", "exactly one '-ref' attribute"),
    ("{s3_uri: s3://b/x.manifest, attribute_names: [source-ref, other-ref, bees]}", "exactly one '-ref' attribute"),
    ("{s3_uri: s3://b/x.manifest, attribute_names: source-ref}", "a list of the manifest keys"),
    ("{s3_uri: s3://b/x.manifest, attribute_names: [source-ref, bees], input_mode: File}", "unknown key"),
])
def test_a_bad_augmented_manifest_channel_is_a_clear_error(channel, message):
    from beedet.sagemaker.launch import input_channels

    from omegaconf import OmegaConf

    cfg = compose_config([f"channels.train={channel}"], config_name="launch")
    with pytest.raises(SystemExit, match=message):
        input_channels(OmegaConf.to_container(cfg.channels, resolve=True))


def test_on_demand_single_instance_choices(no_account_env):
    from beedet.sagemaker.aws import AWSSettings
    from beedet.sagemaker.launch import spot_max_wait

    settings = AWSSettings.from_config("eu-west-1", "arn:aws:iam::111122223333:role/r", "bee-bucket", "beedet", "2.6.0",
                                       "py312", config_name="launch")
    assert settings.image_uri("training", "ml.m5.xlarge").endswith("/pytorch-training:2.6.0-cpu-py312")
    assert settings.s3_uri("job", "tensorboard") == "s3://bee-bucket/beedet/job/tensorboard"
    assert spot_max_wait(False, 3600, None) is None
    assert spot_max_wait(True, 3600, None) == 7200


def test_overrides_become_hyperparameters():
    from beedet.sagemaker.launch import training_hyperparameters

    assert training_hyperparameters([
        "+experiment=honeybee_ssd300_resnet50", "trainer.max_epochs=50", "model=ssd300_resnet18",
        "callbacks=[default,early_stopping]", "data.train.s3_prefix=s3://b/p/", "spot=true", "sagemaker.bucket=b",
        "channels.train=s3://b/t/", "endpoint_image=beedet",
    ]) == {"experiment": "honeybee_ssd300_resnet50", "trainer__max_epochs": "50", "model": "ssd300_resnet18",
           "callbacks": "[default,early_stopping]", "data__train__s3_prefix": "s3://b/p/", "endpoint_image": "beedet"}
    for bad, why in [("optimizer.lr=0.1,0.01", "sweep"), ("~logger", "existing key"), ("+foo=1", "existing key"),
                     ("++seed=3", "existing key"), ("model@net=ssd300_resnet18", "existing key"),
                     ("model/backbone=x", "no spelling there"), (f"name={'b' * 2501}", "at most 2500")]:
        with pytest.raises(SystemExit, match=why):
            training_hyperparameters([bad])


def test_hyperparameters_reach_train_py_as_the_same_overrides():
    """The whole path: launcher overrides -> the request's HyperParameters -> the SDK's container
    driver turning them into ``--key value`` -> train.py's parser -> the overrides typed here."""
    from sagemaker.train.container_drivers.common.utils import (
        hyperparameters_to_cli_args,
    )

    from beedet.sagemaker.hyperparameters import decode_hyperparameters, parse_hyperparameter_argv, to_overrides
    from beedet.sagemaker.launch import training_hyperparameters

    typed = ["+experiment=honeybee_tiled", "trainer.max_epochs=50", "optimizer.lr=1e-3", "ckpt_path=null",
             "evaluation.count_threshold=0.35", "callbacks=[default,early_stopping]", "name='bees at dawn'",
             "evaluation.size_bins=[1024,4096]", """logger.name="it's a \\"bee\\" at 50%" """.strip(),
             "model.backbone._target_=beedet.models.Other"]
    argv = hyperparameters_to_cli_args(training_hyperparameters([*typed, "spot=true", "instance_count=2"]))
    decoded, reserved = decode_hyperparameters(parse_hyperparameter_argv(argv))
    assert to_overrides(decoded) == typed and reserved == []


def test_launch_keys_are_exactly_what_launch_yaml_adds():
    from beedet.sagemaker.launch import LAUNCH_KEYS

    launch_keys = set(compose_config(config_name="launch")) - set(compose_config(config_name="train"))
    assert launch_keys == LAUNCH_KEYS


@pytest.mark.parametrize("missing, message", [
    ("sagemaker.role", "sagemaker.role is not set"),
    ("sagemaker.bucket", "sagemaker.bucket is not set"),
])
def test_missing_role_or_bucket_is_a_clear_error(no_network, no_account_env, missing, message):
    from beedet.sagemaker.deploy import deploy
    from beedet.sagemaker.launch import launch

    settings = [s for s in ACCOUNT_SETTINGS if not s.startswith(missing)]
    with pytest.raises(SystemExit, match=message):
        launch(compose_config(settings, config_name="launch"), settings, dry_run=True)
    with pytest.raises(SystemExit, match=message):
        deploy(compose_config([*settings, "model_data=s3://b/m/model.tar.gz"], config_name="deploy"), dry_run=True)


def test_bad_settings_are_clear_errors(no_account_env):
    from beedet.sagemaker.launch import launch

    for bad, message in [(["sagemaker.role=beedet-role"], "not an IAM role ARN"),
                         (["sagemaker.bucket=s3://bee-bucket/x"], "not an S3 bucket name"),
                         (["channels.train=/data/honeybee"], "a channel is an S3 URI"),
                         (["spot=true", "max_run=3600", "max_wait=600"], "must be at least max_run"),
                         (["max_wait=7200"], "only for spot jobs"),
                         (["endpoint_image=docker"], "endpoint_image='docker': expected pytorch")]:
        overrides = [*ACCOUNT_SETTINGS, *bad]
        with pytest.raises(SystemExit, match=message):
            launch(compose_config(overrides, config_name="launch"), overrides, dry_run=True)


def test_deploy_dry_run_requests(no_network, no_account_env):
    from beedet.sagemaker.deploy import deploy

    artifact = "s3://bee-bucket/beedet/beedet-honeybee-tiled/beedet-honeybee-tiled-1/output/model.tar.gz"
    cfg = compose_config([*ACCOUNT_SETTINGS, f"model_data={artifact}", "endpoint_name=beedet-bees",
                          "instance_type=ml.g5.xlarge", "instance_count=2"], config_name="deploy")
    endpoint = deploy(cfg, dry_run=True)
    assert endpoint.name == "beedet-bees"
    requests = endpoint.requests

    model = requests["CreateModel"]
    assert model["ModelName"] == "beedet-bees"
    assert model["ExecutionRoleArn"] == "arn:aws:iam::111122223333:role/beedet-sagemaker"
    container = model["PrimaryContainer"]
    sm = cfg.sagemaker
    assert container["Image"].endswith(f"/pytorch-inference:{sm.framework_version}-gpu-{sm.py_version}")
    assert container["ModelDataUrl"] == artifact and not model.get("EnableNetworkIsolation")
    # The container runs the artifact's code/inference.py handlers.
    assert container["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert container["Environment"]["SAGEMAKER_SUBMIT_DIRECTORY"] == "/opt/ml/model/code"

    [variant] = requests["CreateEndpointConfig"]["ProductionVariants"]
    assert variant["ModelName"] == "beedet-bees"
    assert variant["InstanceType"] == "ml.g5.xlarge" and variant["InitialInstanceCount"] == 2
    endpoint = requests["CreateEndpoint"]
    assert endpoint["EndpointName"] == "beedet-bees"
    assert endpoint["EndpointConfigName"] == requests["CreateEndpointConfig"]["EndpointConfigName"]


def test_deploy_without_internet_uses_an_image_of_its_own_with_network_isolation(no_network, no_account_env):
    """The serving image (docker/serve.Dockerfile, in ECR) holds every dependency, so the Model may
    be isolated; on the default PyTorch container, which pip-installs at start, that is refused."""
    from beedet.sagemaker.deploy import deploy

    artifact = "s3://bee-bucket/beedet/beedet-honeybee-tiled/beedet-honeybee-tiled-1/output/model.tar.gz"
    image = "111122223333.dkr.ecr.eu-west-1.amazonaws.com/beedet-serve:1"
    base = [*ACCOUNT_SETTINGS, f"model_data={artifact}", "endpoint_name=beedet-bees"]
    model = deploy(compose_config([*base, f"image_uri={image}", "network_isolation=true"], config_name="deploy"),
                   dry_run=True).requests["CreateModel"]
    assert model["EnableNetworkIsolation"] is True
    assert model["PrimaryContainer"]["Image"] == image and model["PrimaryContainer"]["ModelDataUrl"] == artifact
    with pytest.raises(SystemExit, match="network_isolation=true needs image_uri"):
        deploy(compose_config([*base, "network_isolation=true"], config_name="deploy"), dry_run=True)


def test_deploy_needs_a_model_artifact_uri(no_account_env):
    from beedet.sagemaker.deploy import deploy

    with pytest.raises(SystemExit, match="model_data is required"):
        deploy(compose_config(ACCOUNT_SETTINGS, config_name="deploy"), dry_run=True)
    with pytest.raises(SystemExit, match="model.tar.gz"):
        deploy(compose_config([*ACCOUNT_SETTINGS, "model_data=outputs/run/checkpoints/best.ckpt"], config_name="deploy"),
               dry_run=True)
