"""Subsets and train/val splits are seeded, disjoint and independent of the records' input order."""

from __future__ import annotations

import functools
import random
import re
from pathlib import Path

import pytest
from hydra.errors import InstantiationException

from beedet.assembly import build_datamodule
from beedet.data.records import DataError, ImageRecord
from beedet.data.splits import compile_group_pattern, group_key, leaked_val_images, subset, train_val_split
from helpers import compose_config


def _records(n: int) -> list[ImageRecord]:
    return [ImageRecord(f"/hive/frame_{i:04d}.jpg", 64, 48, source=f"m.manifest:{i + 1}") for i in range(n)]


def _names(records: list[ImageRecord]) -> set[str]:
    return {r.image_path.name for r in records}


def test_subset_of_two_percent() -> None:
    records = _records(1000)
    chosen = subset(records, 0.02, seed=0)
    assert len(chosen) == 20 and len(_names(chosen)) == 20
    assert _names(chosen) == _names(subset(records, 0.02, seed=0))
    assert _names(chosen) != _names(subset(records, 0.02, seed=1))
    shuffled = records[::-1]
    random.Random(3).shuffle(shuffled)
    assert _names(subset(shuffled, 0.02, seed=0)) == _names(chosen)
    # The chosen records keep their input order.
    assert [r.image_path for r in chosen] == sorted(r.image_path for r in chosen)


def test_subset_edges() -> None:
    records = _records(10)
    assert subset(records, 1.0, seed=5) == records
    assert subset(records, 0.0, seed=5) == []
    assert len(subset(records, 0.01, seed=5)) == 1  # a positive fraction never yields nothing
    with pytest.raises(ValueError, match="fraction"):
        subset(records, 1.5, seed=0)


def test_train_val_split_is_deterministic_and_disjoint() -> None:
    records = _records(101)
    train, val = train_val_split(records, 0.2, seed=0)
    assert len(val) == 20 and len(train) == 81
    assert _names(train).isdisjoint(_names(val)) and _names(train) | _names(val) == _names(records)
    again_train, again_val = train_val_split(list(reversed(records)), 0.2, seed=0)
    assert _names(again_val) == _names(val) and _names(again_train) == _names(train)
    assert _names(train_val_split(records, 0.2, seed=1)[1]) != _names(val)


@pytest.mark.parametrize("fraction", [0.01, 0.5, 0.99])
def test_two_records_split_into_two_non_empty_sides(fraction: float) -> None:
    train, val = train_val_split(_records(2), fraction, seed=0)
    assert len(train) == 1 and len(val) == 1


def test_split_refuses_what_cannot_be_split() -> None:
    with pytest.raises(DataError, match="cannot split 1 image"):
        train_val_split(_records(1), 0.2, seed=0)
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(_records(10), 1.0, seed=0)


# ---- data.group_by: related images stay on one side --------------------------------------------

@functools.cache
def _honeybee_group_by() -> str:
    """The pattern shipped in conf/data/honeybee.yaml, from the composed real config."""
    return compose_config(["data=honeybee"]).data.group_by


def _video_records(seed: int = 0) -> list[ImageRecord]:
    """Frames of 12 videos (1 to 20 frames each), named as Roboflow names them, plus 30 photos."""
    rng = random.Random(seed)
    names = [f"hive{v}_mp4-{f}_jpg.rf.{rng.getrandbits(64):016x}.jpg"
             for v in range(12) for f in range(rng.randint(1, 20))]
    names += [f"photo{p}_jpg.rf.{rng.getrandbits(64):016x}.jpg" for p in range(30)]
    return [ImageRecord(f"/data/train/images/{n}", 64, 48, source=f"train.manifest:{i + 1}")
            for i, n in enumerate(names)]


def _video(record: ImageRecord) -> str:
    return record.image_path.name.split("_")[0]


def test_grouped_split_keeps_every_group_on_one_side() -> None:
    records, group_by = _video_records(), _honeybee_group_by()
    train, val = train_val_split(records, 0.2, seed=0, group_by=group_by)
    assert train and val and len(train) + len(val) == len(records)
    assert {_video(r) for r in train}.isdisjoint({_video(r) for r in val})
    assert abs(len(val) - 0.2 * len(records)) <= 1  # 30 photos are enough to fill val up exactly
    # Deterministic per seed, whatever the input order; another seed splits differently.
    shuffled = list(records)
    random.Random(5).shuffle(shuffled)
    assert _names(train_val_split(shuffled, 0.2, seed=0, group_by=group_by)[1]) == _names(val)
    assert _names(train_val_split(records, 0.2, seed=1, group_by=group_by)[1]) != _names(val)
    assert leaked_val_images(train, val, group_by) == []
    # The same records split per image put frames of one video on both sides.
    assert leaked_val_images(*train_val_split(records, 0.2, seed=0), group_by)


def test_grouped_split_of_large_groups_stays_non_empty() -> None:
    # Two videos of 10 frames: val wants 2 images, gets one whole video; train keeps the other.
    records = [ImageRecord(f"/d/{v}_mp4-{f}.jpg", 64, 48, source=f"m:{v}{f}") for v in "ab" for f in range(10)]
    train, val = train_val_split(records, 0.1, seed=3, group_by=_honeybee_group_by())
    assert len(train) == len(val) == 10 and len({_video(r) for r in val}) == 1


def test_group_by_matching_nothing_splits_as_ungrouped_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    records = _records(50)
    with caplog.at_level("INFO", logger="beedet.data.splits"):
        grouped = train_val_split(records, 0.2, seed=4, group_by=r"_mp4-\d+")
    assert grouped == train_val_split(records, 0.2, seed=4)
    assert "50 of 50 file names match no group" in caplog.text


def test_one_group_cannot_be_split() -> None:
    records = [ImageRecord(f"/d/cam_mp4-{f}.jpg", 64, 48, source=f"m:{f}") for f in range(5)]
    with pytest.raises(DataError, match="all in one group"):
        train_val_split(records, 0.2, seed=0, group_by=_honeybee_group_by())


def test_group_key_takes_named_group_then_group_one_then_the_match() -> None:
    name = "hive7_mp4-12.jpg"
    assert group_key(name, re.compile(r"(?P<video>\w+?)_(?P<group>mp4)")) == "mp4"
    assert group_key(name, re.compile(r"^(\w+?)_mp4-(\d+)")) == "hive7"
    assert group_key(name, re.compile(r"^hive\d+")) == "hive7"
    assert group_key(name, re.compile(r"_mov-")) is None
    assert group_key(name, re.compile(r"^(x?)hive")) is None  # an empty key groups nothing
    with pytest.raises(ValueError, match="data.group_by"):
        compile_group_pattern("(unclosed")


@pytest.mark.parametrize(("name", "key"), [
    ("Beehive---3-15-2022--10_41_13am_mp4-12_jpg.rf.ab12.jpg", "Beehive---3-15-2022--10_41_13am"),
    ("1_mp4-0_jpg.rf.f7e2.jpg", "1"),
    ("063_jpg.rf.06fc.jpg", "063"),
    ("1586457549840_jpeg.rf.0fa554dd87d5aaae5e99b471d9de69ca.jpg", "1586457549840"),
    ("200518-v1_PopularityRed_AS_png.rf.d288f2f1f986f5e0a342a5857a8b1277.jpg", "200518-v1_PopularityRed_AS"),
    ("The-Bees-Are-Out----14th-March-2022-Sbd3sD47J28_x264_mov-12_jpg.rf.08d28ba81424ef1b87d0d95b91fe46bc.jpg",
     "The-Bees-Are-Out----14th-March-2022-Sbd3sD47J28_x264"),
    ("frame109_jpg.rf.1618ac1266cd87357fb9f71c5d44cb72.jpg", "frame"),
    ("frame_0001.png", "frame"),
    ("hive_MOV-3.jpg", "hive"),
    ("frameworks_jpg.rf.ab.jpg", "frameworks"),
    ("IMG_1234.jpg", None),
    ("photo.jpg", None),
])
def test_shipped_pattern_on_file_names(name: str, key: str | None) -> None:
    assert group_key(name, compile_group_pattern(_honeybee_group_by())) == key


def test_shipped_pattern_groups_every_real_file_name(honeybee_mini: Path) -> None:
    pattern = compile_group_pattern(_honeybee_group_by())
    names = [p.name for p in sorted(honeybee_mini.glob("*/images/*.jpg"))]
    keys = {name: group_key(name, pattern) for name in names}
    assert len(names) == 30 and None not in keys.values()
    frames_of = {name.split("_mp4-")[0] for name in names if "_mp4-" in name}
    assert {keys[n] for n in names if "_mp4-" in n} == frames_of
    assert {keys[n] for n in names if n.startswith("frame")} == {"frame"}


def test_leaked_val_images_counts_val_images_of_train_groups() -> None:
    group_by = _honeybee_group_by()
    train = [ImageRecord(f"/t/{n}", 64, 48, source=n) for n in ("a_mp4-1.jpg", "b_mp4-1.jpg", "x.jpg")]
    val = [ImageRecord(f"/v/{n}", 64, 48, source=n) for n in ("a_mp4-2.jpg", "a_mp4-3.jpg", "c_mp4-1.jpg", "y.jpg")]
    assert [r.image_path.name for r in leaked_val_images(train, val, group_by)] == ["a_mp4-2.jpg", "a_mp4-3.jpg"]
    # The same unmatched file in both splits is leakage too; another unmatched file is not.
    same_file = [ImageRecord("/t/x.jpg", 64, 48, source="v"), ImageRecord("/v/x.jpg", 64, 48, source="w")]
    assert leaked_val_images(train, same_file, group_by) == same_file[:1]


def _honeybee_mini_datamodule(root: Path, *extra: str):
    cfg = compose_config(["data=honeybee", f"data.root={root}", "data.verify_images=false", "data.num_workers=0",
                          *extra])
    datamodule = build_datamodule(cfg.data)
    datamodule.load_labels()
    return datamodule


def test_datamodule_reports_val_images_sharing_a_train_group(honeybee_mini: Path, caplog) -> None:
    with caplog.at_level("WARNING", logger="beedet.data.datamodule"):
        datamodule = _honeybee_mini_datamodule(honeybee_mini)
    # valid/ has frames of 3 videos that train/ also has, and 2 frame<n> of the entrance camera.
    assert datamodule.reports["val"].shared_group_images == 5
    assert "5 of 12 val images share a data.group_by group" in caplog.text
    assert "| images sharing a data.group_by group with train | 5 |" in datamodule.reports["val"].to_markdown()
    assert datamodule.reports["val"].to_dict()["shared_group_images"] == 5
    assert _honeybee_mini_datamodule(honeybee_mini, "data.group_by=null").reports["val"].shared_group_images is None


def test_composed_group_by_override_reaches_the_split(honeybee_mini: Path) -> None:
    # A split of the 18 train images by video name only (frame<n> images each on their own).
    datamodule = _honeybee_mini_datamodule(honeybee_mini, "data.val=null", "data.val_fraction=0.3",
                                           r"data.group_by='^(?P<group>.+)_mp4-\d+_'")
    assert datamodule.group_by == r"^(?P<group>.+)_mp4-\d+_"
    train, val = datamodule.train_records, datamodule.val_records
    assert len(train) + len(val) == 18 and len(val) == round(0.3 * 18)
    videos = [{r.image_path.name.split("_mp4-")[0] for r in side if "_mp4-" in r.image_path.name}
              for side in (train, val)]
    assert videos[0].isdisjoint(videos[1])
    assert datamodule.reports["val"].shared_group_images is None  # measured only against a given val source
    # A bad pattern stops the run when the data module is built, before any label is read.
    with pytest.raises(InstantiationException, match="not a valid regular expression"):
        _honeybee_mini_datamodule(honeybee_mini, "data.group_by='(unclosed'")


def test_val_subset_unseen_keeps_only_val_images_of_groups_train_never_saw(honeybee_mini: Path, caplog) -> None:
    everything = _honeybee_mini_datamodule(honeybee_mini)
    with caplog.at_level("INFO", logger="beedet.data.datamodule"):
        unseen = _honeybee_mini_datamodule(honeybee_mini, "data.val_subset=unseen")
    shared = {r.image_path for r in leaked_val_images(everything.train_records, everything.val_records, everything.group_by)}
    assert len(shared) == 5 and len(unseen.val_records) == 12 - 5
    assert {r.image_path for r in unseen.val_records} == {r.image_path for r in everything.val_records} - shared
    assert [r.image_path for r in unseen.train_records] == [r.image_path for r in everything.train_records]
    assert unseen.reports["val"].images == 7 and unseen.reports["val"].shared_group_images == 0
    assert "7 val images share no group with train (5 dropped)" in caplog.text
    with pytest.raises(InstantiationException, match="needs data.group_by"):
        _honeybee_mini_datamodule(honeybee_mini, "data.val_subset=unseen", "data.group_by=null")
    with pytest.raises(InstantiationException, match="val_subset must be one of"):
        _honeybee_mini_datamodule(honeybee_mini, "data.val_subset=novel")
