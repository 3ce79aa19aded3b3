"""``python -m beedet.average_checkpoints A.ckpt B.ckpt [...] --out soup.ckpt``: one checkpoint whose
weights are the mean of several runs' weights (a "model soup", Wortsman et al. 2022; stochastic
weight averaging, Izmailov et al. 2018, averages along one run the same way).

When it helps: checkpoints that share a trajectory, such as a run and its continuations from
``init_checkpoint`` (warm restarts), or fine-tunes of one checkpoint. Their weights lie in one basin,
and the mean of two nearby solutions is often better than either (on the honeybee recipe's two last
warm restarts: val AP50 0.489 and 0.476 alone, 0.503 averaged; ``bench/README.md``). Checkpoints of
unrelated runs average into noise; adding an older, farther point can hurt too (the same two with
the restart before them: 0.432). Always evaluate the result (``evaluate.py ckpt=soup.ckpt``).

What is averaged: every floating-point tensor of the ``state_dict`` (each checkpoint's validation
weights, which are the EMA in a recipe that keeps one), BatchNorm running statistics included, in
float64, stored in the original dtype. Integer buffers (BatchNorm's ``num_batches_tracked``) take
the largest value. ``--bn-batches N`` then re-estimates the BatchNorm statistics for the averaged
weights on N training batches, as SWA does (``torch.optim.swa_utils.update_bn``), from the data and
augmentation the first checkpoint's stored config names.

The checkpoints must be one network for one class list: the class names and every tensor's name
and shape must agree (the error names the file that differs). Other ``model`` settings (loss, input
size, thresholds) may differ between fine-tunes: that is logged, and the result keeps the first's.
The result carries the first checkpoint's config, class names and size bins, the largest epoch and
step, and ``averaged_from`` (the sources). Its count threshold is kept only when every source has
the same one (warm restarts rarely do); otherwise it is left unset, so ``evaluate.py`` chooses it
on the data it evaluates and reports it. Evaluate on the validation split first and pass that
threshold on (``count_threshold=`` for evaluate.py on other images, such as ``val_subset=unseen``;
``score_threshold=`` for predict and serving): chosen on the images it is scored on, it flatters
the count. The optimizer and loop state are not kept: the result evaluates, predicts, exports,
serves and seeds new runs (``init_checkpoint=``); it does not resume.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from beedet.checkpointing import PAYLOAD_KEY, AtomicCheckpointIO, CheckpointPayload, load_checkpoint

log = logging.getLogger(__name__)


def average_state_dicts(state_dicts: Sequence[dict[str, Tensor]], sources: Sequence[str]) -> dict[str, Tensor]:
    """The element-wise mean of ``state_dicts`` (same keys, shapes and dtypes; ``sources`` name them
    in errors). Floating-point tensors are averaged in float64 and stored in their own dtype; integer
    tensors (step counters) take the largest value."""
    if len(state_dicts) < 2:
        raise ValueError(f"averaging needs at least two checkpoints, got {len(state_dicts)}")
    first, first_source = state_dicts[0], sources[0]
    for state_dict, source in zip(state_dicts[1:], sources[1:]):
        missing, extra = sorted(set(first) - set(state_dict)), sorted(set(state_dict) - set(first))
        if missing or extra:
            raise ValueError(f"{source} does not hold the same tensors as {first_source}: missing {missing[:5]}, "
                             f"extra {extra[:5]} (average checkpoints of one network only)")
        for name, tensor in first.items():
            other = state_dict[name]
            if other.shape != tensor.shape or other.dtype != tensor.dtype:
                raise ValueError(f"{source}: {name} is {other.dtype} {tuple(other.shape)}, but {tensor.dtype} "
                                 f"{tuple(tensor.shape)} in {first_source} (average checkpoints of one network only)")
    averaged = {}
    for name, tensor in first.items():
        stacked = torch.stack([state_dict[name] for state_dict in state_dicts])
        if tensor.is_floating_point():
            averaged[name] = stacked.double().mean(dim=0).to(tensor.dtype)
        else:
            averaged[name] = stacked.amax(dim=0)
    return averaged


def _check_same_network(payloads: Sequence[CheckpointPayload], sources: Sequence[str]) -> None:
    """Refuse other class lists; warn about other model settings (the result keeps the first's)."""
    first = payloads[0]
    for payload, source in zip(payloads[1:], sources[1:]):
        if payload.class_names != first.class_names:
            raise ValueError(f"{source} detects {payload.class_names}, but {sources[0]} detects {first.class_names}: "
                             "average checkpoints trained for the same classes only")
        mine, theirs = first.config.get("model") or {}, payload.config.get("model") or {}
        differing = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if differing:
            # Loss settings, thresholds or the input size can differ between fine-tunes of one
            # network (and their weights still average); the tensors' shapes are checked after this.
            log.warning("%s was trained with other model settings than %s (%s); the average keeps the first's",
                        source, sources[0], ", ".join(f"model.{k}: {mine.get(k)!r} -> {theirs.get(k)!r}"
                                                       for k in differing))


def recompute_batchnorm(net: nn.Module, batches: Any, num_batches: int, to_network_input: Any) -> int:
    """Re-estimate every BatchNorm layer's running mean and variance in ``net`` as the plain average
    over ``num_batches`` of ``batches`` (``momentum=None``), in training mode and without gradients,
    then restore each layer's momentum and ``net``'s mode. ``to_network_input(batch)`` returns the
    arguments of one forward pass. Returns the number of batches used (fewer when ``batches`` runs out).
    A no-op returning 0 when ``net`` has no BatchNorm layer."""
    layers = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if num_batches < 0:
        raise ValueError(f"num_batches must be >= 0, got {num_batches}")
    if not layers or num_batches == 0:
        return 0
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over the batches, not an EMA of them
    was_training = net.training
    net.train()
    used = 0
    try:
        with torch.no_grad():
            for batch in batches:
                if used >= num_batches:
                    break
                net(*to_network_input(batch))
                used += 1
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        net.train(was_training)
    if used == 0:
        raise ValueError("no batch to re-estimate BatchNorm statistics on (the training data is empty)")
    unreached = [name for name, m in net.named_modules() if m in layers and int(m.num_batches_tracked) == 0]
    if unreached:
        # Reset above and never run: they hold the defaults (mean 0, variance 1), not statistics.
        log.warning("BatchNorm layers the forward pass did not reach keep default statistics: %s", ", ".join(unreached))
    return used


def _recompute_batchnorm_on_training_data(state_dict: dict[str, Tensor], ckpt_path: Path, num_batches: int,
                                          num_workers: int | None) -> tuple[dict[str, Tensor], int]:
    """``state_dict`` with its BatchNorm statistics re-estimated on the training data and augmentation
    of ``ckpt_path``'s stored config (imports the training stack: only for ``--bn-batches``)."""
    from beedet.assembly import build_datamodule, load_system
    from beedet.data.dataset import images_to_float

    system, run_cfg = load_system(ckpt_path)
    system.load_state_dict(state_dict)
    overrides = {} if num_workers is None else {"num_workers": num_workers}
    datamodule = build_datamodule(run_cfg.data, run_cfg.augment, **overrides)
    datamodule.load_labels()
    datamodule.setup("fit")

    def to_network_input(batch):
        # The training forward pass (targets given: torchvision's SSD asks for them in training
        # mode), on the images the run trained on, so the statistics are the ones training saw.
        images, targets = batch
        return images_to_float(images), system._to_network_targets(targets)

    used = recompute_batchnorm(system.net, datamodule.train_dataloader(), num_batches, to_network_input)
    return {name: tensor.detach().clone() for name, tensor in system.state_dict().items()}, used


def average_checkpoints(paths: Sequence[str | os.PathLike], destination: str | os.PathLike, *,
                        bn_batches: int = 0, num_workers: int | None = None) -> Path:
    """Write the average of the beedet checkpoints at ``paths`` to ``destination`` (see the module
    docstring); returns it. Raises ``ValueError`` naming the file when the checkpoints are not one
    network for one class list."""
    paths = [Path(p) for p in paths]
    sources = [str(p) for p in paths]
    if len(paths) < 2:
        raise ValueError(f"averaging needs at least two checkpoints, got {len(paths)}: {sources}")
    if bn_batches < 0:
        raise ValueError(f"bn_batches must be >= 0, got {bn_batches}")
    loaded = [load_checkpoint(p) for p in paths]  # tensors and plain data only, trusted targets only
    for (checkpoint, _), source in zip(loaded, sources):
        if not isinstance(checkpoint.get("state_dict"), dict):
            raise ValueError(f"{source} holds no state_dict: not a checkpoint of trained weights")
    payloads = [payload for _, payload in loaded]
    _check_same_network(payloads, sources)
    state_dicts = [checkpoint["state_dict"] for checkpoint, _ in loaded]
    averaged = average_state_dicts(state_dicts, sources)
    if bn_batches > 0:
        averaged, used = _recompute_batchnorm_on_training_data(averaged, paths[0], bn_batches, num_workers)
        log.info("BatchNorm statistics re-estimated on %d training batches", used)
    thresholds = {payload.count_threshold for payload in payloads}
    first = payloads[0]
    payload = CheckpointPayload(first.class_names, first.config_yaml,
                                thresholds.pop() if len(thresholds) == 1 else None, first.size_bins)
    result = {
        "state_dict": averaged,
        PAYLOAD_KEY: payload.to_plain(),
        "epoch": max(int(checkpoint.get("epoch", 0)) for checkpoint, _ in loaded),
        "global_step": max(int(checkpoint.get("global_step", 0)) for checkpoint, _ in loaded),
        "averaged_from": sources,
        "bn_batches": int(bn_batches),
    }
    destination = Path(destination)
    AtomicCheckpointIO().save_checkpoint(result, destination)
    load_checkpoint(destination)  # what was written is what beedet reads
    return destination


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m beedet.average_checkpoints",
        description="Average the weights of beedet checkpoints of one network (for example a run and its warm "
                    "restarts from init_checkpoint); evaluate the result with evaluate.py ckpt=OUT.")
    parser.add_argument("checkpoints", nargs="+", help="two or more beedet checkpoints of the same network")
    parser.add_argument("--out", required=True, help="where to write the averaged checkpoint")
    parser.add_argument("--bn-batches", type=int, default=0,
                        help="re-estimate BatchNorm statistics on this many training batches of the first "
                             "checkpoint's data and augmentation (default 0: average them with the weights)")
    parser.add_argument("--num-workers", type=int, default=None, help="data loader workers for --bn-batches")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = average_checkpoints(args.checkpoints, args.out, bn_batches=args.bn_batches, num_workers=args.num_workers)
    except (ValueError, FileNotFoundError) as exc:  # which file, and why: no traceback
        parser.exit(2, f"error: {exc}\n")
    print(f"wrote {out}: the mean of {len(args.checkpoints)} checkpoints; evaluate it: python evaluate.py ckpt={out}")


if __name__ == "__main__":
    main()
