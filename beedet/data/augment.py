"""Training augmentation: albumentations pipelines that move boxes with the pixels.

Presets live in ``conf/augment/*.yaml`` (``none``, ``light``, ``ssd``, ``heavy``); each is a list
of albumentations transforms that Hydra instantiates and hands to :func:`build_pipeline`.

Contract of a pipeline built here, called as ``pipeline(image=img, bboxes=boxes, labels=labels)``:

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
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A


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
    return A.Compose(
        list(transforms),
        bbox_params=A.BboxParams(
            format="pascal_voc",
            label_fields=["labels"],
            min_visibility=min_visibility,
            min_area=min_area,
            clip=True,
            filter_invalid_bboxes=True,
        ),
    )
