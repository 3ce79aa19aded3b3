"""Training augmentation: albumentations pipelines that move boxes with the pixels.

Presets live in ``conf/augment/*.yaml`` (``none``, ``light``, ``ssd``, ``heavy``); each is a list
of albumentations transforms that Hydra instantiates and hands to :func:`build_pipeline`.

Contract of a pipeline built here, called as ``pipeline(image=img, bboxes=boxes, labels=labels)``
(one with a ``Mosaic`` step through :func:`mosaic_stages`, as below):

* ``image`` is uint8 (H, W, 3) RGB; ``bboxes`` are xyxy **pixels** (``pascal_voc``), ``labels``
  the 0-based class ids, one per box. Labels travel with their boxes through every transform,
  and are dropped together with them.
* Boxes are clipped to the image before the first transform (labelled boxes that stick out by
  a rounding error are common), and a box is dropped when less than ``min_visibility`` of its
  area survives a crop or when it ends up smaller than ``min_area`` square pixels: a sliver of a
  bee at the crop border should not be taught as a bee.
* Train presets crop or resize to the model's input size *first*, so every later transform
  works on a small image (a 1920x1080 frame has 30x the pixels of a 256x256 input).

Validation uses no pipeline: the network resizes internally and maps boxes back.

**Mosaic** (``albumentations.Mosaic``, YOLOv4's): a top-level ``Mosaic`` step splits a pipeline
in three (:func:`mosaic_stages`). The steps before it make one *cell* from a frame; the dataset
runs them on the sample's frame and on ``rows x cols - 1`` other, randomly drawn frames, and the
``Mosaic`` then cuts one output image across the grid of cells; the steps after it run on that
image. Two choices differ from calling albumentations' ``Mosaic`` directly:

* ``Mosaic`` resizes each item to cover its cell. Cells made by the earlier steps at exactly
  ``cell_shape`` (the ``scaled`` preset's tiles: the input size) pass unchanged, so a bee keeps the
  scale the earlier steps gave it instead of shrinking with a whole frame fitted into a cell.
* ``Mosaic`` keeps every box it cuts at a cell border, however little of it is left (a 50x50 px
  bee cut to 50x6 px stays a bee). :class:`MosaicStages` applies the pipeline's ``min_visibility``
  and ``min_area`` to the cut boxes, against their areas in the cells.
* The step's ``p`` is drawn by the dataset before the other frames are decoded, so a sample that
  gets no mosaic costs no extra decodes.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import albumentations as A
import numpy as np


def build_pipeline(
    transforms: Sequence[A.BasicTransform],
    *,
    min_visibility: float = 0.3,
    min_area: float = 4.0,
) -> A.Compose:
    """Wrap ``transforms`` in a box-aware ``A.Compose`` (see the module docstring for the contract).

    Args:
        transforms: albumentations transforms (or ``OneOf``/``SomeOf`` groups), applied in order.
        min_visibility: drop a box when less than this fraction of its area is left in the output.
        min_area: drop a box smaller than this many square pixels of the output image.
    """
    for i, transform in enumerate(transforms):
        if not isinstance(transform, (A.BasicTransform, A.BaseCompose)):
            raise TypeError(
                f"augment transforms[{i}] is {type(transform).__name__} ({transform!r}), not an albumentations "
                "transform: does its config entry have a `_target_: albumentations.<Name>`?"
            )
    if not 0.0 <= min_visibility <= 1.0:
        raise ValueError(f"augment min_visibility must be in [0, 1], got {min_visibility}")
    if min_area < 0.0:
        raise ValueError(f"augment min_area must be >= 0, got {min_area}")
    mosaics = [i for i, transform in enumerate(transforms) if isinstance(transform, A.Mosaic)]
    if len(mosaics) > 1:
        raise ValueError(f"augment transforms {mosaics} are all Mosaic steps: a pipeline takes one at most")
    return _compose(list(transforms), min_visibility=min_visibility, min_area=min_area)


def _compose(transforms: list, *, min_visibility: float, min_area: float) -> A.Compose:
    return A.Compose(
        transforms,
        bbox_params=A.BboxParams(
            format="pascal_voc",
            label_fields=["labels"],
            min_visibility=min_visibility,
            min_area=min_area,
            clip=True,
            filter_invalid_bboxes=True,
        ),
    )


@dataclass
class MosaicStages:
    """A pipeline with a top-level ``A.Mosaic`` step, in the three stages the dataset runs (module
    docstring). Boxes are xyxy pixels and labels 0-based class ids throughout, as in the pipeline.

    Attributes:
        cell: the steps before the mosaic: one frame in, one cell out.
        mosaic: the ``A.Mosaic`` step alone, always applied (``p`` is drawn by the caller).
        rest: the steps after the mosaic.
        p: how often a sample is a mosaic (the configured step's ``p``).
        cells: how many frames one mosaic takes (``grid_yx`` rows x columns): the sample's frame and
            ``cells - 1`` others.
        min_visibility, min_area: the pipeline's box filter, applied to the boxes the mosaic cuts.
    """

    cell: A.Compose
    mosaic: A.Compose
    rest: A.Compose
    p: float
    cells: int
    min_visibility: float
    min_area: float

    def set_random_state(self, generator: np.random.Generator, py_random) -> None:
        """One random stream for all three stages (and the caller's draws from ``generator``)."""
        for stage in (self.cell, self.mosaic, self.rest):
            stage.set_random_state(generator, py_random)

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
        other_frames: Callable[[int], Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]],
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One sample: with probability :attr:`p` a mosaic of this frame's cell and the cells of
        ``other_frames(cells - 1)``, else this frame's cell through the later steps alone.

        Args:
            image, boxes, labels: the sample's frame: uint8 (H, W, 3), float32 (N, 4) xyxy pixels,
                int64 (N,) 0-based class ids.
            other_frames: called only when the mosaic fires, with how many frames it needs; yields
                them in the same formats (fewer is allowed: Mosaic then repeats the sample's cell).

        Returns:
            ``(image, boxes, labels)`` in the same formats.
        """
        made = self.cell(image=image, bboxes=boxes, labels=labels)
        cells = [(made["image"], made["bboxes"], made["labels"])]
        # Drawn from the stages' own (seeded) stream, before any other frame is decoded.
        if self.cell.random_generator.random() < self.p:
            for other_image, other_boxes, other_labels in other_frames(self.cells - 1):
                made = self.cell(image=other_image, bboxes=other_boxes, labels=other_labels)
                cells.append((made["image"], made["bboxes"], made["labels"]))
            return self.combine(cells)
        return as_arrays(self.rest(image=cells[0][0], bboxes=cells[0][1], labels=cells[0][2]))

    def combine(
        self, cells: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One image cut across ``cells`` by the mosaic step, then the later steps.

        Args:
            cells: ``(image uint8 (H, W, 3), boxes float32 (N, 4) xyxy pixels, labels int64 (N,))``
                made by :attr:`cell`, the sample's own first.

        Returns:
            ``(image, boxes, labels)`` in the same formats, after :attr:`rest`.
        """
        cell_boxes = [np.asarray(boxes, dtype=np.float32).reshape(-1, 4) for _, boxes, _ in cells]
        all_boxes = np.concatenate(cell_boxes)
        all_labels = np.concatenate([np.asarray(labels, dtype=np.int64).reshape(-1) for _, _, labels in cells])
        # Each box travels under an id, its row in all_boxes, so that its area after the cut can be
        # compared with its area in the cell: Mosaic itself applies no visibility rule.
        ids = np.split(np.arange(len(all_boxes)), np.cumsum([len(boxes) for boxes in cell_boxes])[:-1])
        others = [{"image": image, "bboxes": boxes, "labels": cell_ids.tolist()}
                  for (image, _, _), boxes, cell_ids in zip(cells[1:], cell_boxes[1:], ids[1:])]
        out = self.mosaic(image=cells[0][0], bboxes=cell_boxes[0], labels=ids[0].tolist(), mosaic_metadata=others)
        boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        box_ids = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
        area = _areas(boxes)
        keep = (area > 0) & (area >= self.min_area) & (area >= self.min_visibility * _areas(all_boxes[box_ids]))
        return as_arrays(self.rest(image=out["image"], bboxes=boxes[keep], labels=all_labels[box_ids[keep]]))


def _areas(boxes: np.ndarray) -> np.ndarray:
    """Areas of xyxy boxes (N, 4), 0 for an empty one."""
    return (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)


def as_arrays(out: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A pipeline's output dict as ``(image, boxes float32 (N, 4), labels int64 (N,))``."""
    return (out["image"], np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4),
            np.asarray(out["labels"], dtype=np.int64).reshape(-1))


def mosaic_stages(pipeline: A.Compose) -> MosaicStages | None:
    """Split a :func:`build_pipeline` pipeline at its top-level ``A.Mosaic`` step; None without one."""
    steps = list(pipeline.transforms)
    at = next((i for i, step in enumerate(steps) if isinstance(step, A.Mosaic)), None)
    if at is None:
        return None
    params = pipeline.processors["bboxes"].params
    # A copy that always applies: the dataset draws the configured p (module docstring).
    mosaic = copy.deepcopy(steps[at])
    p, mosaic.p = float(mosaic.p), 1.0
    rows, cols = mosaic.grid_yx
    # The cut boxes are filtered in MosaicStages.combine, so the mosaic stage keeps them all.
    with warnings.catch_warnings():
        # A stage of colour steps alone (or none) has no box to move, which albumentations warns of.
        warnings.filterwarnings("ignore", message="Got processor for bboxes, but no transform")
        return MosaicStages(
            cell=_compose(steps[:at], min_visibility=params.min_visibility, min_area=params.min_area),
            mosaic=_compose([mosaic], min_visibility=0.0, min_area=0.0),
            rest=_compose(steps[at + 1:], min_visibility=params.min_visibility, min_area=params.min_area),
            p=p, cells=int(rows) * int(cols), min_visibility=float(params.min_visibility),
            min_area=float(params.min_area),
        )
