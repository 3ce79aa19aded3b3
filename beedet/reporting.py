"""Run artifacts for people: metrics.json, report.md (with count_plot.png and pr_curves.png), and
the hparams row in TensorBoard. train.py and evaluate.py both write them through :func:`report_run`."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger

from beedet.data.report import DataReport
from beedet.evaluation.counting import count_plot
from beedet.evaluation.plots import pr_curve_plot
from beedet.evaluation.results import DEFAULT_MAX_DETECTIONS, ValidationResult, stat_keys
from beedet.visualize import save_image

log = logging.getLogger("beedet.report")

#: Next to report.md, which embeds it.
COUNT_PLOT_NAME = "count_plot.png"
PR_PLOT_NAME = "pr_curves.png"


def report_run(
    run_dir: str | Path,
    result: ValidationResult | None,
    class_names: Sequence[str],
    data_reports: Sequence[DataReport] = (),
    *,
    checkpoint: str = "",
    count_threshold_source: str = "",
    title: str = "beedet evaluation",
    extra: Mapping[str, Any] | None = None,
    logger: Logger | None = None,
    hparams: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything a finished training run or evaluation leaves for people, in ``run_dir``:
    ``metrics.json`` (:func:`final_metrics` of ``result``, plus ``extra``), ``count_plot.png``,
    ``pr_curves.png`` (per class at IoU 0.5) and ``report.md`` (:func:`metrics_markdown`,
    embedding the plots, then ``data_reports``). With ``logger`` (TensorBoard), also the hparams
    row: ``hparams`` against the final mAP, AP50, AP75 and count MAE (``hp/*``). Returns the
    metrics.json payload. train.py and evaluate.py both end here."""
    if result is None:
        raise RuntimeError("no validation metrics: did validation run on at least one image?")
    payload = {**final_metrics(result, checkpoint=checkpoint, count_threshold_source=count_threshold_source),
               **(extra or {})}
    run_dir = Path(run_dir)
    (run_dir / "metrics.json").write_text(json.dumps(payload, indent=2))
    save_image(count_plot(result.counts), run_dir / COUNT_PLOT_NAME)
    pr_curves = result.metrics.pr_curves
    if pr_curves:
        save_image(pr_curve_plot(pr_curves), run_dir / PR_PLOT_NAME)
    text = metrics_markdown(payload, class_names, data_reports, title=title, count_plot=COUNT_PLOT_NAME,
                            pr_plot=PR_PLOT_NAME if pr_curves else None)
    (run_dir / "report.md").write_text(text)
    counting = payload["counting"]
    log.info("%s: mAP %.4f  AP50 %.4f  AP75 %.4f  count MAE %.3f at score >= %.2f (%s)", title, payload["mAP"],
             payload["AP50"], payload["AP75"], counting["all"]["MAE"], counting["threshold"], count_threshold_source)
    if logger is not None:
        final = {f"hp/{k}": payload[k] for k in ("mAP", "AP50", "AP75")}
        final["hp/count_MAE"] = payload["counting"]["all"]["MAE"]
        logger.log_hyperparams(dict(hparams or {}), final)
        logger.finalize("success")
    return payload


def report_data(run_dir: str | Path, reports: Mapping[str, DataReport]) -> None:
    """Log each split's data report and write them all to ``run_dir/data_report.md``, train first:
    what was read, and every record that was clipped or skipped, before any training time is spent."""
    for split, report in reports.items():
        log.info("%s data:\n%s", split, report)
    (Path(run_dir) / "data_report.md").write_text("\n\n".join(report.to_markdown() for report in reports.values()))


def final_metrics(result: ValidationResult | None, *, checkpoint: str = "", count_threshold_source: str = "") -> dict[str, Any]:
    """The metrics.json payload: COCO stats at top level (mAP, AP50, AP75, ...), per-class AP,
    ``size_bins`` and ``max_detections`` (:meth:`CocoMetrics.to_dict`), and a ``counting``
    section: :meth:`CountMetrics.to_dict` plus ``threshold_source`` (where the threshold came
    from) and ``oracle`` (threshold and overall errors of the best threshold for these very
    images, for reference)."""
    if result is None:
        raise RuntimeError("no validation metrics: did validation run on at least one image?")
    payload = result.metrics.to_dict()
    payload["counting"] = {**result.counts.to_dict(), "threshold_source": count_threshold_source}
    payload["counting"]["oracle"] = {"threshold": result.oracle_counts.threshold, "all": dict(result.oracle_counts.overall)}
    if checkpoint:
        payload["checkpoint"] = checkpoint
    return payload


def count_threshold_source(configured: float | None, *, checkpoint: bool = False, stored: float | None = None,
                           override: float | None = None) -> str:
    """Where a report's count threshold comes from, in words. ``configured``: the training
    config's ``evaluation.count_threshold``; ``checkpoint``: the report evaluates a saved
    checkpoint (evaluate.py), whose threshold is ``stored`` (None: it has none); ``override``:
    evaluate.py's ``count_threshold``."""
    if override is not None:
        return "evaluate count_threshold override"
    if not checkpoint:
        return "chosen on this validation split" if configured is None else "training config evaluation.count_threshold"
    if stored is None:
        return "chosen on this data: the checkpoint has no count threshold"
    if configured is None:
        return "checkpoint: chosen on its training run's validation split"
    return "checkpoint: fixed by its training config evaluation.count_threshold"


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

    for group in ("model", "optimizer", "scheduler", "slicing"):
        if cfg.get(group) is not None:
            walk(group, OmegaConf.to_container(cfg[group], resolve=True))
    data = OmegaConf.to_container(cfg.data, resolve=True)
    for key in ("subset_fraction", "val_fraction", "batch_size", "seed", "repeat_factor_threshold", "group_by"):
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


def metrics_markdown(
    metrics: Mapping[str, Any],
    class_names: Sequence[str],
    reports: Sequence[DataReport] = (),
    *,
    title: str = "beedet evaluation",
    count_plot: str | None = None,
    pr_plot: str | None = None,
) -> str:
    """A readable report of a :func:`final_metrics` payload: COCO stats, per-class AP, AP by box
    size, counting errors (embedding the image file ``count_plot`` when given), then the dataset
    statistics."""
    max_detections = int(metrics.get("max_detections", DEFAULT_MAX_DETECTIONS))
    lines = [f"# {title}", ""]
    if metrics.get("checkpoint"):
        lines += [f"Checkpoint: `{metrics['checkpoint']}`", ""]
    if metrics.get("precision"):
        # evaluate.py's: which precision the network ran in, and why (serving's float32 by default).
        precision = metrics["precision"]
        why = ("the evaluate precision override" if precision.get("source") == "override"
               else "the precision beedet.predict and beedet.serve run in")
        lines += [f"Precision: `{precision['used']}`, {why}; the checkpoint was trained in "
                  f"`{precision.get('training')}`.", ""]
    lines += ["## COCO box metrics", "", f"At most {max_detections} detections per image (COCO maxDets).", ""]
    lines += ["| metric | value |", "|---|---|"]
    for key in stat_keys(max_detections):
        if key in metrics:
            lines.append(f"| {key} | {_fmt(metrics[key])} |")
    lines += ["", "## Per-class AP", "", "| class | AP@[.5:.95] | AP50 |", "|---|---|---|"]
    for name in class_names:
        lines.append(f"| {name} | {_fmt(metrics['per_class_AP'].get(name))} | {_fmt(metrics['per_class_AP50'].get(name))} |")
    lines += ["", "n/a: the class has no ground truth in this split (pycocotools reports -1).", ""]
    if pr_plot:
        lines += [f"![precision-recall per class at IoU 0.5]({pr_plot})", ""]
    lines += _size_bin_section(metrics.get("size_bins") or [])
    if metrics.get("counting"):
        lines += _counting_section(metrics["counting"], class_names, count_plot)
    for report in reports:
        lines += [report.to_markdown(), ""]
    return "\n".join(lines)


def _size_bin_section(size_bins: Sequence[Mapping[str, Any]]) -> list[str]:
    if not size_bins:
        return []
    lines = [
        "## AP by box size",
        "",
        "Bins of box area (px^2 of the stored images) with equal shares of the training boxes, or the",
        "configured edges; side = sqrt(area). AP and recall are averaged over the classes present in a bin.",
        "",
        "| bin | area px^2 | side px | boxes | AP@[.5:.95] | AP50 | recall@0.5 |",
        "|---|---|---|---|---|---|---|",
    ]
    for size_bin in size_bins:
        lo, hi = float(size_bin["min_area"]), float(size_bin["max_area"])
        last = hi >= 1e10  # COCO's "no upper limit"
        area = f"{lo:.0f} and up" if last else f"{lo:.0f}-{hi:.0f}"
        side = f"{lo ** 0.5:.1f} and up" if last else f"{lo ** 0.5:.1f}-{hi ** 0.5:.1f}"
        lines.append(
            f"| {size_bin['name']} | {area} | {side} | {size_bin['num_gt']} | {_fmt(size_bin['AP'])} | "
            f"{_fmt(size_bin['AP50'])} | {_fmt(size_bin['recall50'])} |"
        )
    return lines + [""]


def _counting_section(counting: Mapping[str, Any], class_names: Sequence[str], count_plot: str | None) -> list[str]:
    def row(name: str, values: Mapping[str, float]) -> str:
        return (
            f"| {name} | {values['MAE']:.3f} | {values['RMSE']:.3f} | {values['bias']:+.3f} | "
            f"{values['mean_true']:.2f} | {values['mean_pred']:.2f} |"
        )

    lines = [
        "## Counting",
        "",
        f"Objects per image counted as detections scoring >= {counting['threshold']:.2f}"
        + (f" ({counting['threshold_source']})" if counting.get("threshold_source") else "")
        + f", over {counting['num_images']} images. Bias = mean(predicted - true): negative undercounts.",
        "",
        "| class | MAE | RMSE | bias | mean true | mean predicted |",
        "|---|---|---|---|---|---|",
        row("all", counting["all"]),
    ]
    lines += [row(name, counting["per_class"][name]) for name in class_names if name in counting["per_class"]]
    oracle = counting.get("oracle")
    if oracle and oracle["threshold"] != counting["threshold"]:
        lines += [
            "",
            f"For reference only: the best threshold for exactly these images is {oracle['threshold']:.2f} "
            f"(all-class count MAE {oracle['all']['MAE']:.3f}); it was chosen by looking at the answers.",
        ]
    elif oracle:
        lines += ["", "This threshold is also the best one for exactly these images (it was chosen on them)."]
    if count_plot:
        lines += ["", f"![predicted against true objects per image]({count_plot})"]
    return lines + [""]
