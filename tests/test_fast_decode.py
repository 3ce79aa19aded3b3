"""The input pipeline's fast paths change nothing beyond a stated tolerance.

Reduced-size JPEG decode (``load_image_reduced``, ``data.reduced_decode``) followed by the
preset's first step, the bilinear resize to the model's input, against the full decode followed by
the same resize, on the real honeybee-mini frames:

* 1920x1080 frames (the training workload; DCT scale 1/2): mean |difference| over the frames
  below 2/255, and below 5/255 on every frame (measured on all 555 such frames of the honeybee
  train and valid splits: mean 1.65/255, worst frame 4.3/255).
* Every frame (web photos of other sizes, scales 1/2 to 1/8): the reduced path is no further than
  1/255 + the full path's own distance from an antialiased (area-averaging) downscale of the full
  frame. A bilinear resize by 3.6x or more samples only some of the pixels, so the full path
  itself is off from the area average by 2.8/255 on average; DCT scaling averages every pixel,
  and the reduced path is off by 1.6/255.
* Boxes: identical within 0.5 px; random draws and labels identical.

The decoded-frame cache (``data.cache_bytes``) returns exactly the samples of an uncached dataset,
and augmentation still differs from epoch to epoch (only decoded frames are cached).
"""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from beedet.assembly import build_augment, build_datamodule
from beedet.data.augment import build_pipeline
from beedet.data.dataset import DecodedFrameCache, DetectionDataset, collate_detection, images_to_float, reduced_decode_size
from beedet.data.images import find_images, load_image, load_image_reduced
from helpers import compose_config

WORKLOAD_MEAN_LEVELS = 2.0  # uint8 levels (x/255)
WORKLOAD_FRAME_LEVELS = 5.0
EXTRA_OVER_FULL_PATH_LEVELS = 1.0
BOX_TOLERANCE_PX = 0.5
INPUT = 300  # the ssd300 presets' input side


def _resized(pixels: np.ndarray) -> np.ndarray:
    """The presets' first step: cv2.INTER_LINEAR to the square input."""
    return cv2.resize(pixels, (INPUT, INPUT), interpolation=cv2.INTER_LINEAR).astype(np.float64)


def test_reduced_decode_resizes_like_the_full_decode(honeybee_mini: Path) -> None:
    workload, reduced_frames = [], 0
    for path in find_images(honeybee_mini):
        reduced, full_size = load_image_reduced(path, (INPUT, INPUT))
        full = load_image(path)
        assert full_size == (full.shape[1], full.shape[0]), path
        assert reduced.dtype == np.uint8 and reduced.shape[2] == 3
        assert reduced.shape[0] >= min(INPUT, full.shape[0]) and reduced.shape[1] >= min(INPUT, full.shape[1]), path
        reduced_frames += reduced.shape[:2] != full.shape[:2]
        difference = np.abs(_resized(full) - _resized(reduced)).mean()
        if full_size == (1920, 1080):
            assert reduced.shape[:2] == (540, 960), path  # 1/4 would leave 270 < 300 rows
            assert difference < WORKLOAD_FRAME_LEVELS, (path, difference)
            workload.append(difference)
        area = cv2.resize(full, (INPUT, INPUT), interpolation=cv2.INTER_AREA).astype(np.float64)
        full_path_error = np.abs(area - _resized(full)).mean()
        reduced_path_error = np.abs(area - _resized(reduced)).mean()
        assert reduced_path_error <= full_path_error + EXTRA_OVER_FULL_PATH_LEVELS, (path, reduced_path_error, full_path_error)
    assert len(workload) >= 10 and reduced_frames > len(workload)  # web photos were reduced too
    assert np.mean(workload) < WORKLOAD_MEAN_LEVELS, workload


def test_reduced_decode_follows_exif_orientation(tmp_path: Path) -> None:
    """Stored 1600x800 with orientation 6 is displayed 800x1600: the scale is chosen, and the
    returned size reported, for the displayed image."""
    stored = np.zeros((800, 1600, 3), np.uint8)
    stored[:, :800] = (250, 10, 10)  # left half red: on top once displayed
    stored[:, 800:] = (10, 10, 250)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)

    # Displayed (190, 500) is stored (500, 190): 1/8 and 1/4 leave 200 and 400 < 500 columns; 1/2 fits.
    pixels, full_size = load_image_reduced(tmp_path / "phone.jpg", (190, 500))
    assert full_size == (800, 1600)
    assert pixels.shape == (800, 400, 3)
    assert pixels[100, 200, 0] > 200 and pixels[700, 200, 2] > 200
    # Small enough for 1/8 on both sides; no JPEG: full size.
    assert load_image_reduced(tmp_path / "phone.jpg", (100, 200))[0].shape == (200, 100, 3)
    Image.fromarray(stored).save(tmp_path / "plain.png")
    assert load_image_reduced(tmp_path / "plain.png", (100, 100))[0].shape == (800, 1600, 3)


def test_only_a_leading_fixed_resize_allows_a_reduced_decode() -> None:
    ssd = build_augment(compose_config(["augment=ssd", "model.image_size=300"]).augment)
    tiled = build_augment(compose_config(["+experiment=honeybee_tiled"]).augment)
    assert reduced_decode_size(ssd) == (300, 300)
    assert reduced_decode_size(tiled) is None  # native-resolution crops need every pixel
    assert reduced_decode_size(None) is None
    assert reduced_decode_size(build_pipeline([A.Resize(64, 96, p=0.5), A.HorizontalFlip()])) is None
    assert reduced_decode_size(build_pipeline([A.HorizontalFlip(), A.Resize(64, 96)])) is None
    assert reduced_decode_size(build_pipeline([A.Resize(64, 96), A.HorizontalFlip()])) == (96, 64)
    assert DetectionDataset([], tiled, reduced_decode=True).decode_size is None


@pytest.fixture
def honeybee_ssd300(honeybee_mini: Path):
    """The honeybee_wholeframe experiment on honeybee-mini: the data module (set up, with the
    config's fast-path keys) and the augment config."""
    cfg = compose_config(["+experiment=honeybee_wholeframe", f"data.root={honeybee_mini}", "data.verify_images=false"])
    datamodule = build_datamodule(cfg.data, cfg.augment)
    datamodule.setup("fit")
    return datamodule, cfg.augment


def test_data_module_decodes_reduced_for_training_only(honeybee_ssd300) -> None:
    datamodule, _ = honeybee_ssd300
    assert datamodule.train_dataset.decode_size == (INPUT, INPUT)
    assert datamodule.train_dataset.cache is None  # data.cache_bytes: 0
    assert datamodule.val_dataset.decode_size is None and datamodule.val_dataset.cache is None


def test_reduced_decode_keeps_draws_boxes_and_labels(honeybee_ssd300) -> None:
    datamodule, augment_cfg = honeybee_ssd300
    fast = datamodule.train_dataset
    full = DetectionDataset(fast.records, build_augment(augment_cfg))  # the same preset, full decode
    differences, worst_box = [], 0.0
    for index in range(len(fast)):
        fast_image, fast_target = fast[index]  # both seeded alike, drawn in lock-step
        full_image, full_target = full[index]
        fast_image, = images_to_float([fast_image])  # the training dataset's images are uint8
        assert fast_image.shape == full_image.shape == (3, INPUT, INPUT)
        assert torch.equal(fast_target["labels"], full_target["labels"]), index
        assert torch.equal(fast_target["orig_size"], full_target["orig_size"])
        if len(full_target["boxes"]):
            worst_box = max(worst_box, float((fast_target["boxes"] - full_target["boxes"]).abs().max()))
        differences.append(float((fast_image - full_image).abs().mean()) * 255)
    assert worst_box < BOX_TOLERANCE_PX, worst_box
    # After zoom-in crops (which enlarge the difference with the pixels) and colour jitter.
    assert np.mean(differences) < WORKLOAD_MEAN_LEVELS + 1.0, differences


def _same_sample(a, b) -> bool:
    return torch.equal(a[0], b[0]) and all(torch.equal(a[1][k], b[1][k]) for k in ("boxes", "labels", "image_id", "orig_size"))


def test_cache_returns_the_uncached_samples_and_never_freezes_augmentation(honeybee_ssd300) -> None:
    datamodule, augment_cfg = honeybee_ssd300
    records = datamodule.train_records[:6]
    cached = DetectionDataset(records, build_augment(augment_cfg), reduced_decode=True, cache_bytes=10**9)
    plain = DetectionDataset(records, build_augment(augment_cfg), reduced_decode=True)
    epochs = []
    for _ in range(2):
        samples = [cached[i] for i in range(len(records))]
        assert all(_same_sample(s, plain[i]) for i, s in enumerate(samples))
        epochs.append(samples)
    assert (cached.cache.misses, cached.cache.hits, len(cached.cache)) == (6, 6, 6)
    assert all(not frame.flags.writeable for frame, _ in cached.cache._frames.values())
    # A cache of augmented samples would hand out the first epoch's draws again.
    assert all(not torch.equal(a[0], b[0]) for a, b in zip(*epochs))


def test_cache_stays_within_its_byte_budget(honeybee_ssd300) -> None:
    datamodule, augment_cfg = honeybee_ssd300
    records = [r for r in datamodule.train_records if (r.width, r.height) == (1920, 1080)][:4]
    frame_bytes = 960 * 540 * 3  # reduced for the 300 px input
    dataset = DetectionDataset(records, build_augment(augment_cfg), reduced_decode=True, cache_bytes=2 * frame_bytes + 10)
    for index in range(len(records)):
        dataset[index]
    assert len(dataset.cache) == 2 and dataset.cache.nbytes == 2 * frame_bytes
    cache = DecodedFrameCache(100)
    assert not cache.put("big", np.zeros((10, 10, 3), np.uint8), (10, 10)) and len(cache) == 0
    with pytest.raises(ValueError, match="max_bytes"):
        DecodedFrameCache(-1)


def test_cached_worker_batches_equal_uncached_ones_and_differ_per_epoch(honeybee_ssd300) -> None:
    """In a persistent worker process (where the cache lives in practice), as in training."""
    datamodule, augment_cfg = honeybee_ssd300
    records = datamodule.train_records[:4]
    runs = []
    for cache_bytes in (10**9, 0):
        dataset = DetectionDataset(records, build_augment(augment_cfg), reduced_decode=True, cache_bytes=cache_bytes)
        loader = DataLoader(dataset, batch_size=2, num_workers=1, persistent_workers=True, collate_fn=collate_detection,
                            generator=torch.Generator().manual_seed(3))
        runs.append([[image for images, _ in loader for image in images] for _epoch in range(2)])
    (cached_first, cached_second), (plain_first, plain_second) = runs
    assert all(torch.equal(a, b) for a, b in zip(cached_first + cached_second, plain_first + plain_second))
    assert all(not torch.equal(a, b) for a, b in zip(cached_first, cached_second))


def test_worker_batches_arrive_packed_but_equal_to_the_samples(tmp_path: Path) -> None:
    """collate_detection sends a worker's batch as a few batch-wide tensors; what arrives must be
    the samples themselves: images of different sizes, an image without boxes, every dtype."""
    from beedet.data.records import ImageRecord

    rng = np.random.default_rng(0)
    records = []
    for i, (height, width, boxes) in enumerate([(40, 60, 2), (32, 32, 0), (50, 30, 3)]):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        xy = rng.uniform(0, 10, (boxes, 2))
        records.append(ImageRecord(tmp_path / f"{i}.png", width, height, np.hstack([xy, xy + 5]).astype(np.float32),
                                   np.arange(boxes)))
    dataset = DetectionDataset(records)
    (images, targets), = list(DataLoader(dataset, batch_size=3, num_workers=1, collate_fn=collate_detection))
    assert isinstance(images, list) and isinstance(targets, list)
    for index, (image, target) in enumerate(zip(images, targets)):
        expected_image, expected_target = dataset[index]
        assert image.is_contiguous() and torch.equal(image, expected_image)
        assert set(target) == set(expected_target)
        for key, value in expected_target.items():
            assert target[key].dtype == value.dtype and torch.equal(target[key], value), (index, key)


def test_a_leading_longest_max_size_decodes_no_smaller_than_it_needs(honeybee_mini: Path) -> None:
    """augment=scaled starts with LongestMaxSize: frames decode at the DCT size that still has the
    resized longer side, and boxes land where the full decode puts them."""
    from beedet.data.dataset import reduced_decode_long_side

    cfg = compose_config(["+experiment=honeybee", f"data.root={honeybee_mini}", "data.verify_images=false"])
    datamodule = build_datamodule(cfg.data, cfg.augment)
    datamodule.setup("fit")
    fast = datamodule.train_dataset
    assert fast.decode_long_side == cfg.slicing.long_side == 960 and fast.decode_size is None
    assert reduced_decode_long_side(build_pipeline([A.HorizontalFlip(), A.LongestMaxSize(max_size=64)])) is None
    assert reduced_decode_long_side(build_pipeline([A.LongestMaxSize(max_size=[64, 96])])) is None
    frames = [r for r in fast.records if (r.width, r.height) == (1920, 1080)][:2]
    resize = build_pipeline([A.LongestMaxSize(max_size=960, area_for_downscale="image")])
    reduced = DetectionDataset(frames, resize, reduced_decode=True)
    full = DetectionDataset(frames, resize)
    for index in range(len(frames)):
        pixels, _ = reduced._decoded(frames[index])
        assert pixels.shape[:2] == (540, 960)  # DCT scale 1/2: exactly what the resize needs
        fast_image, fast_target = reduced[index]
        full_image, full_target = full[index]
        assert fast_image.shape == full_image.shape == (3, 540, 960)
        assert (fast_target["boxes"] - full_target["boxes"]).abs().max() < BOX_TOLERANCE_PX
        assert float((fast_image - full_image).abs().mean()) * 255 < WORKLOAD_MEAN_LEVELS + 1.0
