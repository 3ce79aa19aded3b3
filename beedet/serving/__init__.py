"""Serving a trained beedet detector over HTTP.

``beedet.serving.handlers``: the request/response contract as SageMaker inference handlers
(``model_fn``, ``input_fn``, ``predict_fn``, ``output_fn``), which a model artifact's
``code/inference.py`` re-exports for SageMaker's PyTorch serving container.
``beedet.serving.app``: the same contract as a FastAPI app (``GET /ping``, ``POST /invocations``),
which ``python -m beedet.serve`` and ``docker/serve.Dockerfile`` run with uvicorn.
"""
