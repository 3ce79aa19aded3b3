"""Detect bees in a folder of images with a trained checkpoint.

    python -m beedet.predict ckpt=PATH images=DIR [draw=true] [score_threshold=0.3]

By default it keeps detections at or above the checkpoint's count threshold, the score that
counted bees best on its validation split, so the per-class counts it writes are the counts whose
error evaluate.py reports. Frames are sliced into tiles when the checkpoint was trained so
(``slicing=tiles`` / ``slicing=none`` choose).

For each image it writes ``detections/<relative path>.json`` (e.g. ``a.jpg.json``: the image's own
suffix stays, so ``a.jpg`` and ``a.png`` never overwrite each other):
``{"image", "width", "height", "detections": [{"box": [x1, y1, x2, y2], "label", "class", "score"}],
"counts": {class: n}}`` with boxes in the image's own pixels (after EXIF orientation), and with
``draw=true`` the image with its detections drawn under ``drawn/``. An unreadable image is reported
and counted, and the others are still processed; so is one of more than ``max_pixels`` pixels
(default ``beedet.data.images.DEFAULT_MAX_PIXELS``, 40 MP, the limit training and serving use),
refused from its header before decoding.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from beedet.assembly import load_system
from beedet.data.images import DEFAULT_MAX_PIXELS, ImageError, find_images, load_image
from beedet.inference.detections import detections_document, score_threshold_for
from beedet.reporting.overlays import draw_boxes, save_image

log = logging.getLogger("beedet.predict")

def images_at(path: Path) -> list[Path]:
    """The image files at ``path``: the file itself, or the images in a folder (recursively)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no such image file or folder: {path}")
    return find_images(path)


def detections_json(image_path: Path, size: tuple[int, int], prediction: dict[str, torch.Tensor], class_names: Sequence[str], score_threshold: float) -> dict:
    """One image's detections above the threshold, as written to disk (0-based class ids)."""
    return {"image": str(image_path), **detections_document(size, prediction, class_names, score_threshold)}


def _batches(paths: Sequence[Path], batch_size: int, *,
             max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Iterator[list[tuple[Path, np.ndarray]]]:
    batch: list[tuple[Path, np.ndarray]] = []
    for path in paths:
        try:
            batch.append((path, load_image(path, max_pixels=max_pixels)))
        except ImageError as err:
            log.warning("skipped: %s", err)
            continue
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


@hydra.main(config_path="../conf", config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    device = torch.device("cuda" if cfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu")
    system, _ = load_system(cfg.ckpt, cfg.get("slicing"), cfg.get("tta"))
    # Counts in the output should be the counts the checkpoint was validated on: by default keep
    # the detections at or above its count threshold (chosen on its validation split).
    threshold = cfg.score_threshold if cfg.score_threshold is not None else score_threshold_for(system.count_threshold)
    log.info("keeping detections with score >= %.2f; %s", threshold, system.inference_mode)
    system.to(device)
    root = Path(cfg.images)
    paths = images_at(root)
    written = 0
    # max_pixels: null in the config means Pillow's own limit only, as data.max_pixels does.
    for batch in _batches(paths, cfg.batch_size, max_pixels=cfg.max_pixels):
        tensors = [torch.from_numpy(img).permute(2, 0, 1).float().div(255) for _, img in batch]
        for (path, img), tensor, prediction in zip(batch, tensors, system.detect(tensors)):
            rel = path.relative_to(root) if root.is_dir() else Path(path.name)
            record = detections_json(path, (img.shape[1], img.shape[0]), prediction, system.class_names, threshold)
            out = run_dir / "detections" / rel.with_name(rel.name + ".json")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(record, indent=1))
            if cfg.draw:
                keep = prediction["scores"] >= threshold
                drawn = draw_boxes(tensor, prediction["boxes"][keep].cpu(), prediction["labels"][keep].cpu(), system.class_names, prediction["scores"][keep].cpu())
                save_image(drawn, run_dir / "drawn" / rel.with_name(rel.name + ".jpg"))
            written += 1
    skipped = len(paths) - written
    log.info("wrote detections for %d image(s); %d unreadable image(s) skipped", written, skipped)
    print(f"run dir: {run_dir}")


if __name__ == "__main__":
    main()
