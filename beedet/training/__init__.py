"""Training: what surrounds the network while Lightning fits it.

``system`` (``DetectionModule``: losses, optimizer and schedule, validation metrics, the class-id
shift into torchvision's background convention; evaluate, predict, export and serving rebuild it
from checkpoints), ``schedules`` (learning-rate schedules), ``averaging`` (the EMA of the weights),
``callbacks`` (TensorBoard pictures and curves, validation quality, early stopping),
``throughput`` (speed, ETA and memory), ``tensorboard_run`` (the run's name in TensorBoard) and
``best_checkpoint`` (the best checkpoint validated once more at the end of ``fit``).
"""
