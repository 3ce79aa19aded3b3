"""What TensorBoard calls a training run: the name of its run folder.

``conf/logger/tensorboard.yaml`` writes a run's events to ``<run_dir>/tensorboard/<run name>/``,
the run name coming from :func:`run_name` (Hydra instantiates it as the logger's ``version``).
TensorBoard names a run by its folder under ``--logdir``, so ``tensorboard --logdir <run_dir>``
lists ``tensorboard/synthetic_2025-06-01_12-00-00`` rather than a bare "tensorboard", and
``--logdir outputs`` tells every run apart by name and time. A run resumed in place
(``run_dir=... ckpt_path=last``) keeps its name, so its events continue the same TensorBoard run.
A SageMaker job names its run after the job (``beedet/sagemaker/training_job.py``).
"""

from __future__ import annotations

from pathlib import Path


def run_name(name: str, run_dir: str) -> str:
    """``<name>_<run folder>``: ``synthetic_2025-06-01_12-00-00`` for the run folder
    ``outputs/synthetic/2025-06-01_12-00-00`` of a run called ``synthetic`` (the config's ``name``).
    A run folder whose name already starts with ``name`` (``run_dir=outputs/bees_lr3``, run
    ``bees``) is the run's name as it is."""
    folder = Path(str(run_dir)).name
    return folder if folder.startswith(str(name)) else f"{name}_{folder}"
