# beedet's serving image: SageMaker's inference container contract (GET /ping, POST /invocations on
# port 8080) answered by `python -m beedet.serve` (FastAPI + uvicorn). Usable as a SageMaker model
# image of one's own (BYO) and locally.
#
#   docker build -f docker/serve.Dockerfile -t beedet-serve .
#   docker run -p 8080:8080 -v $PWD/model:/opt/ml/model beedet-serve        # a model.tar.gz unpacked in ./model
#   docker run -p 8080:8080 -v $PWD/outputs:/outputs beedet-serve ckpt=/outputs/<run>/checkpoints/best.ckpt host=0.0.0.0
#
# On SageMaker (push it to ECR; `python -m beedet.sagemaker.deploy image_uri=<ECR URI> ...`) the
# container is started as `docker run IMAGE serve`, with the model artifact (a beedet training job's
# model.tar.gz) unpacked at /opt/ml/model. beedet/serve.py reads that `serve` as model_dir=/opt/ml/model
# host=0.0.0.0 port=8080; extra key=value overrides after it still apply. Request and answer formats:
# beedet/serving/handlers.py; limits (conf/serve.yaml): 6 MB bodies, 40 MP images, 50 s per inference.
#
# An endpoint without internet (network isolation, or a VPC with no route out) needs this image: it
# holds beedet and every dependency and installs nothing at start, where the default PyTorch
# container pip-installs the artifact's code/requirements.txt. Train with endpoint_image=beedet (the
# artifact then has no requirements.txt; this image reads only its model.ckpt), then, on x86_64 (or
# with `docker build --platform linux/amd64`):
#
#   aws ecr create-repository --repository-name beedet-serve
#   aws ecr get-login-password | docker login --username AWS --password-stdin ACCOUNT.dkr.ecr.REGION.amazonaws.com
#   docker tag beedet-serve ACCOUNT.dkr.ecr.REGION.amazonaws.com/beedet-serve:TAG
#   docker push ACCOUNT.dkr.ecr.REGION.amazonaws.com/beedet-serve:TAG
#   python -m beedet.sagemaker.deploy model_data=s3://.../model.tar.gz network_isolation=true image_uri=ACCOUNT.dkr.ecr.REGION.amazonaws.com/beedet-serve:TAG
#
# tests/test_offline_serving.py starts this image's command, `python -m beedet.serve serve`, on such an
# artifact with every non-loopback connection and any pip refused.
#
# The same base as docker/train.Dockerfile, so a checkpoint is loaded by the torch that wrote it. The
# base image brings CUDA-enabled torch and torchvision (a CPU instance runs it too); pip keeps them
# and adds beedet's other dependencies.
FROM pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime

# PYTHONPATH: `python -m beedet.serve` must import the copy in /opt/beedet, which has conf/ beside
# it (Hydra's config_path), not the one pip put in site-packages, whatever the working directory.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/opt/beedet

WORKDIR /opt/beedet
COPY pyproject.toml README.md ./
COPY beedet ./beedet
RUN pip install --no-cache-dir .
COPY conf ./conf

# The server runs as the unprivileged user beedet (uid 1000), not root. It writes no files (logs go
# to stdout, conf/serve.yaml), reads the model (a beedet artifact's files are world-readable,
# beedet/sagemaker/artifact.py) and owns only its home, for library caches (matplotlib's). SageMaker
# runs the image as its USER and AWS documents that it expects root: `--build-arg RUN_AS=0:0` builds
# an image that runs as root, should an endpoint's model files not be readable by uid 1000.
ARG RUN_AS=1000:1000
RUN groupadd --gid 1000 beedet \
    && useradd --uid 1000 --gid beedet --create-home --home-dir /home/beedet --shell /usr/sbin/nologin beedet
# Numeric, so that a runtime checking for a non-root user (Kubernetes' runAsNonRoot) can tell.
USER ${RUN_AS}

EXPOSE 8080
ENTRYPOINT ["python", "-m", "beedet.serve"]
# `docker run IMAGE` alone serves /opt/ml/model as SageMaker would.
CMD ["serve"]
