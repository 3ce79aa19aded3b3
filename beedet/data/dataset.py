"""The torch Dataset of labelled images, with the training augmentation applied per sample.

Why augmentation happens here, in ``__getitem__``:

* **On the fly, never cached.** Every call draws new random crop, flip and colour parameters,
  so the same image looks different in every epoch; that is the whole point of augmentation. A
  cache of augmented images would freeze one draw and quietly turn it off.
* **Per sample, in DataLoader workers.** Decoding a JPEG and augmenting it is CPU work that
  runs in parallel worker processes while the GPU trains on the previous batch. Doing it per
  sample keeps boxes and pixels together: the pipeline moves each box with its pixels and drops
  a box (with its label) when a crop cuts it away.
* **Mosaic draws whole frames.** A pipeline with a ``Mosaic`` step (``beedet.data.augment``)
  makes a cell from the sample's frame and, when the mosaic fires, from other frames drawn at
  random from the same stream; the sample keeps its own ``image_id`` and ``orig_size``.
* **Reseeded per worker.** albumentations draws from its own generators (not numpy's or
  torch's global ones), which every worker process inherits unchanged from the parent: without
  care, all workers, and with fresh workers every epoch, would repeat the same draws. Each worker
  reseeds the pipeline from ``torch.utils.data.get_worker_info().seed``, which the DataLoader
  derives from torch's RNG anew for every epoch's workers, so draws differ between workers and
  epochs and are reproducible under ``seed_everything``.

Two fast paths, both off by default here and switched on by ``conf/data`` (``data.reduced_decode``,
``data.cache_bytes``):

* **Reduced-size decode.** When the pipeline's first step resizes every frame to a fixed size
  (the ``ssd``, ``light``, ``heavy`` and ``none`` presets: a 1920x1080 frame to 300x300), or its
  longer side to a fixed length (``scaled``: 1920x1080 to 960x540), a JPEG is
  decoded by libjpeg's DCT scaling at the smallest 1/2, 1/4 or 1/8 size that is still at least
  that size (``beedet.data.images.load_image_reduced``), and its boxes are scaled by the exact
  decoded/stored size ratio of each axis. The resize then starts from an area-averaged half frame
  instead of the full one: random draws, boxes and labels are unchanged, pixels agree within the
  tolerance ``tests/test_fast_decode.py`` states. Pipelines that start otherwise (``tiled``: native-
  resolution crops) always decode at full size.
* **Decoded-frame cache** (:class:`DecodedFrameCache`): decoded frames, never augmented ones, kept
  in RAM up to a byte budget, so later epochs skip the decode. The cache lives in the dataset
  object, so **each DataLoader worker process fills its own copy**: RAM use is up to
  ``num_workers x cache_bytes`` and each worker decodes a frame once before it is cached there.
  With ``persistent_workers`` (the data module's choice) caches survive from epoch to epoch;
  without it they are rebuilt every epoch and the cache only costs memory.

**An image that fails to decode never stops an epoch** (with ``data.verify_images=false`` a
truncated JPEG is only found here). Its sample is replaced by the next index that decodes
(``index + 1``, ``index + 2``, ... wrapping around), deterministically, with a warning naming the
file; only when no image decodes at all is it an error. Which images failed is kept in
:attr:`DetectionDataset.unreadable`, one flag per record in **shared memory**: a DataLoader worker
process sets the flag, and the main process reads it without any message passing (the batch
format is untouched). The data module turns the flags into problems of its data reports at the end
of fit / validate (``BeeDataModule.teardown``). The replacement keeps its own ``image_id``, so
validation, which keeps one result per ``image_id``, scores the replacement once and the bad image
not at all. In strict mode (``replace_unreadable=False``) the error is raised instead.

Sample contract (see ``docs/architecture.md``): ``image`` float32 (3, H, W) in [0, 1], or with
``uint8_images`` (the data module's training dataset) uint8 (3, H, W), the same pixels times 255;
``target = {"boxes": float32 (N, 4) xyxy pixels of the returned image, "labels": int64 (N,)
0-based class ids (0 is a real class, not background), "image_id": int64 scalar (the index),
"orig_size": int64 (2,) = (H, W) of the stored image}``. Without a transform (validation) the
image keeps its stored size; the network resizes internally and maps boxes back.

**Training batches travel as uint8** and become float on the device: a uint8 image is a quarter of
the bytes a float32 one is, for the worker to write into shared memory, for pinning and for the
host-to-device copy (a batch of 128 300 px images: 35 MB as float32, 8.6 MB as uint8).
:func:`images_to_float` turns them into exactly the float32 values of the float path (``x / 255``);
``beedet.training.system.DetectionModule`` calls it at the start of ``training_step`` (and in
``detect``), after Lightning has moved the batch to the device, so the network still sees float
images in [0, 1]. A training loop of your own over the data module's training loader must call it
too. Validation and prediction images stay float32: evaluate.py, the callbacks and serving read
them as they are. (Not Lightning's ``on_after_batch_transfer`` hook: a module that overrides it
makes Lightning warn in every run that has a data module.)
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator, Sequence

import albumentations as A
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, get_worker_info

from beedet.data.augment import as_arrays, mosaic_stages
from beedet.data.images import DEFAULT_MAX_PIXELS, ImageError, load_image, load_image_reduced
from beedet.data.records import DataError, ImageRecord

log = logging.getLogger(__name__)


class DecodedFrameCache:
    """Decoded frames (uint8 (H, W, 3) RGB, possibly reduced-size) and their full displayed
    (width, height), keyed by image path, kept in RAM up to ``max_bytes`` of pixels.

    Fills until the budget is spent, then keeps what it has (no eviction: under shuffled sampling
    every frame is equally likely next, so replacing one cached frame by another gains nothing).
    Stored arrays are made read-only: a transform that tried to modify its input in place would
    raise instead of quietly corrupting every later epoch. Never store augmented images here.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"cache max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._frames: dict[str, tuple[np.ndarray, tuple[int, int]]] = {}

    def __len__(self) -> int:
        return len(self._frames)

    def get(self, key: str) -> tuple[np.ndarray, tuple[int, int]] | None:
        found = self._frames.get(key)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(self, key: str, pixels: np.ndarray, full_size: tuple[int, int]) -> bool:
        """Keep ``pixels`` if they fit in what is left of the budget; returns whether they were kept."""
        if key in self._frames or self.nbytes + pixels.nbytes > self.max_bytes:
            return False
        pixels.setflags(write=False)
        self._frames[key] = (pixels, full_size)
        self.nbytes += pixels.nbytes
        return True


def reduced_decode_long_side(transform: A.Compose | None) -> int | None:
    """The longer side a frame may be decoded down to for ``transform``: ``max_size`` of its first
    step when that step is an ``A.LongestMaxSize`` with one size that always runs, in a Compose
    that always runs (``conf/augment/scaled.yaml``); None otherwise."""
    first = _leading_step(transform)
    if type(first) is A.LongestMaxSize and isinstance(first.max_size, int):
        return int(first.max_size)
    return None


def reduced_decode_size(transform: A.Compose | None) -> tuple[int, int] | None:
    """The (width, height) a frame may be decoded down to for ``transform``: the output size of its
    first step when that step is an ``A.Resize`` that always runs, in a Compose that always runs;
    None otherwise (no transform, or a pipeline that needs the stored pixels, e.g. tiled crops)."""
    first = _leading_step(transform)
    if type(first) is A.Resize:
        return int(first.width), int(first.height)
    return None


def _leading_step(transform: A.Compose | None) -> A.BasicTransform | None:
    """The first step of ``transform`` when both the Compose and that step always run, else None:
    only such a step may decide how small a frame can be decoded."""
    if transform is None or transform.p < 1.0 or not transform.transforms:
        return None
    first = transform.transforms[0]
    return first if first.p >= 1.0 else None


class DetectionDataset(Dataset):
    """Images and their boxes, optionally augmented on the fly (module docstring: the contract).

    Args:
        records: the labelled images (boxes xyxy pixels of the stored image, 0-based labels).
        transform: a box-aware pipeline from ``beedet.data.augment.build_pipeline``, or None to return
            images at their stored size with their stored boxes.
        reduced_decode: decode JPEGs at reduced size when ``transform`` starts with a fixed-size
            resize (module docstring); ignored for other pipelines and without a transform.
        cache_bytes: keep up to this many bytes of decoded frames in RAM, per process (module
            docstring: each DataLoader worker has its own cache); 0 turns the cache off.
        max_pixels: refuse (as undecodable) an image with more pixels, from its header
            (``beedet.data.images.DEFAULT_MAX_PIXELS``); None: only Pillow's own limit.
        replace_unreadable: replace a sample whose image fails to decode by the next one that
            decodes, flagging it in :attr:`unreadable` (module docstring); False raises instead.
        uint8_images: return images as uint8 (3, H, W) 0-255 instead of float32 in [0, 1], for
            :func:`images_to_float` to convert on the device (module docstring).
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform: A.Compose | None = None,
        *,
        reduced_decode: bool = False,
        cache_bytes: int = 0,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        replace_unreadable: bool = True,
        uint8_images: bool = False,
    ) -> None:
        self.records = list(records)
        self.transform = transform
        # A pipeline with a Mosaic step runs in stages over several frames (beedet.data.augment).
        self.mosaic = mosaic_stages(transform) if transform is not None else None
        self.decode_size = reduced_decode_size(transform) if reduced_decode else None
        self.decode_long_side = reduced_decode_long_side(transform) if reduced_decode else None
        self.cache = DecodedFrameCache(cache_bytes) if cache_bytes > 0 else None
        self.max_pixels = max_pixels
        self.replace_unreadable = replace_unreadable
        self.uint8_images = uint8_images
        # unreadable[i]: record i failed to decode here or in any DataLoader worker. Shared memory,
        # so a flag a worker sets is what the main process reads (fork or spawn alike).
        self.unreadable = torch.zeros(len(self.records), dtype=torch.bool).share_memory_()
        self._seeded_from: int | None = None

    def __len__(self) -> int:
        return len(self.records)

    def unreadable_records(self) -> list[ImageRecord]:
        """The records whose images failed to decode so far, in index order."""
        return [self.records[i] for i in torch.nonzero(self.unreadable).flatten().tolist()]

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[Tensor, dict[str, Tensor]]:
        """Sample ``index``. An ``(index, sample_seed)`` pair (what ``RepeatFactorSampler`` yields
        with an ``augment_seed``) seeds this sample's augmentation with ``sample_seed``, so the
        sample depends on that pair alone (``beedet.data.repeat_factor``: resumed runs train exactly as
        uninterrupted ones); a plain index draws from the process's own augmentation stream."""
        index, sample_seed = index if isinstance(index, tuple) else (index, None)
        last_error: ImageError | None = None
        if not self.unreadable[index]:
            try:
                return self._sample(index, sample_seed)
            except ImageError as err:
                if not self.replace_unreadable:
                    raise
                self._flag_unreadable(index, err)
                last_error = err
        # The next index that decodes, wrapping around: deterministic, and a different image
        # than the failed one. Images known to fail (flagged) are not decoded again.
        for step in range(1, len(self.records)):
            other = (index + step) % len(self.records)
            if self.unreadable[other]:
                continue
            try:
                return self._sample(other, sample_seed)
            except ImageError as err:
                self._flag_unreadable(other, err)
                last_error = err
        raise DataError(f"none of the {len(self.records)} images decodes"
                        + (f" (the last error: {last_error})" if last_error is not None else "")
                        + "; nothing is left to train on")

    def _flag_unreadable(self, index: int, err: ImageError) -> None:
        if self.unreadable[index]:
            return
        self.unreadable[index] = True
        record = self.records[index]
        log.warning("%s: %s; the next image that decodes is used in its place (counted in the data report)",
                    record.source or record.image_path, err)

    def _sample(self, index: int, sample_seed: int | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Sample ``index`` as the module docstring's contract says; ImageError when it cannot decode."""
        record = self.records[index]
        image, boxes, labels = self._frame(index)
        if self.transform is not None:
            self._seed_transform(sample_seed)
            if self.mosaic is not None:
                image, boxes, labels = self.mosaic(image, boxes, labels, self._mosaic_frames)
            else:
                image, boxes, labels = as_arrays(self.transform(image=image, bboxes=boxes, labels=labels))
            boxes, labels = _valid_boxes(boxes, labels, image.shape[1], image.shape[0])
        target = {
            "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1),
            "image_id": torch.tensor(index, dtype=torch.int64),
            "orig_size": torch.tensor([record.height, record.width], dtype=torch.int64),
        }
        return (_to_uint8_tensor(image) if self.uint8_images else _to_tensor(image)), target

    def _frame(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Record ``index``'s decoded pixels (reduced-size when allowed) with its boxes (xyxy
        pixels of those pixels) and labels; ImageError when it cannot decode."""
        record = self.records[index]
        image, (width, height) = self._decoded(record)
        if (width, height) != (record.width, record.height):
            # Boxes are pixels of the labelled size; on other pixels they would point at nothing.
            raise DataError(
                f"{record.source or record.image_path}: image {record.image_path} is {width}x{height} "
                f"but its labels are for {record.width}x{record.height}"
            )
        boxes = record.boxes
        if image.shape[:2] != (height, width):
            # A reduced decode: boxes follow the pixels, by the decoded/stored ratio of each axis
            # (ceil(side / s) / side, exactly what the first resize then undoes).
            ratio = np.array([image.shape[1] / width, image.shape[0] / height] * 2)
            boxes = (boxes * ratio).astype(np.float32)
        return image, boxes, record.labels

    def _mosaic_frames(self, count: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``count`` frames drawn at random for a mosaic (``_frame``'s formats), from the seeded
        augmentation stream; one that fails to decode is flagged and left out (Mosaic then repeats
        the sample's own cell)."""
        for other in self.mosaic.cell.random_generator.integers(0, len(self.records), size=count).tolist():
            if self.unreadable[other]:
                continue
            try:
                yield self._frame(other)
            except ImageError as err:
                self._flag_unreadable(other, err)

    def _decoded(self, record: ImageRecord) -> tuple[np.ndarray, tuple[int, int]]:
        """The frame's pixels (reduced-size when ``decode_size`` allows) and its full displayed
        (width, height), from the cache when it holds them."""
        key = str(record.image_path)
        if self.cache is not None and (found := self.cache.get(key)) is not None:
            return found
        if self.decode_size is not None:
            pixels, full_size = load_image_reduced(record.image_path, self.decode_size, max_pixels=self.max_pixels)
        elif self.decode_long_side is not None:
            # The pipeline first resizes the longer side to decode_long_side: decode no less than that.
            factor = self.decode_long_side / max(record.width, record.height)
            need = (math.ceil(record.width * factor), math.ceil(record.height * factor))
            pixels, full_size = load_image_reduced(record.image_path, need, max_pixels=self.max_pixels)
        else:
            pixels = load_image(record.image_path, max_pixels=self.max_pixels)
            full_size = (pixels.shape[1], pixels.shape[0])
        if self.cache is not None:
            self.cache.put(key, pixels, full_size)
        return pixels, full_size

    def _seed_transform(self, sample_seed: int | None = None) -> None:
        """Seed this one sample's augmentation with ``sample_seed``; without one, give each worker
        process (and each epoch's new workers) its own augmentation stream."""
        if sample_seed is not None:
            self._set_random_state(np.random.default_rng(sample_seed), random.Random(sample_seed))
            self._seeded_from = None  # a later plain index reseeds from the worker's stream
            return
        info = get_worker_info()
        seed = info.seed if info is not None else torch.initial_seed()
        if seed != self._seeded_from:
            # One generator shared by all transforms: ``set_random_seed`` would give every
            # transform its own generator with the same seed, so that, for example, the
            # horizontal and the vertical flip would always fire together.
            self._set_random_state(np.random.default_rng(seed), random.Random(seed))
            self._seeded_from = seed

    def _set_random_state(self, generator: np.random.Generator, py_random: random.Random) -> None:
        self.transform.set_random_state(generator, py_random)
        if self.mosaic is not None:
            self.mosaic.set_random_state(generator, py_random)


def collate_detection(
    batch: Sequence[tuple[Tensor, dict[str, Tensor]]],
) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """Batch samples as lists: images may differ in size and images in box count.

    In a DataLoader worker the batch is sent to the main process as a few batch-wide tensors
    (all images in one shared-memory buffer, all boxes in another, ...) and arrives as the same
    two lists, of views into them (:class:`_PackedBatch`). Sent one by one, the 5 tensors of every
    sample each cost a shared-memory segment and a file-descriptor handshake between the
    processes: measured on 300 px ssd samples, 1.9 ms of the main process's CPU time per image,
    and 10 % of the worker's.
    """
    images, targets = zip(*batch)
    if get_worker_info() is not None:
        return _PackedBatch((list(images), list(targets)))
    return list(images), list(targets)


_TARGET_KEYS = frozenset({"boxes", "labels", "image_id", "orig_size"})


class _PackedBatch(tuple):
    """``(images, targets)`` of :func:`collate_detection` that pickles as batch-wide tensors and
    unpickles as a plain tuple of the same lists (each image, box and label tensor a contiguous
    view). Batches it cannot pack (other target keys, mixed image dtypes) pickle as they are."""

    def __reduce__(self):
        images, targets = self
        if not images or any(set(t) != _TARGET_KEYS for t in targets) or len({i.dtype for i in images}) != 1:
            return tuple, ((images, targets),)
        total = sum(image.numel() for image in images)
        # Written straight into shared memory, as torch's default_collate does, so the pickler
        # does not copy the buffer a second time to share it.
        flat = images[0].new(images[0]._typed_storage()._new_shared(total, device=images[0].device)).resize_(total)
        torch.cat([image.reshape(-1) for image in images], out=flat)
        return _unpack_batch, (
            flat,
            [tuple(image.shape) for image in images],
            torch.cat([t["boxes"].reshape(-1, 4) for t in targets]),
            torch.cat([t["labels"].reshape(-1) for t in targets]),
            [len(t["labels"]) for t in targets],
            torch.stack([t["image_id"] for t in targets]),
            torch.stack([t["orig_size"] for t in targets]),
        )


def _unpack_batch(
    flat: Tensor, shapes: list[tuple[int, ...]], boxes: Tensor, labels: Tensor, counts: list[int],
    image_ids: Tensor, orig_sizes: Tensor,
) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    images, offset = [], 0
    for shape in shapes:
        numel = int(np.prod(shape))
        images.append(flat.narrow(0, offset, numel).view(shape))
        offset += numel
    targets = [
        {"boxes": b, "labels": l, "image_id": image_ids[i], "orig_size": orig_sizes[i]}
        for i, (b, l) in enumerate(zip(boxes.split(counts), labels.split(counts)))
    ]
    return images, targets


def _to_uint8_tensor(image: np.ndarray) -> Tensor:
    """uint8 (H, W, 3) -> contiguous uint8 (3, H, W), the same values."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def _to_tensor(image: np.ndarray) -> Tensor:
    """uint8 (H, W, 3) -> contiguous float32 (3, H, W) in [0, 1]."""
    return _to_uint8_tensor(image).to(torch.float32).div_(255.0)


def images_to_float(images: Sequence[Tensor]) -> list[Tensor]:
    """The network's images from a batch's: each uint8 (3, H, W) 0-255 image becomes float32
    (3, H, W) in [0, 1], ``x / 255`` on the device it is on (bit for bit what ``_to_tensor`` gives
    on the CPU); floating-point images pass through untouched. Images of one shape are converted
    in one stacked operation (two kernels per batch on a GPU, not two per image) and returned as
    views of it."""
    images = list(images)
    wanted = [i for i, image in enumerate(images) if image.dtype == torch.uint8]
    if not wanted:
        return images
    if len({(images[i].shape, images[i].device) for i in wanted}) == 1:
        converted = torch.stack([images[i] for i in wanted]).to(torch.float32).div_(255.0).unbind(0)
    else:
        converted = [images[i].to(torch.float32).div_(255.0) for i in wanted]
    for i, image in zip(wanted, converted):
        images[i] = image
    return images


def _valid_boxes(boxes: np.ndarray, labels: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip to the image and drop boxes without positive area, keeping labels aligned.

    albumentations already clips and filters; this makes the contract hold whatever the preset."""
    boxes = boxes.copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0.0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0.0, height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[keep], labels[keep]
