# beedet's training image, usable as a SageMaker training image of one's own (BYO) and locally.
#
#   docker build -f docker/train.Dockerfile -t beedet-train .
#   docker run --gpus all -v $PWD/outputs:/opt/beedet/outputs beedet-train +experiment=honeybee_tiled
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

ENTRYPOINT ["python", "train.py"]
