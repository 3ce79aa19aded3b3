"""The torch Dataset of labelled images, with the training augmentation applied per sample.

Why augmentation happens here, in ``__getitem__``:

* **On the fly, never cached.** Every call draws new random crop, flip and colour parameters,
  so the same image looks different in every epoch; that is the whole point of augmentation. A
  cache of augmented images would freeze one draw and quietly turn it off.
* **Per sample, in DataLoader workers.** Decoding a JPEG and augmenting it is CPU work that
  runs in parallel worker processes while the GPU trains on the previous batch. Doing it per
  sample keeps boxes and pixels together: the pipeline moves each box with its pixels and drops
  a box (with its label) when a crop cuts it away.
* **Reseeded per worker.** albumentations draws from its own generators (not numpy's or
  torch's global ones), which every worker process inherits unchanged from the parent: without
  care, all workers, and with fresh workers every epoch, would repeat the same draws. Each worker
  reseeds the pipeline from ``torch.utils.data.get_worker_info().seed``, which the DataLoader
  derives from torch's RNG anew for every epoch's workers, so draws differ between workers and
  epochs and are reproducible under ``seed_everything``.

Sample contract (see ``docs/architecture.md``): ``image`` float32 (3, H, W) in [0, 1];
``target = {"boxes": float32 (N, 4) xyxy pixels of the returned image, "labels": int64 (N,)
0-based class ids (0 is a real class, not background), "image_id": int64 scalar (the index),
"orig_size": int64 (2,) = (H, W) of the stored image}``. Without a transform (validation) the
image keeps its stored size; the network resizes internally and maps boxes back.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import albumentations as A
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, get_worker_info

from beedet.data.images import load_image
from beedet.data.records import DataError, ImageRecord


class DetectionDataset(Dataset):
    """Images and their boxes, optionally augmented on the fly (module docstring: the contract).

    Args:
        records: the labelled images (boxes xyxy pixels of the stored image, 0-based labels).
        transform: a box-aware pipeline from ``beedet.augment.build_pipeline``, or None to return
            images at their stored size with their stored boxes.
    """

    def __init__(self, records: Sequence[ImageRecord], transform: A.Compose | None = None) -> None:
        self.records = list(records)
        self.transform = transform
        self._seeded_from: int | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        record = self.records[index]
        image = load_image(record.image_path)
        height, width = image.shape[:2]
        if (width, height) != (record.width, record.height):
            # Boxes are pixels of the labelled size; on other pixels they would point at nothing.
            raise DataError(
                f"{record.source or record.image_path}: image {record.image_path} is {width}x{height} "
                f"but its labels are for {record.width}x{record.height}"
            )
        boxes, labels = record.boxes, record.labels
        if self.transform is not None:
            self._seed_transform()
            out = self.transform(image=image, bboxes=boxes, labels=labels)
            image = out["image"]
            boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
            labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
            boxes, labels = _valid_boxes(boxes, labels, image.shape[1], image.shape[0])
        target = {
            "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1),
            "image_id": torch.tensor(index, dtype=torch.int64),
            "orig_size": torch.tensor([height, width], dtype=torch.int64),
        }
        return _to_tensor(image), target

    def _seed_transform(self) -> None:
        """Give each worker process (and each epoch's new workers) its own augmentation stream."""
        info = get_worker_info()
        seed = info.seed if info is not None else torch.initial_seed()
        if seed != self._seeded_from:
            # One generator shared by all transforms: ``set_random_seed`` would give every
            # transform its own generator with the same seed, so that, for example, the
            # horizontal and the vertical flip would always fire together.
            self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
            self._seeded_from = seed


def collate_detection(
    batch: Sequence[tuple[Tensor, dict[str, Tensor]]],
) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """Batch samples as lists: images may differ in size and images in box count."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def _to_tensor(image: np.ndarray) -> Tensor:
    """uint8 (H, W, 3) -> contiguous float32 (3, H, W) in [0, 1]."""
    chw = np.ascontiguousarray(image.transpose(2, 0, 1))
    return torch.from_numpy(chw).to(torch.float32).div_(255.0)


def _valid_boxes(boxes: np.ndarray, labels: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip to the image and drop boxes without positive area, keeping labels aligned.

    albumentations already clips and filters; this makes the contract hold whatever the preset."""
    boxes = boxes.copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0.0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0.0, height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[keep], labels[keep]
