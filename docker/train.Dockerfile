# beedet's training image, usable as a SageMaker training image of one's own (BYO) and locally.
#
#   docker build -f docker/train.Dockerfile -t beedet-train .
#   mkdir -p outputs && docker run --gpus all -v $PWD/outputs:/opt/beedet/outputs beedet-train +experiment=honeybee_tiled
#
# On SageMaker (push it to ECR; `python -m beedet.sagemaker.launch image_uri=<ECR URI> ...`, or any
# CreateTrainingJob naming it) the container is started as `docker run IMAGE train`. train.py takes
# that `train` argument: it reads the job from /opt/ml (hyperparameters.json, the channels under
# /opt/ml/input/data, checkpointconfig.json), trains, resumes from /opt/ml/checkpoints after a spot
# interruption, and leaves the model artifact in /opt/ml/model (beedet/sagemaker/training_job.py).
# A job that brings its code as SourceCode (the SDK v3 ModelTrainer) replaces the entry point with
# the SDK's own driver, which runs `python train.py --key value ...` with the SM_* variables; that
# works the same. One instance per job here (Lightning uses every GPU of it); several instances need
# torchrun, i.e. the launcher's default PyTorch container with its Torchrun distribution.
#
# torch 2.6.0 as in the PyTorch container that serves the model (conf/sagemaker/default.yaml
# framework_version), so the serving side loads checkpoints written by the same torch. The base
# image brings CUDA-enabled torch and torchvision; pip keeps them and adds beedet's other
# dependencies.
FROM pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime

# Unbuffered: log lines (the metric lines SageMaker's metric definitions read among them) reach
# CloudWatch as they are written, not when a buffer fills.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /opt/beedet
COPY pyproject.toml README.md ./
COPY beedet ./beedet
RUN pip install --no-cache-dir .
COPY conf ./conf
COPY train.py evaluate.py ./

# Training runs as the unprivileged user beedet (uid 1000), not root. The code above stays root's,
# read-only to the job. beedet owns what training writes: outputs/ and data/ (a local run's outputs
# and generated data, beside the code), its home (the torch hub cache of pretrained weights,
# matplotlib's cache), and SageMaker's job directories: model/ (packed into model.tar.gz),
# output/ (output/data, output/tensorboard, the failure file) and checkpoints/ (synced with S3).
# `docker run -v DIR:/opt/beedet/outputs` needs DIR writable by uid 1000.
#
# SageMaker runs the image as its USER (it does not switch to root) and mounts the job's /opt/ml
# directories at run time; AWS documents that it expects root there. Where those mounts are not
# writable by uid 1000 a job fails at its first write with a PermissionError under /opt/ml; build
# that job's image with `--build-arg RUN_AS=0:0` to run it as root.
ARG RUN_AS=1000:1000
RUN groupadd --gid 1000 beedet \
    && useradd --uid 1000 --gid beedet --create-home --home-dir /home/beedet --shell /usr/sbin/nologin beedet \
    && mkdir -p /opt/beedet/outputs /opt/beedet/data \
        /opt/ml/model /opt/ml/output/data /opt/ml/output/tensorboard /opt/ml/checkpoints \
    && chown -R beedet:beedet /opt/beedet/outputs /opt/beedet/data /opt/ml/model /opt/ml/output /opt/ml/checkpoints
# Numeric, so that a runtime checking for a non-root user (Kubernetes' runAsNonRoot) can tell.
USER ${RUN_AS}

ENTRYPOINT ["python", "train.py"]
