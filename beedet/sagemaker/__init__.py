"""beedet on SageMaker.

Inside a training job (train.py as its entry point): ``environment`` reads the container's SM_*
contract, ``hyperparameters`` and ``training_job`` turn the job into train.py's Hydra overrides,
``metrics`` prints the log lines its metric definitions read, and ``artifact`` writes the model
artifact the PyTorch serving container loads. From a workstation: ``launch`` starts a training
job and ``deploy`` an endpoint, both with the SageMaker Python SDK v3.
"""
