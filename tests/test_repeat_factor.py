"""Repeat-factor sampling for rare classes (beedet.data.repeat_factor) and its use by BeeDataModule."""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from lightning_fabric.utilities.distributed import DistributedSamplerWrapper

from beedet.assembly import build_datamodule
from beedet.data.repeat_factor import (
    RepeatFactorSampler,
    combined_repeat_factors,
    epoch_length,
    group_repeat_factors,
    repeat_factors,
)
from beedet.data.splits import group_keys
from helpers import TINY_SYNTHETIC, compose_config, overriding

# Ten images, four classes: class 0 in 8 images, class 1 in 2, class 2 in 1, class 3 in none;
# image 9 has no boxes.
LABELS = [
    np.array([0, 0, 0]),
    np.array([0, 1]),
    np.array([0]),
    np.array([0, 0, 2, 1]),
    np.array([0]),
    np.array([0, 0]),
    np.array([0]),
    np.array([0]),
    np.array([1]),
    np.array([], dtype=np.int64),
]


def test_repeat_factors_follow_the_lvis_formula():
    t = 0.5
    factors = repeat_factors(LABELS, num_classes=4, threshold=t)

    fraction = [8 / 10, 3 / 10, 1 / 10, 0.0]
    np.testing.assert_allclose(factors.class_image_fraction, fraction)
    expected_class = [1.0, math.sqrt(t / 0.3), math.sqrt(t / 0.1)]  # max(1, sqrt(t / f))
    np.testing.assert_allclose(factors.class_factor[:3], expected_class)
    assert np.isnan(factors.class_factor[3])  # in no image

    r0, r1, r2 = expected_class
    expected_image = [r0, r1, r0, r2, r0, r0, r0, r0, r1, 1.0]  # max over the image's classes; 1 if empty
    np.testing.assert_allclose(factors.image_factor, expected_image)

    # Shares after sampling: weighted by the image factors.
    total = sum(expected_image)
    assert factors.expected_image_share[1] == pytest.approx((2 * r1 + r2) / total)
    box_counts = np.array([[np.sum(l == c) for c in range(4)] for l in LABELS])
    sampled = (np.array(expected_image)[:, None] * box_counts).sum(axis=0)
    np.testing.assert_allclose(factors.expected_box_share, sampled / sampled.sum())
    np.testing.assert_allclose(factors.box_share, box_counts.sum(axis=0) / box_counts.sum())


def test_threshold_below_every_fraction_repeats_nothing():
    factors = repeat_factors(LABELS, num_classes=4, threshold=0.05)
    np.testing.assert_array_equal(factors.image_factor, np.ones(len(LABELS)))
    assert epoch_length(factors.image_factor) == len(LABELS)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="threshold"):
        repeat_factors(LABELS, 4, 0.0)
    with pytest.raises(ValueError, match="class ids"):
        repeat_factors([np.array([4])], 4, 0.5)
    with pytest.raises(ValueError, match=">= 1"):
        RepeatFactorSampler([1.0, 0.5])


def test_epoch_length_is_fixed_and_every_image_is_drawn_about_r_times():
    factors = np.array([1.0, 1.0, 1.5, 2.0, 2.7, 1.0, 1.2, 3.3])
    sampler = RepeatFactorSampler(factors, seed=3)
    assert len(sampler) == round(factors.sum()) == 14

    counts = Counter()
    epochs = 600
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        drawn = list(sampler)
        assert len(drawn) == len(sampler)
        assert all(0 <= i < len(factors) for i in drawn)
        counts.update(drawn)
    per_epoch = np.array([counts[i] for i in range(len(factors))]) / epochs
    # Draws scaled to the fixed length keep every image's rate at r_i (to sampling noise).
    np.testing.assert_allclose(per_epoch / factors, 1.0, atol=0.05)
    # Rare-class images (r = 3.3) come about 3.3 times as often as a plain one.
    assert per_epoch[7] / per_epoch[0] == pytest.approx(3.3, rel=0.08)


def test_set_epoch_changes_the_order_deterministically():
    factors = np.linspace(1.0, 2.5, 40)
    a, b = RepeatFactorSampler(factors, seed=7), RepeatFactorSampler(factors, seed=7)
    assert list(a) == list(b)  # epoch 0 before any set_epoch
    a.set_epoch(5)
    b.set_epoch(5)
    assert list(a) == list(b) == list(a)  # iterating again gives the same epoch
    b.set_epoch(6)
    assert list(a) != list(b)
    assert list(RepeatFactorSampler(factors, seed=8)) != list(RepeatFactorSampler(factors, seed=7))


def test_sample_seeds_depend_on_the_epoch_alone():
    """With augment_seed, each position carries an augmentation seed that a fresh sampler (a
    resumed run) gives again for the same epoch, whatever epochs ran before."""
    factors = np.ones(12)  # a plain seeded shuffle: every image once per epoch
    ran_through = RepeatFactorSampler(factors, seed=2, augment_seed=42)
    for epoch in range(4):
        ran_through.set_epoch(epoch)
        first = list(ran_through)
    resumed = RepeatFactorSampler(factors, seed=2, augment_seed=42)
    resumed.set_epoch(3)
    assert list(resumed) == first
    assert sorted(i for i, _ in first) == list(range(12))
    assert all(isinstance(s, int) and 0 <= s < 2**63 for _, s in first)
    resumed.set_epoch(2)
    assert [s for _, s in resumed] != [s for _, s in first]
    other = RepeatFactorSampler(factors, seed=2, augment_seed=43)
    other.set_epoch(3)
    assert [i for i, _ in other] == [i for i, _ in first] and [s for _, s in other] != [s for _, s in first]
    assert list(RepeatFactorSampler(factors, seed=2)) == [i for i, _ in RepeatFactorSampler(factors, seed=2, augment_seed=1)]


def test_ddp_ranks_share_one_epoch_list():
    """Lightning's DistributedSamplerWrapper iterates the sampler on every rank and keeps every
    world_size-th position: the ranks together must cover exactly the sampler's epoch."""
    factors = np.linspace(1.0, 3.0, 31)
    base = RepeatFactorSampler(factors, seed=1)
    ranks = [
        DistributedSamplerWrapper(RepeatFactorSampler(factors, seed=1), num_replicas=2, rank=rank, shuffle=True, seed=0)
        for rank in range(2)
    ]
    for epoch in (0, 3):
        base.set_epoch(epoch)
        for wrapper in ranks:
            wrapper.set_epoch(epoch)  # forwarded to our sampler, as Lightning does each epoch
        shards = [list(w) for w in ranks]
        assert len(shards[0]) == len(shards[1]) == math.ceil(len(base) / 2)
        expected = Counter(base.indices(epoch).tolist())
        together = Counter(shards[0] + shards[1])
        # DistributedSampler pads an odd total by repeating one position.
        assert sum((together - expected).values()) == 2 * len(shards[0]) - len(base)
        assert not expected - together


def test_datamodule_uses_the_sampler_and_logs_the_shares(tmp_path: Path, caplog):
    overrides = overriding(TINY_SYNTHETIC, f"data.root={tmp_path / 'synthetic'}", "data.verify_images=false")
    cfg = compose_config([*overrides, "data.repeat_factor_threshold=2.0"])
    datamodule = build_datamodule(cfg.data)
    datamodule.setup("fit")
    with caplog.at_level(logging.INFO, logger="beedet.data.datamodule"):
        loader = datamodule.train_dataloader()
        datamodule.train_dataloader()  # a reload does not log again
    sampler = loader.sampler
    assert isinstance(sampler, RepeatFactorSampler)
    factors = repeat_factors([r.labels for r in datamodule.train_records], 4, 2.0)
    np.testing.assert_allclose(sampler.repeat_factors, factors.image_factor)
    assert len(sampler) == epoch_length(factors.image_factor) > len(datamodule.train_records)
    assert len(loader) == len(sampler) // cfg.data.batch_size  # full batches only (drop_last)
    tables = [r.getMessage() for r in caplog.records if "repeat-factor sampling" in r.getMessage()]
    assert len(tables) == 1 and "queen" in tables[0]

    plain = build_datamodule(compose_config(overrides).data)
    plain.setup("fit")
    # Without a threshold: a seeded shuffle of every image once, each sample with its own seed.
    sampler = plain.train_dataloader().sampler
    assert isinstance(sampler, RepeatFactorSampler) and len(sampler) == len(plain.train_records)
    assert sorted(i for i, _ in sampler) == list(range(len(plain.train_records)))


def test_threshold_must_be_positive(tmp_path: Path):
    cfg = compose_config(["data.repeat_factor_threshold=0"])
    with pytest.raises(Exception, match="repeat_factor_threshold"):
        build_datamodule(cfg.data)


# --- scene-aware sampling: repeat factors by data.group_by group --------------------------------


def test_group_repeat_factors_balance_scenes_not_classes():
    # Ten images: one camera with six frames, a video with two, two photos on their own.
    keys = ["camera"] * 6 + ["video"] * 2 + ["photo_a", "photo_b"]
    factors = group_repeat_factors(keys, 0.4)
    # f = 0.6 (>= t: shown once), 0.2 (sqrt(0.4 / 0.2)), 0.1 each (sqrt(0.4 / 0.1) = 2).
    np.testing.assert_allclose(factors, [1.0] * 6 + [math.sqrt(2.0)] * 2 + [2.0, 2.0])
    # With class factors too, each image takes the larger.
    by_class = np.array([1.5] + [1.0] * 9)
    np.testing.assert_allclose(combined_repeat_factors(by_class, factors), np.maximum(by_class, factors))
    np.testing.assert_allclose(combined_repeat_factors(None, factors), factors)
    with pytest.raises(ValueError, match="must be > 0"):
        group_repeat_factors(keys, 0.0)


def test_datamodule_shows_lone_photos_more_often_than_camera_frames(honeybee_mini, caplog):
    cfg = compose_config(["+experiment=honeybee", f"data.root={honeybee_mini}", "data.group_repeat_threshold=0.5",
                          "data.repeat_factor_threshold=null",
                          "data.num_workers=0"])
    datamodule = build_datamodule(cfg.data)
    datamodule.setup("fit")
    with caplog.at_level(logging.INFO, logger="beedet.data.datamodule"):
        sampler = datamodule.train_dataloader().sampler
        datamodule.train_dataloader()  # a reload does not log again
    keys = group_keys(datamodule.train_records, cfg.data.group_by)
    sizes = Counter(keys)
    expected = [max(1.0, math.sqrt(0.5 * len(keys) / sizes[key])) for key in keys]
    np.testing.assert_allclose(sampler.repeat_factors, expected)
    largest = max(sizes.values())
    assert largest > 1 and min(sizes.values()) == 1
    lone = [f for key, f in zip(keys, sampler.repeat_factors) if sizes[key] == 1]
    crowded = [f for key, f in zip(keys, sampler.repeat_factors) if sizes[key] == largest]
    assert min(lone) > max(crowded)
    assert len(sampler) == epoch_length(expected) > len(datamodule.train_records)
    assert sum("group_repeat_threshold" in r.getMessage() for r in caplog.records) == 1


def test_group_repeat_needs_groups():
    with pytest.raises(Exception, match="needs data.group_by"):  # hydra wraps the ValueError
        build_datamodule(compose_config(["data.group_repeat_threshold=0.1"]).data)
