"""The beedet detections document: one image's detections at or above a score threshold, as JSON.

``beedet.predict`` writes it per image file and the serving handlers (``beedet.serving``) answer
it per request, so both say the same thing about the same image::

    {"width": W, "height": H,
     "detections": [{"box": [x1, y1, x2, y2], "label": 0, "class": "bee", "score": 0.93}, ...],
     "counts": {"bee": n, ...}}

Boxes are xyxy in pixels of the image as displayed (EXIF orientation applied), rounded to 0.01 px;
``label`` is the 0-based class id (0 is the first real class, not background); ``counts`` has every
class, zeros included. Which threshold: :func:`score_threshold_for`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# The score threshold for checkpoints that carry no count threshold.
FALLBACK_SCORE_THRESHOLD = 0.3


def score_threshold_for(count_threshold: float | None) -> float:
    """The default score threshold for a checkpoint with this count threshold: the count
    threshold itself (the score that counted objects best on its validation split, so the counts
    answered are the counts whose error evaluate.py reports), else :data:`FALLBACK_SCORE_THRESHOLD`."""
    return float(count_threshold) if count_threshold is not None else FALLBACK_SCORE_THRESHOLD


def detections_document(size: tuple[int, int], prediction: dict[str, torch.Tensor], class_names: Sequence[str],
                        score_threshold: float) -> dict:
    """The document (see the module docstring) for one image of ``size`` = (width, height) and its
    ``DetectionModule.detect`` output (``boxes`` xyxy pixels, ``scores``, 0-based ``labels``)."""
    keep = prediction["scores"] >= score_threshold
    boxes = prediction["boxes"][keep].cpu().tolist()
    labels = prediction["labels"][keep].cpu().tolist()
    scores = prediction["scores"][keep].cpu().tolist()
    detections = [
        {"box": [round(v, 2) for v in box], "label": int(label), "class": class_names[label], "score": round(score, 4)}
        for box, label, score in zip(boxes, labels, scores)
    ]
    counts = {name: 0 for name in class_names}
    for det in detections:
        counts[det["class"]] += 1
    return {"width": size[0], "height": size[1], "detections": detections, "counts": counts}
