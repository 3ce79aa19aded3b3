# A training image for beedet: `docker build -f docker/train.Dockerfile -t beedet-train .`
# then `docker run --gpus all -v $PWD/outputs:/opt/beedet/outputs beedet-train +experiment=...`.
# The base carries CUDA-enabled PyTorch; pip keeps it and installs beedet's other dependencies.
# (The SageMaker-compatible training and serving images are tracked in the SageMaker issue.)
FROM pytorch/pytorch:2.4.1-cuda12.1-cudnn9-runtime

WORKDIR /opt/beedet
COPY pyproject.toml README.md ./
COPY beedet ./beedet
RUN pip install --no-cache-dir .
COPY conf ./conf
COPY train.py evaluate.py ./

ENTRYPOINT ["python", "train.py"]
