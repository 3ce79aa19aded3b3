"""DetectionDataset: the sample contract, batching in worker processes, and fresh augmentation."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from PIL import Image
from torch.utils.data import DataLoader

from beedet.assembly import build_augment
from beedet.data.augment import build_pipeline
from beedet.data.dataset import DetectionDataset, collate_detection
from beedet.data.records import DataError, ImageRecord
from helpers import compose_config


def _write_image(path: Path, height: int, width: int, seed: int) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)  # PNG: lossless, so pixels can be compared exactly
    return pixels


@pytest.fixture
def records(tmp_path: Path) -> list[ImageRecord]:
    """A 120x200 image with three boxes and an empty 90x64 image."""
    _write_image(tmp_path / "bees.png", 120, 200, seed=0)
    _write_image(tmp_path / "empty.png", 90, 64, seed=1)
    boxes = np.array([[0, 0, 30, 20], [150.5, 80.25, 200, 120], [60, 40, 90, 70]], np.float32)
    return [
        ImageRecord(tmp_path / "bees.png", 200, 120, boxes, np.array([0, 3, 2])),
        ImageRecord(tmp_path / "empty.png", 64, 90),
    ]


def _check_sample(
    image: torch.Tensor, target: dict, index: int, height: int, width: int, stored: tuple[int, int]
) -> None:
    assert image.dtype == torch.float32 and image.shape == (3, height, width) and image.is_contiguous()
    assert 0.0 <= image.min() and image.max() <= 1.0
    boxes, labels = target["boxes"], target["labels"]
    assert boxes.dtype == torch.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
    assert labels.dtype == torch.int64 and labels.shape == (len(boxes),)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert target["image_id"].dtype == torch.int64 and target["image_id"].shape == () and target["image_id"] == index
    assert target["orig_size"].dtype == torch.int64 and target["orig_size"].tolist() == list(stored)


def test_sample_without_transform_is_the_stored_image(records: list[ImageRecord], tmp_path: Path) -> None:
    dataset = DetectionDataset(records)
    assert len(dataset) == 2
    image, target = dataset[0]
    _check_sample(image, target, 0, 120, 200, (120, 200))
    pixels = np.array(Image.open(tmp_path / "bees.png"))
    assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
    assert torch.equal(target["boxes"], torch.from_numpy(records[0].boxes))
    assert target["labels"].tolist() == [0, 3, 2]


def test_empty_image_gives_empty_typed_targets(records: list[ImageRecord]) -> None:
    image, target = DetectionDataset(records)[1]
    _check_sample(image, target, 1, 90, 64, (90, 64))
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_augmented_samples_keep_the_contract(records: list[ImageRecord]) -> None:
    cfg = compose_config(["augment=heavy"])
    size = int(cfg.model.image_size)
    dataset = DetectionDataset(records, build_augment(cfg.augment))
    for _ in range(20):
        for index, stored in ((0, (120, 200)), (1, (90, 64))):
            image, target = dataset[index]
            _check_sample(image, target, index, size, size, stored)
            assert set(target["labels"].tolist()) <= {0, 2, 3}


def test_labels_for_another_size_are_refused(records: list[ImageRecord]) -> None:
    wrong = records[0].replace(width=400, height=240, source="train.manifest:7")
    with pytest.raises(DataError, match=r"train.manifest:7.*200x120.*400x240"):
        DetectionDataset([wrong])[0]


def _random_crop_pipeline() -> A.Compose:
    """Always-random geometry and colour, so two draws practically never coincide."""
    return build_pipeline(
        [A.Resize(64, 64), A.RandomResizedCrop(size=(64, 64), scale=(0.3, 1.0), p=1.0), A.ColorJitter(p=1.0)]
    )


def test_dataloader_workers_collate_and_augment_afresh_every_epoch(tmp_path: Path, records: list[ImageRecord]) -> None:
    # Four samples of the very same image: any difference between them is augmentation.
    same = [records[0]] * 4
    loader = DataLoader(
        DetectionDataset(same, _random_crop_pipeline()),
        batch_size=2,
        num_workers=2,
        collate_fn=collate_detection,
        generator=torch.Generator().manual_seed(0),
    )
    epochs = []
    for _ in range(2):
        samples = []
        for images, targets in loader:
            assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) == 2
            for image, target in zip(images, targets):
                _check_sample(image, target, int(target["image_id"]), 64, 64, (120, 200))
                samples.append(image)
        assert [int(t["image_id"]) for t in targets] == [2, 3]  # batches keep their order
        epochs.append(samples)
    first, second = epochs
    # Within an epoch, the two workers (and successive samples of one worker) draw differently...
    assert all(not torch.equal(first[i], first[j]) for i in range(4) for j in range(i + 1, 4))
    # ... and the next epoch's freshly started workers do not replay the previous epoch's draws.
    assert all(not torch.equal(a, b) for a, b in zip(first, second))


def test_transforms_draw_independently_after_reseeding(records: list[ImageRecord]) -> None:
    """Both flips fire independently: all four combinations occur, in workers and in-process.

    (Seeding each transform with the same seed would make them fire together: only two occur.)"""
    corner = records[0].replace(boxes=np.array([[0, 0, 30, 20]], np.float32), labels=np.array([1]))
    dataset = DetectionDataset([corner] * 40, build_pipeline([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]))
    for num_workers in (2, 0):
        loader = DataLoader(
            dataset, batch_size=10, num_workers=num_workers, collate_fn=collate_detection,
            generator=torch.Generator().manual_seed(1),
        )
        flips = set()
        for _, targets in loader:
            for target in targets:
                x1, y1 = target["boxes"][0, :2].tolist()
                flips.add((x1 > 0, y1 > 0))  # (flipped left-right, flipped up-down)
        assert flips == {(False, False), (True, False), (False, True), (True, True)}, (num_workers, flips)


def test_a_seeded_sample_depends_on_its_seed_alone(records: list[ImageRecord]) -> None:
    """``dataset[(index, seed)]`` gives the same augmented sample whatever was drawn before and in
    whichever process: what lets a resumed run replay an uninterrupted one's epochs."""
    dataset = DetectionDataset([records[0]] * 3, _random_crop_pipeline())
    first, _ = dataset[(1, 1234)]
    for i in (0, 1, 2, 0):
        dataset[i]  # the process's own stream moves on
    dataset[(2, 99)]
    again, _ = dataset[(1, 1234)]
    assert torch.equal(first, again)
    fresh = DetectionDataset([records[0]] * 3, _random_crop_pipeline())
    assert torch.equal(fresh[(1, 1234)][0], first)
    assert not torch.equal(fresh[(1, 1235)][0], first)
    assert int(fresh[(2, 1234)][1]["image_id"]) == 2


def test_collate_keeps_images_of_different_sizes(records: list[ImageRecord]) -> None:
    dataset = DetectionDataset(records)
    images, targets = collate_detection([dataset[0], dataset[1]])
    assert [tuple(i.shape) for i in images] == [(3, 120, 200), (3, 90, 64)]
    assert [t["boxes"].shape[0] for t in targets] == [3, 0]


def test_ddp_keeps_a_ragged_batch_when_a_rank_has_no_full_one(tmp_path):
    """18 images, batch 16, 2 ranks: each rank has 9 images, so dropping the ragged batch would
    train zero steps; on one device the ragged last batch is dropped as usual."""
    from types import SimpleNamespace

    from beedet.data.datamodule import BeeDataModule
    from beedet.data.records import ImageRecord

    image = tmp_path / "a.jpg"
    from PIL import Image
    Image.new("RGB", (32, 32)).save(image)
    dm = BeeDataModule(train=None, batch_size=16, num_workers=0)  # type: ignore[arg-type]
    dm.train_dataset = DetectionDataset([ImageRecord(image, 32, 32)] * 18)
    dm.trainer = SimpleNamespace(world_size=2)  # type: ignore[assignment]
    assert dm.train_dataloader().drop_last is False
    dm.trainer = SimpleNamespace(world_size=1)  # type: ignore[assignment]
    assert dm.train_dataloader().drop_last is True


class _ThreadCounts(torch.utils.data.Dataset):
    """One sample: the OpenCV and torch intra-op thread counts of the process that loads it."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> torch.Tensor:
        import cv2

        return torch.tensor([cv2.getNumThreads(), torch.get_num_threads()])


def test_loader_workers_persist_and_run_one_opencv_and_one_torch_thread(tmp_path: Path) -> None:
    """The real data config's loaders: persistent workers with batches prefetched, started by
    init_worker, in which OpenCV and torch each run one thread (without it OpenCV in a worker runs
    one thread per core; on a 16-core machine, 14 workers would run 224). Pinned memory follows the
    trainer's device unless data.pin_memory says otherwise."""
    from types import SimpleNamespace

    import cv2

    from beedet.assembly import build_datamodule

    cfg = compose_config(["data.num_workers=1"])
    dm = build_datamodule(cfg.data)
    image = tmp_path / "a.jpg"
    Image.new("RGB", (32, 32)).save(image)
    dm.train_dataset = dm.val_dataset = DetectionDataset([ImageRecord(image, 32, 32)] * 4)
    default_threads = cv2.getNumThreads()
    try:
        if default_threads > 1:  # what a worker inherits when nothing limits it
            plain = DataLoader(_ThreadCounts(), num_workers=1)
            assert next(iter(plain)).tolist()[0][0] > 1
        for loader in (dm.train_dataloader(), dm.val_dataloader()):
            assert loader.persistent_workers and loader.prefetch_factor == cfg.data.prefetch_factor == 2
            assert loader.pin_memory is False  # no trainer, no GPU
            for context in ("fork", "spawn"):  # Linux's default, and macOS's and Windows'
                probe = DataLoader(_ThreadCounts(), num_workers=1, worker_init_fn=loader.worker_init_fn,
                                   multiprocessing_context=context)
                assert next(iter(probe)).tolist() == [[1, 1]], context
    finally:
        cv2.setNumThreads(default_threads)
    dm.trainer = SimpleNamespace(world_size=1, strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))  # type: ignore[assignment]
    assert dm.train_dataloader().pin_memory is True
    dm.pin_memory = False
    assert dm.train_dataloader().pin_memory is False
    with pytest.raises(InstantiationException, match="data.prefetch_factor must be >= 1"):
        build_datamodule(cfg.data, prefetch_factor=0)


def test_mosaic_samples_draw_other_frames_only_when_it_fires(records: list[ImageRecord], monkeypatch) -> None:
    # The recipe's own preset (conf/augment/scaled.yaml), its Mosaic step always or never firing.
    decoded: list[int] = []
    frame = DetectionDataset._frame
    monkeypatch.setattr(DetectionDataset, "_frame", lambda self, index: decoded.append(index) or frame(self, index))
    for p, frames_per_sample in ((1.0, 4), (0.0, 1)):
        cfg = compose_config(["+experiment=honeybee", f"augment.transforms.3.p={p}"])
        dataset = DetectionDataset(records, build_augment(cfg.augment))
        decoded.clear()
        image, target = dataset[(0, 7)]
        _check_sample(image, target, 0, 320, 320, (120, 200))
        assert len(decoded) == frames_per_sample and decoded[0] == 0
        # A sample seed fixes the other frames, the mosaic and every later draw.
        again_image, again_target = dataset[(0, 7)]
        assert torch.equal(image, again_image) and torch.equal(target["boxes"], again_target["boxes"])


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # a training step without a Trainer
def test_training_batches_are_uint8_and_the_module_trains_on_the_float_images(records: list[ImageRecord]) -> None:
    """The data module's training batches carry uint8 images (a quarter of the bytes to pin and copy,
    packed by a worker process); images_to_float, which DetectionModule.training_step applies on the
    device, gives exactly the float32 images the float path gave (x / 255), and the training step
    on the uint8 batch computes the same loss as on those float images. Validation batches stay
    float32 and pass images_to_float untouched."""
    from beedet.assembly import build_network, build_system
    from beedet.data.datamodule import BeeDataModule
    from beedet.data.dataset import images_to_float

    cfg = compose_config([])
    dm = BeeDataModule(train=None, train_transform=_random_crop_pipeline(), batch_size=4, num_workers=1)  # type: ignore[arg-type]
    dm.class_names, dm.train_records, dm.val_records = ["bee", "b", "c", "d"], records * 2, records  # labels as read
    dm.setup("fit")
    loader = dm.train_dataloader()
    pairs = list(loader.sampler)  # the (index, sample seed) pairs of this epoch, in batch order
    images, targets = next(iter(loader))
    assert [image.dtype for image in images] == [torch.uint8] * 4 and images[0].shape == (3, 64, 64)
    float_path = DetectionDataset(dm.train_records, _random_crop_pipeline())  # what every sample was before
    expected = [float_path[pair] for pair in pairs[:4]]
    assert [t["image_id"] for t in targets] == [t["image_id"] for _, t in expected]
    converted = images_to_float(images)
    for image, (want, _) in zip(converted, expected):
        assert image.dtype == torch.float32 and torch.equal(image, want)
    assert torch.equal(converted[1], images[1].float() / 255)

    system = build_system(cfg, build_network(cfg.model, num_classes=4), dm.class_names)
    loss = system.training_step((images, targets), 0)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.equal(system.training_step(([image for image, _ in expected], targets), 0), loss)

    val_images, _ = next(iter(DataLoader(dm.val_dataset, batch_size=2, collate_fn=collate_detection)))
    assert all(image.dtype == torch.float32 for image in val_images)
    assert all(a is b for a, b in zip(images_to_float(val_images), val_images))
    assert images_to_float([]) == []
