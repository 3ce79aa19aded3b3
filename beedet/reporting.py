"""Run artifacts for people: metrics.json, report.md, and the hparams row in TensorBoard."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from beedet.data.report import DataReport
from beedet.evaluation.coco import CocoMetrics


def final_metrics(metrics: CocoMetrics | None, *, checkpoint: str = "") -> dict[str, Any]:
    """The metrics.json payload: COCO stats at top level (mAP, AP50, AP75, ...), per-class AP."""
    if metrics is None:
        raise RuntimeError("no validation metrics: did validation run on at least one image?")
    payload = metrics.to_dict()
    if checkpoint:
        payload["checkpoint"] = checkpoint
    return payload


def hparams_for_logging(cfg: DictConfig, choices: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Flat scalar hyperparameters for TensorBoard's hparams tab (nested keys joined by '/')."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                if key != "_target_":
                    walk(f"{prefix}/{key}" if prefix else str(key), value)
        elif isinstance(node, (int, float, str, bool)):
            flat[prefix] = node

    for group in ("model", "optimizer", "scheduler"):
        if cfg.get(group) is not None:
            walk(group, OmegaConf.to_container(cfg[group], resolve=True))
    data = OmegaConf.to_container(cfg.data, resolve=True)
    for key in ("subset_fraction", "val_fraction", "batch_size", "seed"):
        if key in data:
            flat[f"data/{key}"] = data[key]
    flat["trainer/max_epochs"] = cfg.trainer.get("max_epochs")
    flat["trainer/precision"] = str(cfg.trainer.get("precision"))
    flat["seed"] = cfg.seed
    for group, choice in (choices or {}).items():
        if isinstance(choice, str):
            flat[f"choice/{group}"] = choice
    return {k: v for k, v in flat.items() if v is not None}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or value < 0 else f"{value:.4f}"


def metrics_markdown(metrics: Mapping[str, Any], class_names: Sequence[str], reports: Sequence[DataReport] = (), *, title: str = "beedet evaluation") -> str:
    """A readable report: COCO stats, per-class AP, then the dataset statistics."""
    lines = [f"# {title}", ""]
    if metrics.get("checkpoint"):
        lines += [f"Checkpoint: `{metrics['checkpoint']}`", ""]
    lines += ["## COCO box metrics", "", "| metric | value |", "|---|---|"]
    for key in ("mAP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large"):
        if key in metrics:
            lines.append(f"| {key} | {_fmt(metrics[key])} |")
    lines += ["", "## Per-class AP", "", "| class | AP@[.5:.95] | AP50 |", "|---|---|---|"]
    for name in class_names:
        lines.append(f"| {name} | {_fmt(metrics['per_class_AP'].get(name))} | {_fmt(metrics['per_class_AP50'].get(name))} |")
    lines += ["", "n/a: the class has no ground truth in this split (pycocotools reports -1).", ""]
    for report in reports:
        lines += [report.to_markdown(), ""]
    return "\n".join(lines)
