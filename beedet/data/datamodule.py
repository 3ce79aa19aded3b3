"""The Lightning data module: label sources -> checks -> subset and split -> datasets -> loaders.

Labels are read and checked once, in ``load_labels()``, before the network is built: the class
map decides the size of the classification head, and bad records must be reported (or, in strict
mode, stop the run) before any training time is spent.

Images that only fail to decode later, in the datasets (possible with ``verify_images=false``), are
replaced sample by sample (``beedet.data.dataset``) and added to :attr:`BeeDataModule.reports` as
problems of action :data:`REPLACED_SAMPLE` when fit or validate ends (``teardown``). A
``data_report.md`` already in the trainer's ``default_root_dir`` (train.py writes one there before
fitting) is then written again, so the run's report counts them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import albumentations as A
import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from beedet.data.checks import check_records
from beedet.data.data_report import DataReport
from beedet.data.dataset import DetectionDataset, collate_detection
from beedet.data.images import DEFAULT_MAX_PIXELS, ImageError, verify_image
from beedet.data.records import DataError, ImageRecord, LabelSet, Problem
from beedet.data.repeat_factor import (
    RepeatFactorSampler,
    RepeatFactors,
    combined_repeat_factors,
    epoch_length,
    group_repeat_factors,
    repeat_factors,
)
from beedet.data.splits import compile_group_pattern, group_keys, leaked_val_images, subset, train_val_split

log = logging.getLogger(__name__)


class LabelSource(Protocol):
    """Anything that reads labelled images: see ``beedet.data.sources``."""

    @property
    def name(self) -> str: ...

    def read(self) -> LabelSet: ...


# data.val_subset: every val image, or only those sharing no data.group_by group with training images.
VAL_SUBSETS = ("all", "unseen")
# Problem.action of an image that failed to decode in a dataset and was replaced by another sample.
REPLACED_SAMPLE = "replaced sample"
# What train.py writes before fitting, and teardown() brings up to date.
DATA_REPORT_NAME = "data_report.md"


class BeeDataModule(pl.LightningDataModule):
    """Training and validation data for a bee detector.

    Args:
        train: where the training labels come from.
        val: where the validation labels come from; ``None`` splits ``val_fraction`` off ``train``.
        train_transform: the albumentations pipeline applied on the fly to each training sample.
            Validation images get no transform: the network resizes them and returns boxes in
            the stored image's pixels, so metrics are in the user's own coordinates.
        root: the dataset folder (for reports; sources carry their own paths).
        subset_fraction: keep only this random fraction of the training images (seeded).
        val_fraction: the share of images split off for validation when ``val`` is None.
        seed: seeds the subset, the split and the order of training samples; each sample's
            augmentation is seeded from it, the epoch and the training seed (torch's, set by
            ``seed_everything``) together.
        group_by: a regex on image file names whose match (named group ``group``, else group 1,
            else the whole match) keys groups of related images, e.g. frames of one video; the
            split keeps each group on one side, and with a ``val`` source the val images sharing
            a group with training images are counted (logged, and in the val report). ``None``:
            every image on its own. See ``beedet.data.splits``.
        strict: stop on any bad record instead of skipping and counting it (also an image that
            fails to decode while training: it is not replaced by another sample).
        verify_images: decode every image once up front so corrupt files are reported early.
            Without it, one that fails to decode while training is replaced by another sample
            and counted (module docstring).
        repeat_factor_threshold: rare-class sampling: with a threshold t, each training epoch shows
            images holding a class found in fewer than a fraction t of the images more often
            (LVIS repeat-factor sampling, ``beedet.data.repeat_factor``, seeded by ``seed`` and the
            epoch). ``None``: every image once per epoch, plainly shuffled.
        group_repeat_threshold: scene-aware sampling (needs ``group_by``): with a threshold t, images
            of groups (videos, cameras, lone photos) holding fewer than a fraction t of the training
            images are shown more often, r = max(1, sqrt(t / f(group)))
            (``beedet.data.repeat_factor.group_repeat_factors``); with ``repeat_factor_threshold``
            too, each image takes the larger factor. ``None``: off.
        reduced_decode: training only: decode JPEGs at the smallest DCT-scaled size the
            augmentation's first resize needs (``beedet.data.dataset``; pixels within the tolerance
            of ``tests/test_fast_decode.py``, boxes and random draws unchanged). Validation always
            decodes at full size.
        cache_bytes: training only: keep up to this many bytes of decoded (never augmented) frames
            in RAM, per DataLoader worker process (``beedet.data.dataset.DecodedFrameCache``).
        num_classes: the number of classes the detector predicts, when it must be more than the
            data names (the built-in detector's ``num_classes``): the extra ids get ``class_<i>``
            names and no boxes. Fewer than the data's classes is a DataError. None: the data's.
        val_subset: ``"all"``: every val image; ``"unseen"``: only the val images that share no
            ``group_by`` group (video, camera, photo) with a training image, the honest measure of
            how a detector does on footage it has never seen (honeybee: 33 of the 173 val images).
        allow_outside_root: not used here: the sources take it (``conf/data`` interpolates
            ``data.allow_outside_root`` into each); kept to log a warning when it is on, since image
            paths in the label files may then name any file on the machine (``beedet.data.roots``).
        max_pixels: refuse images with more pixels, by name, when labels are checked, and never
            decode them (``beedet.data.images.DEFAULT_MAX_PIXELS``); None: only Pillow's own limit.
        prefetch_factor: batches each DataLoader worker keeps ready (torch's default, 2). Workers
            are persistent and start with one OpenCV and one torch thread each (:func:`init_worker`).
        pin_memory: page-locked batches, which copy to a GPU asynchronously. None: when the
            trainer runs on CUDA.

    Training batches hold uint8 (3, H, W) images, a quarter of float32's bytes to pin and copy;
    ``DetectionModule`` turns them into float in [0, 1] on the device
    (``beedet.data.dataset.images_to_float``). Validation batches hold float32 images in [0, 1].
    """

    def __init__(
        self,
        train: LabelSource,
        val: LabelSource | None = None,
        train_transform: A.Compose | None = None,
        root: str | None = None,
        subset_fraction: float = 1.0,
        val_fraction: float = 0.2,
        seed: int = 0,
        group_by: str | None = None,
        strict: bool = False,
        verify_images: bool = True,
        batch_size: int = 16,
        num_workers: int = 2,
        repeat_factor_threshold: float | None = None,
        group_repeat_threshold: float | None = None,
        reduced_decode: bool = False,
        cache_bytes: int = 0,
        num_classes: int | None = None,
        val_subset: str = "all",
        allow_outside_root: bool = False,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        prefetch_factor: int = 2,
        pin_memory: bool | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < subset_fraction <= 1.0:
            raise ValueError(f"data.subset_fraction must be in (0, 1], got {subset_fraction}")
        self.train_source = train
        self.val_source = val
        self.train_transform = train_transform
        self.root = root
        self.subset_fraction = subset_fraction
        self.val_fraction = val_fraction
        self.seed = seed
        if group_by is not None:
            compile_group_pattern(group_by)  # a bad regex fails here, not after reading every label
        self.group_by = group_by
        self.strict = strict
        self.verify_images = verify_images
        self.batch_size = batch_size
        self.num_workers = num_workers
        if prefetch_factor < 1:
            raise ValueError(f"data.prefetch_factor must be >= 1 (batches each worker keeps ready), got {prefetch_factor}")
        self.prefetch_factor = prefetch_factor
        self.pin_memory = pin_memory
        if repeat_factor_threshold is not None and not repeat_factor_threshold > 0:
            raise ValueError(f"data.repeat_factor_threshold must be > 0 or null, got {repeat_factor_threshold}")
        self.repeat_factor_threshold = repeat_factor_threshold
        if group_repeat_threshold is not None and not group_repeat_threshold > 0:
            raise ValueError(f"data.group_repeat_threshold must be > 0 or null, got {group_repeat_threshold}")
        if group_repeat_threshold is not None and group_by is None:
            raise ValueError("data.group_repeat_threshold needs data.group_by: groups are what it balances")
        self.group_repeat_threshold = group_repeat_threshold
        self._group_factors: np.ndarray | None = None  # computed with the first training loader
        self.repeat_factors: RepeatFactors | None = None  # computed with the first training loader
        if cache_bytes < 0:
            raise ValueError(f"data.cache_bytes must be >= 0, got {cache_bytes}")
        self.reduced_decode = reduced_decode
        self.cache_bytes = int(cache_bytes)
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"data.num_classes must be >= 1 or null, got {num_classes}")
        self.num_classes_wanted = num_classes
        if val_subset not in VAL_SUBSETS:
            raise ValueError(f"data.val_subset must be one of {VAL_SUBSETS}, got {val_subset!r}")
        if val_subset == "unseen" and group_by is None:
            raise ValueError("data.val_subset=unseen needs data.group_by: it finds the val images that share a group with train")
        self.val_subset = val_subset
        self.allow_outside_root = allow_outside_root
        if max_pixels is not None and max_pixels < 1:
            raise ValueError(f"data.max_pixels must be >= 1 or null, got {max_pixels}")
        self.max_pixels = max_pixels

        self.class_names: list[str] = []
        self.train_records: list[ImageRecord] = []
        self.val_records: list[ImageRecord] = []
        self.reports: dict[str, DataReport] = {}
        # (split, image path) of each image already noted as REPLACED_SAMPLE in self.reports.
        self._noted_unreadable: set[tuple[str, str]] = set()

    # ---- labels -------------------------------------------------------------------------------
    def load_labels(self) -> None:
        """Read, check, subset and split the labels. Idempotent; call before building the network."""
        if self.class_names:
            return
        if self.allow_outside_root:
            log.warning("data.allow_outside_root=true: image paths in the label files may name any file on this machine")
        train_set = self._read_checked(self.train_source)
        if self.val_source is not None:
            val_set = self._read_checked(self.val_source)
            names = _shared_class_names(train_set.class_names, val_set.class_names)
            if names is not None:
                train_set.class_names = val_set.class_names = names
            else:
                # A class map that differs between splits would silently relabel classes.
                raise DataError(
                    f"class names differ between train ({self.train_source.name}: {train_set.class_names}) "
                    f"and val ({self.val_source.name}: {val_set.class_names})"
                )
            train_records, val_records = train_set.records, val_set.records
            val_problems = val_set.problems
        else:
            train_records, val_records = train_val_split(train_set.records, self.val_fraction, self.seed,
                                                         group_by=self.group_by)
            val_problems = []

        if self.subset_fraction < 1.0:
            kept = subset(train_records, self.subset_fraction, self.seed)
            log.info("data.subset_fraction=%s keeps %d of %d training images", self.subset_fraction, len(kept), len(train_records))
            train_records = kept
        if not train_records:
            raise DataError(f"no usable training images in {self.train_source.name}")
        if not val_records:
            raise DataError(f"no usable validation images (train: {self.train_source.name})")

        # A given split is used as it is, but val images from the same video (or photo) as a
        # training image make val scores optimistic: count them, or with val_subset=unseen drop them.
        measured = self.val_source is not None and self.group_by is not None
        leaked = leaked_val_images(train_records, val_records, self.group_by) if measured else []
        if self.val_subset == "unseen" and measured:
            shared = {id(r) for r in leaked}
            val_records = [r for r in val_records if id(r) not in shared]
            log.info("data.val_subset=unseen: %d val images share no group with train (%d dropped)", len(val_records), len(leaked))
            if not val_records:
                raise DataError(f"data.val_subset=unseen leaves no validation images (train: {self.train_source.name})")
            leaked = []

        self.class_names = _padded_class_names(train_set.class_names, self.num_classes_wanted, self.train_source.name)
        self.train_records, self.val_records = train_records, val_records
        val_name = "val (unseen groups)" if self.val_subset == "unseen" and measured else "val"
        self.reports = {
            "train": DataReport.from_label_set(LabelSet(train_records, self.class_names, train_set.problems), name="train"),
            "val": DataReport.from_label_set(LabelSet(val_records, self.class_names, val_problems), name=val_name),
        }
        if measured:
            self.reports["val"].shared_group_images = len(leaked)
            if leaked:
                log.warning("%d of %d val images share a data.group_by group with training images (e.g. %s); "
                            "val scores are optimistic", len(leaked), len(val_records),
                            ", ".join(r.image_path.name for r in leaked[:3]))

    def _read_checked(self, source: LabelSource) -> LabelSet:
        label_set = check_records(source.read(), verify_images=self.verify_images, max_pixels=self.max_pixels)
        for problem in label_set.problems:
            log.warning("%s", problem)
        label_set.raise_if_strict(self.strict)
        return label_set

    @property
    def num_classes(self) -> int:
        self.load_labels()
        return len(self.class_names)

    # ---- Lightning hooks ----------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        self.load_labels()
        # Training images travel as uint8 and become float on the device (beedet.data.dataset;
        # DetectionModule.training_step); validation images stay float32, as every
        # consumer of val_dataset (evaluate.py, the callbacks) reads them.
        self.train_dataset = DetectionDataset(self.train_records, self.train_transform,
                                              reduced_decode=self.reduced_decode, cache_bytes=self.cache_bytes,
                                              max_pixels=self.max_pixels, replace_unreadable=not self.strict,
                                              uint8_images=True)
        self.val_dataset = DetectionDataset(self.val_records, None, max_pixels=self.max_pixels,
                                            replace_unreadable=not self.strict)

    def teardown(self, stage: str) -> None:
        """At the end of fit / validate: report the images that failed to decode (module docstring)."""
        if self.note_unreadable() and self.trainer is not None and self.trainer.is_global_zero:
            report_path = Path(self.trainer.default_root_dir) / DATA_REPORT_NAME
            if report_path.is_file():
                report_path.write_text(self.reports_markdown())

    def note_unreadable(self) -> int:
        """Add the images the datasets failed to decode since the last call (in this process and its
        DataLoader workers) to :attr:`reports` as :data:`REPLACED_SAMPLE` problems; returns how many.

        Under DDP each rank notes what its own workers met (rank 0's reach the files)."""
        added = 0
        for split, dataset in (("train", getattr(self, "train_dataset", None)), ("val", getattr(self, "val_dataset", None))):
            if dataset is None or split not in self.reports:
                continue
            for record in dataset.unreadable_records():
                key = (split, str(record.image_path))
                if key in self._noted_unreadable:
                    continue
                self._noted_unreadable.add(key)
                self.reports[split].problems.append(Problem(
                    record.source or str(record.image_path),
                    f"image {record.image_path}: {self._decode_failure(record)}; another image was used in its place",
                    REPLACED_SAMPLE,
                ))
                added += 1
        return added

    def _decode_failure(self, record: ImageRecord) -> str:
        # The worker that failed logged the reason; decoding once more here recovers it for the report.
        try:
            verify_image(record.image_path, max_pixels=self.max_pixels)
        except ImageError as err:
            return err.reason
        return "failed to decode while training (it decodes now: was the file changed?)"

    def reports_markdown(self) -> str:
        """Every data report as Markdown, train first: the contents of ``data_report.md``."""
        return "\n\n".join(report.to_markdown() for report in self.reports.values())

    def train_dataloader(self) -> DataLoader:
        # Every epoch's order and every sample's augmentation come from (seed, epoch, training
        # seed), never from a stream that runs on from epoch to epoch: a run resumed from its
        # end-of-epoch checkpoint trains exactly as the uninterrupted run (beedet.data.repeat_factor).
        # The training seed is torch's, which train.py sets through seed_everything.
        factors = self._image_repeat_factors()
        sampler = RepeatFactorSampler(factors, seed=self.seed, augment_seed=torch.initial_seed())
        # Under DDP each rank sees only its share of the samples: drop a ragged last batch only
        # when a rank still has a full one, or a small dataset would train zero steps. Lightning
        # shards the sampler's list per rank (DistributedSamplerWrapper) and passes it each
        # epoch's number through set_epoch.
        world_size = self.trainer.world_size if self.trainer is not None else 1
        per_rank = -(-len(sampler) // world_size)
        return DataLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_detection,
            drop_last=per_rank > self.batch_size,
            **self._loader_options(),
        )

    def _image_repeat_factors(self) -> np.ndarray:
        """Each training image's repeat factor: by class, by group, the larger of both, or 1."""
        by_class = self._repeat_factors().image_factor if self.repeat_factor_threshold is not None else None
        if self.group_repeat_threshold is not None and self._group_factors is None:
            keys = group_keys(self.train_records, self.group_by)
            self._group_factors = group_repeat_factors(keys, self.group_repeat_threshold)
            log.info("data.group_repeat_threshold=%g: %d groups of %d training images; %d images repeated "
                     "(up to %.2fx), %d samples per epoch from group factors alone", self.group_repeat_threshold,
                     len(set(keys)), len(keys), int((self._group_factors > 1).sum()), float(self._group_factors.max()),
                     epoch_length(self._group_factors))
        if by_class is None and self._group_factors is None:
            return np.ones(len(self.train_dataset))
        return combined_repeat_factors(by_class, self._group_factors)

    def _repeat_factors(self) -> RepeatFactors:
        """Repeat factors of the training records; logs the per-class numbers once."""
        if self.repeat_factors is None:
            self.repeat_factors = repeat_factors(
                [r.labels for r in self.train_records], len(self.class_names), self.repeat_factor_threshold
            )
            log.info("%s", self.repeat_factors.table(self.class_names))
        return self.repeat_factors

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_detection,
            **self._loader_options(),
        )

    def _loader_options(self) -> dict:
        """The DataLoader settings both loaders share: how workers run and hand batches over."""
        pin = self.pin_memory
        if pin is None:
            # Page-locked batches copy to a GPU asynchronously; on a CPU run they only cost a copy.
            device = getattr(getattr(self.trainer, "strategy", None), "root_device", None)
            pin = device is not None and device.type == "cuda"
        options: dict = {"pin_memory": bool(pin)}
        if self.num_workers > 0:
            # Forked workers inherit OpenCV's thread count from this process, and setting it in a
            # forked worker can deadlock once this process has used OpenCV's thread pool (an
            # in-process augmentation did it in tests/test_dataset.py): set it here, before the
            # fork. This process only batches and trains, which OpenCV threads do not speed up.
            cv2.setNumThreads(1)
            # Workers outlive the epoch: respawning them costs seconds per epoch on small data, and
            # repeat-factor sampling makes epochs short (a few steps on a GPU).
            options.update(persistent_workers=True, prefetch_factor=self.prefetch_factor, worker_init_fn=init_worker)
        return options


def init_worker(worker_id: int) -> None:
    """Start of a DataLoader worker: one OpenCV thread and one torch intra-op thread in it.

    Why: the workers are the parallelism. torch's worker loop already sets one torch thread, but
    OpenCV (every albumentations resize, warp and colour change) starts as many threads as the
    machine has cores in every worker: 14 workers on a 16-core GPU machine would run 224 OpenCV
    threads on 16 cores (the likely cause of the 20 images/s per worker measured there, against 84
    per worker on a 2-core CPU). Forked workers already have one OpenCV thread from the loader's
    process (see ``BeeDataModule._loader_options``); spawned ones start fresh and set it here."""
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _shared_class_names(train: list[str], val: list[str]) -> list[str] | None:
    """The class names both splits use, or None when they disagree. Formats without names (RecordIO,
    YOLO without data.yaml) number their classes ``class_<i>``; beside a split that names them,
    the names win, as long as every numbered id has a name."""
    if train == val:
        return list(train)
    for unnamed, named in ((train, val), (val, train)):
        if unnamed == [f"class_{i}" for i in range(len(unnamed))] and len(unnamed) <= len(named):
            return list(named)
    return None


def _padded_class_names(names: list[str], num_classes: int | None, source: str) -> list[str]:
    if num_classes is None:
        return list(names)
    if num_classes < len(names):
        raise DataError(f"data.num_classes={num_classes}, but {source} has {len(names)} classes ({', '.join(names)}); "
                        f"num_classes must be at least the number of classes in the data")
    return list(names) + [f"class_{i}" for i in range(len(names), num_classes)]
