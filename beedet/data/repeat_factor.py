"""Class-aware image sampling for rare classes: repeat-factor sampling (LVIS, Gupta et al. 2019).

Bees are imbalanced: the real training labels hold 5168 workers, 568 pollen bees, 109 drones and
55 queens. Repeat-factor sampling shows images with rare classes more often per epoch:

* f(c): the fraction of training images that contain class c (at least one box of it);
* r(c) = max(1, sqrt(t / f(c))) for a threshold t: classes in fewer than a fraction t of the
  images are repeated, a class at f = t / 4 twice as often;
* r(image) = max of r(c) over the classes in the image; 1 for an image without boxes.

Each epoch, image i appears floor(r_i) times plus once more with probability frac(r_i)
(stochastic rounding), drawn by a generator seeded with (seed, epoch). The epoch has a **fixed
length** N = round(sum_i r_i): Lightning sizes lr schedules and progress from ``len(dataloader)``
before the first epoch. The drawn list is shuffled, then cut to N when the draw has more, or
extended by repeating the shuffled list from its start when it has fewer. Both take a uniformly
random part of the shuffled list, so each image still appears about r_i times per epoch in
expectation; the draw's total differs from N by about sqrt(number of images with a fractional
r) / 2.

Under DDP, Lightning wraps a custom sampler in ``DistributedSamplerWrapper`` (with
``use_distributed_sampler``, the default): every rank iterates this sampler, which must therefore
give all ranks the same list (it only depends on seed and epoch), then takes its own share.
Lightning calls ``set_epoch`` on the wrapper, which forwards it here.

With ``augment_seed``, the sampler yields ``(index, sample_seed)`` pairs instead of indices, the
seeds drawn from (seed, epoch, augment_seed) too, and ``DetectionDataset`` seeds the augmentation
of that one sample with it. Every random choice of an epoch then depends on the epoch number
alone, not on how many epochs this process has run or on the number of DataLoader workers, so a
run resumed from its end-of-epoch checkpoint trains exactly as the uninterrupted run would
have. Factors of all 1 make it a plain seeded shuffle (every image once per epoch).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Sampler


@dataclass(frozen=True)
class RepeatFactors:
    """Repeat factors of one training set for threshold ``threshold``; arrays indexed by class id
    (0-based, beedet's convention) or by image index.

    Attributes:
        class_image_fraction: (C,) f(c), the fraction of images containing class c.
        class_factor: (C,) r(c); NaN for a class in no image.
        image_factor: (N,) r(image), >= 1.
        expected_image_share: (C,) with repeat-factor sampling: the expected fraction of sampled
            images containing c, sum_{i contains c} r_i / sum_i r_i.
        box_share: (C,) plain sampling: class c's share of all boxes.
        expected_box_share: (C,) with repeat-factor sampling: c's expected share of sampled boxes.
    """

    threshold: float
    class_image_fraction: np.ndarray
    class_factor: np.ndarray
    image_factor: np.ndarray
    expected_image_share: np.ndarray
    box_share: np.ndarray
    expected_box_share: np.ndarray

    def table(self, class_names: Sequence[str]) -> str:
        """A plain-text table of the per-class numbers, for the training log."""
        lines = [
            f"repeat-factor sampling, threshold t={self.threshold:g}: {len(self.image_factor)} images -> "
            f"{epoch_length(self.image_factor)} samples per epoch",
            f"{'class':<12} {'f(c)':>6} {'r(c)':>6} {'images: plain':>14} {'-> sampled':>10} "
            f"{'boxes: plain':>13} {'-> sampled':>10}",
        ]
        for c, name in enumerate(class_names):
            factor = "-" if np.isnan(self.class_factor[c]) else f"{self.class_factor[c]:.2f}"
            lines.append(
                f"{name:<12} {self.class_image_fraction[c]:>6.3f} {factor:>6} {self.class_image_fraction[c]:>14.1%} "
                f"{self.expected_image_share[c]:>10.1%} {self.box_share[c]:>13.1%} {self.expected_box_share[c]:>10.1%}"
            )
        return "\n".join(lines)


def repeat_factors(labels_per_image: Sequence[np.ndarray], num_classes: int, threshold: float) -> RepeatFactors:
    """LVIS repeat factors (see the module docstring) for images whose box labels are
    ``labels_per_image`` (int64 (n_i,) 0-based class ids each; empty for an image without boxes)."""
    if not threshold > 0:
        raise ValueError(f"repeat_factor_threshold must be > 0, got {threshold}")
    if not labels_per_image:
        raise ValueError("repeat factors need at least one image")
    counts = np.zeros((len(labels_per_image), num_classes), dtype=np.int64)  # boxes of class c in image i
    for i, labels in enumerate(labels_per_image):
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"image {i} has class ids outside 0..{num_classes - 1}: {sorted(set(labels.tolist()))}")
        counts[i] = np.bincount(labels, minlength=num_classes)
    contains = counts > 0

    fraction = contains.mean(axis=0)
    class_factor = np.full(num_classes, np.nan)
    present = fraction > 0
    class_factor[present] = np.maximum(1.0, np.sqrt(threshold / fraction[present]))
    image_factor = np.ones(len(labels_per_image))
    for i in range(len(labels_per_image)):
        if contains[i].any():
            image_factor[i] = max(1.0, float(class_factor[contains[i]].max()))

    boxes = counts.sum(axis=0).astype(np.float64)
    sampled_boxes = (image_factor[:, None] * counts).sum(axis=0)
    return RepeatFactors(
        threshold=float(threshold),
        class_image_fraction=fraction,
        class_factor=class_factor,
        image_factor=image_factor,
        expected_image_share=(image_factor[:, None] * contains).sum(axis=0) / image_factor.sum(),
        box_share=boxes / max(boxes.sum(), 1.0),
        expected_box_share=sampled_boxes / max(sampled_boxes.sum(), 1.0),
    )


def group_repeat_factors(group_keys: Sequence[object], threshold: float) -> np.ndarray:
    """Repeat factors by *scene* rather than by class, one per image: r(g) = max(1, sqrt(t / f(g)))
    with f(g) the fraction of the training images in the image's group g (its ``data.group_by``
    key: a video, a camera, a photo on its own).

    Frames of one camera are near-duplicates: in the honeybee train split one entrance camera
    gives 155 of 496 images, while 103 web photos (combs, swarms, close-ups: most of the boxes
    of val and of any new user's footage) stand alone. Plain sampling spends a third of every
    epoch on one scene; at t = 0.02 each lone photo is shown about 3.2 times per epoch and
    the camera once per frame, as LVIS does for rare classes. Combine with the class factors by
    taking the larger of the two for each image (``combined_repeat_factors``)."""
    if not threshold > 0:
        raise ValueError(f"group_repeat_threshold must be > 0, got {threshold}")
    if not group_keys:
        raise ValueError("repeat factors need at least one image")
    keys = list(group_keys)
    sizes: dict[object, int] = {}
    for key in keys:
        sizes[key] = sizes.get(key, 0) + 1
    fraction = np.array([sizes[key] / len(keys) for key in keys])
    return np.maximum(1.0, np.sqrt(threshold / fraction))


def combined_repeat_factors(*factors: np.ndarray | None) -> np.ndarray:
    """Each image's largest factor over the given per-image factor arrays (None ones skipped)."""
    given = [np.asarray(f, dtype=np.float64) for f in factors if f is not None]
    if not given:
        raise ValueError("no repeat factors given")
    return np.maximum.reduce(given)


def epoch_length(image_factor: Sequence[float] | np.ndarray) -> int:
    """Samples per epoch for these per-image repeat factors: sum r_i rounded half up."""
    return int(np.floor(float(np.sum(image_factor)) + 0.5))


class RepeatFactorSampler(Sampler[int | tuple[int, int]]):
    """Dataset indices where image i appears about ``repeat_factors[i]`` times per epoch, in a
    random order; a fixed ``len`` of ``epoch_length(repeat_factors)``. The order and the rounding
    depend only on ``seed`` and the epoch given to :meth:`set_epoch` (0 until then): the same on
    every DDP rank and after a resume. See the module docstring for the rounding and the padding.

    ``augment_seed``: None yields plain ``int`` indices; an int yields ``(index, sample_seed)``
    pairs, ``sample_seed`` in [0, 2**63) depending on (seed, epoch, augment_seed, position).
    """

    def __init__(self, repeat_factors: Sequence[float] | np.ndarray, seed: int = 0,
                 augment_seed: int | None = None) -> None:
        factors = np.asarray(repeat_factors, dtype=np.float64).reshape(-1)
        if len(factors) == 0:
            raise ValueError("RepeatFactorSampler needs at least one image")
        if not np.isfinite(factors).all() or (factors < 1.0).any():
            raise ValueError("repeat factors must be finite and >= 1")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.repeat_factors = factors
        self.seed = int(seed)
        self.augment_seed = None if augment_seed is None else int(augment_seed) % 2**63
        self.epoch = 0
        self._length = epoch_length(factors)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draw ``__iter__`` yields (Lightning calls it before each epoch)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self._length

    def indices(self, epoch: int) -> np.ndarray:
        """The int64 (len(self),) index list of ``epoch``."""
        rng = np.random.default_rng([self.seed, epoch])
        whole = np.floor(self.repeat_factors)
        copies = (whole + (rng.random(len(whole)) < self.repeat_factors - whole)).astype(np.int64)
        drawn = rng.permutation(np.repeat(np.arange(len(copies)), copies))
        # Every factor is >= 1, so the draw is never empty; np.resize cuts it or repeats it from its start.
        return np.resize(drawn, self._length)

    def sample_seeds(self, epoch: int) -> np.ndarray:
        """The int64 (len(self),) augmentation seeds of ``epoch`` (needs ``augment_seed``)."""
        if self.augment_seed is None:
            raise ValueError("this sampler has no augment_seed")
        rng = np.random.default_rng([self.seed, epoch, self.augment_seed])
        return rng.integers(0, 2**63 - 1, size=self._length, dtype=np.int64)

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        indices = self.indices(self.epoch).tolist()
        if self.augment_seed is None:
            return iter(indices)
        return iter(zip(indices, self.sample_seeds(self.epoch).tolist()))
