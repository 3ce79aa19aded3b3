"""Run artifacts for people: metrics.json, report.md (with count_plot.png, pr_curves.png,
f1_curve.png and confusion_matrix.png), and the hparams row in TensorBoard. train.py and
evaluate.py both write them through :func:`report_run`."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger

from beedet.data.data_report import DataReport
from beedet.data.datamodule import DATA_REPORT_NAME, BeeDataModule
from beedet.evaluation.counting import count_plot
from beedet.evaluation.detection_quality import class_table, class_table_markdown
from beedet.evaluation.plots import confusion_matrix_plot, f1_curve_plot, pr_curve_plot
from beedet.evaluation.results import DEFAULT_MAX_DETECTIONS, ValidationResult, stat_keys
from beedet.reporting.overlays import save_image

log = logging.getLogger("beedet.report")

#: Next to report.md, which embeds it.
COUNT_PLOT_NAME = "count_plot.png"
PR_PLOT_NAME = "pr_curves.png"
F1_PLOT_NAME = "f1_curve.png"
CONFUSION_PLOT_NAME = "confusion_matrix.png"


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
    ``pr_curves.png`` (per class at IoU 0.5), ``f1_curve.png`` and ``confusion_matrix.png`` (at
    the count threshold in use; with ``result.quality``) and ``report.md`` (:func:`metrics_markdown`,
    embedding the plots, then ``data_reports``). With ``logger`` (TensorBoard), also the hparams
    row: ``hparams`` against the final mAP, AP50, AP75, count MAE, per-class AP50
    (``hp/AP50/<class>``) and, given ``extra["best_epoch"]``, the best epoch (``hp/*``), and
    ``hparams.yaml`` beside the events. train.py's ``extra`` (``BestCheckpoint.summary``) adds
    ``best_epoch``, ``best_step`` and ``training_time_s``, which report.md states first. Returns
    the metrics.json payload. train.py and evaluate.py both end here."""
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
    quality_plots = result.quality is not None and result.f1_curve is not None
    if quality_plots:
        save_image(confusion_matrix_plot(result.quality.confusion), run_dir / CONFUSION_PLOT_NAME)
        save_image(f1_curve_plot(result.f1_curve, {"count threshold": result.quality.threshold}), run_dir / F1_PLOT_NAME)
    text = metrics_markdown(payload, class_names, data_reports, title=title, count_plot=COUNT_PLOT_NAME,
                            pr_plot=PR_PLOT_NAME if pr_curves else None,
                            f1_plot=F1_PLOT_NAME if quality_plots else None,
                            confusion_plot=CONFUSION_PLOT_NAME if quality_plots else None)
    (run_dir / "report.md").write_text(text)
    counting = payload["counting"]
    log.info("%s: mAP %.4f  AP50 %.4f  AP75 %.4f  count MAE %.3f at score >= %.2f (%s)", title, payload["mAP"],
             payload["AP50"], payload["AP75"], counting["all"]["MAE"], counting["threshold"], count_threshold_source)
    if logger is not None:
        final = {f"hp/{k}": payload[k] for k in ("mAP", "AP50", "AP75")}
        final["hp/count_MAE"] = payload["counting"]["all"]["MAE"]
        final.update({f"hp/AP50/{name}": ap for name, ap in payload["per_class_AP50"].items() if ap is not None})
        if payload.get("best_epoch") is not None:
            final["hp/best_epoch"] = payload["best_epoch"]
        logger.log_hyperparams(dict(hparams or {}), final)
        # Lightning writes hparams.yaml once, at the first checkpoint, when it holds no parameters
        # yet ({}), and never again: drop it so that finalize writes the parameters logged now.
        log_dir = getattr(logger, "log_dir", None)
        if log_dir:
            (Path(log_dir) / "hparams.yaml").unlink(missing_ok=True)
        logger.finalize("success")
    return payload


def report_data(run_dir: str | Path, datamodule: BeeDataModule) -> None:
    """Log each split's data report and write them all to ``run_dir/data_report.md``, train first:
    what was read, and every record that was clipped or skipped, before any training time is spent
    (the data module rewrites it at the end with images that failed to decode while training)."""
    for split, report in datamodule.reports.items():
        log.info("%s data:\n%s", split, report)
    (Path(run_dir) / DATA_REPORT_NAME).write_text(datamodule.reports_markdown())


def final_metrics(result: ValidationResult | None, *, checkpoint: str = "", count_threshold_source: str = "") -> dict[str, Any]:
    """The metrics.json payload: COCO stats at top level (mAP, AP50, AP75, ...), per-class AP,
    ``size_bins`` and ``max_detections`` (:meth:`CocoMetrics.to_dict`), and a ``counting``
    section: :meth:`CountMetrics.to_dict` plus ``threshold_source`` (where the threshold came
    from) and ``oracle`` (threshold and overall errors of the best threshold for these very
    images, for reference). With ``result.quality``, a ``detection_quality`` section at the count
    threshold in use (:meth:`DetectionQuality.to_dict`: threshold, IoU, ``all`` and
    ``per_class`` precision / recall / F1 / instances / TP / FP / FN, per class also AP50 and AP,
    and the ``confusion_matrix``), with ``best_F1`` (threshold and F1 where the F1 curve peaks);
    with ``result.loss``, ``loss`` (the validation loss: ``total``, ``classification``, ``box``)."""
    if result is None:
        raise RuntimeError("no validation metrics: did validation run on at least one image?")
    payload = result.metrics.to_dict()
    payload["counting"] = {**result.counts.to_dict(), "threshold_source": count_threshold_source}
    payload["counting"]["oracle"] = {"threshold": result.oracle_counts.threshold, "all": dict(result.oracle_counts.overall)}
    if result.quality is not None:
        quality = {**result.quality.to_dict(), "per_class": class_table(result.quality, result.metrics)}
        best = result.f1_curve.best() if result.f1_curve is not None else None
        if best is not None:
            quality["best_F1"] = {"threshold": best[0], "F1": best[1]}
        payload["detection_quality"] = quality
    if result.loss is not None:
        payload["loss"] = dict(result.loss)
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


def hparams_for_logging(cfg: DictConfig, choices: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The hyperparameters a user tunes, flat and plainly named, for TensorBoard's HParams tab and
    ``hparams.yaml``, in this order (a key the config lacks, or that is unset, is left out):

    ``model``, ``augment``, ``optimizer``, ``scheduler``, ``data``, ``experiment``, ``slicing``:
    which file of ``conf/<group>/`` the run used (``choices``: Hydra's ``runtime.choices``;
    without them, the model's, optimizer's and scheduler's ``_target_`` names); ``lr``,
    ``weight_decay``, ``momentum``, ``batch_size``, ``max_epochs``, ``max_steps`` (when limited),
    ``max_time``, ``warmup_steps``, ``image_size`` (the network's input side), ``precision``, ``seed``.
    No Hydra internals (``_target_``, ``_partial_``, ``hydra/*`` choices)."""
    choices = choices or {}
    flat: dict[str, Any] = {}
    for group in ("model", "augment", "optimizer", "scheduler", "data", "experiment", "slicing"):
        choice = choices.get(group)
        node = cfg.get(group)
        if choice is None and group in ("model", "optimizer", "scheduler") and node is not None and node.get("_target_"):
            choice = str(node["_target_"]).rsplit(".", 1)[-1]  # e.g. "AdamW", "warmup_cosine"
        flat[group] = choice

    def value(path: str) -> Any:
        found = OmegaConf.select(cfg, path, default=None)
        return found if isinstance(found, (int, float, str, bool)) else None

    flat.update({"lr": value("optimizer.lr"), "weight_decay": value("optimizer.weight_decay"),
                 "momentum": value("optimizer.momentum"), "batch_size": value("data.batch_size"),
                 "max_epochs": value("trainer.max_epochs")})
    max_steps = value("trainer.max_steps")
    flat["max_steps"] = max_steps if isinstance(max_steps, int) and max_steps > 0 else None
    flat.update({"max_time": value("trainer.max_time"), "warmup_steps": value("scheduler.warmup_steps"),
                 "image_size": value("model.image_size"), "precision": value("trainer.precision"), "seed": value("seed")})
    return {key: (str(v) if key == "precision" else v) for key, v in flat.items() if v is not None}


def _duration(seconds: float) -> str:
    """``1 h 02 min 03 s``, ``4 min 05 s`` or ``12.3 s``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {secs:02d} s" if hours else f"{minutes} min {secs:02d} s"


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
    f1_plot: str | None = None,
    confusion_plot: str | None = None,
) -> str:
    """A readable report of a :func:`final_metrics` payload: COCO stats, the per-class table (with
    a ``detection_quality`` section: instances, P, R, F1 at the count threshold, AP50, AP; else
    per-class AP), the confusion matrix, AP by box size, counting errors, then the dataset
    statistics. The image files ``pr_plot``, ``f1_plot``, ``confusion_plot`` and ``count_plot``
    are embedded when given."""
    max_detections = int(metrics.get("max_detections", DEFAULT_MAX_DETECTIONS))
    lines = [f"# {title}", ""]
    if metrics.get("checkpoint"):
        lines += [f"Checkpoint: `{metrics['checkpoint']}`", ""]
    if metrics.get("best_epoch") is not None:
        # Counted from 0 as TensorBoard's `epoch` chart and the checkpoint count it.
        step = f", step {metrics['best_step']}" if metrics.get("best_step") is not None else ""
        lines += [f"Best epoch: {metrics['best_epoch']} (counted from 0{step}): the checkpoint this report evaluates.", ""]
    if metrics.get("training_time_s") is not None:
        lines += [f"Training time: {_duration(float(metrics['training_time_s']))} (wall time of fitting, validation "
                  "included, a resumed run's earlier sessions too).", ""]
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
    quality = metrics.get("detection_quality")
    if quality:
        lines += _per_class_section(quality, metrics, metrics.get("counting") or {})
    else:
        lines += ["", "## Per-class AP", "", "| class | AP@[.5:.95] | AP50 |", "|---|---|---|"]
        for name in class_names:
            lines.append(f"| {name} | {_fmt(metrics['per_class_AP'].get(name))} | {_fmt(metrics['per_class_AP50'].get(name))} |")
        lines += ["", "n/a: the class has no ground truth in this split (pycocotools reports -1).", ""]
    if pr_plot:
        lines += [f"![precision-recall per class at IoU 0.5]({pr_plot})", ""]
    if f1_plot:
        lines += [f"![F1 against the score threshold at IoU 0.5]({f1_plot})", ""]
    if quality:
        lines += _confusion_section(quality["confusion_matrix"], confusion_plot)
    lines += _size_bin_section(metrics.get("size_bins") or [])
    if metrics.get("counting"):
        lines += _counting_section(metrics["counting"], class_names, count_plot)
    for report in reports:
        lines += [report.to_markdown(), ""]
    return "\n".join(lines)


def _per_class_section(quality: Mapping[str, Any], metrics: Mapping[str, Any], counting: Mapping[str, Any]) -> list[str]:
    threshold = float(quality["threshold"])
    same = counting.get("threshold_source") and counting.get("threshold") == threshold
    source = f" ({counting['threshold_source']})" if same else ""
    best = quality.get("best_F1")
    overall = quality["all"]
    lines = [
        "",
        "## Per class",
        "",
        f"At the count threshold: detections scoring >= {threshold:.2f}{source}, matched to ground truth of their "
        f"class at IoU {float(quality['iou_threshold']):.2f} (COCO's matching). P: share of the kept detections that "
        "are right; R: share of the objects found; F1: their harmonic mean. AP50 and AP@[.5:.95] average over every "
        "score. `all` pools every class.",
        "",
        f"Precision {_fmt(overall['precision'])}, recall {_fmt(overall['recall'])}, F1 {_fmt(overall['F1'])}"
        f" ({overall['true_positives']} true positives, {overall['false_positives']} false positives, "
        f"{overall['false_negatives']} missed)."
        + (f" The best F1 over all thresholds is {best['F1']:.4f}, at score >= {best['threshold']:.2f}." if best else ""),
        "",
    ]
    lines += class_table_markdown(quality["per_class"], overall, metrics)
    return lines + ["", "n/a: undefined (no ground truth of the class in this split, or nothing to divide by).", ""]


def _confusion_section(confusion: Mapping[str, Any], picture: str | None) -> list[str]:
    labels = list(confusion["labels"])
    names = labels[:-1]
    lines = [
        "## Confusion matrix",
        "",
        f"Detections scoring >= {float(confusion['threshold']):.2f} paired with ground truth at IoU "
        f"{float(confusion['iou_threshold']):.2f} whatever their classes (highest IoU first, each box once), then "
        "counted by (true class, predicted class). Rows: true class, then background (false positives); columns: "
        "predicted class, then background (missed).",
        "",
        "| true \\ predicted | " + " | ".join([*names, "background (missed)"]) + " |",
        "|---" * (len(labels) + 1) + "|",
    ]
    for label, row in zip([*names, "background (false positive)"], confusion["counts"]):
        cells = [str(v) for v in row]
        if label.startswith("background"):
            cells[-1] = ""  # background against background: nothing to count
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if picture:
        lines += ["", f"![confusion matrix]({picture})"]
    return lines + [""]


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
