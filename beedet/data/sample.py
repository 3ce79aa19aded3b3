"""Draw the images to label: a seeded random fraction of a folder of frames, ready for a labeling tool.

    python -m beedet.data.sample frames/ --out to_label/ --fraction 0.02 --max-images 500 --seed 7
    python -m beedet.data.sample frames/ --out to_label/ --group-by '^(?P<group>.+?)_\\d+\\.jpg$'
    python -m beedet.data.sample frames/ --out to_label/ --s3-prefix s3://my-bucket/frames/

The course labelled "a random 2 %" of its images. Writes into ``--out``:

* ``sample.txt``: the drawn images, paths relative to the frames folder, sorted;
* ``input.manifest``: a Ground Truth input manifest (``{"source-ref": ...}`` per line) for
  existing Ground Truth customers; source-refs are ``--s3-prefix`` + the relative path (Ground
  Truth reads S3 only; without a prefix the local absolute paths are written, for other tools);
* ``label_studio_tasks.json``: a Label Studio import file, each image at
  ``--label-studio-root`` + its relative path (like ``--s3-prefix``: e.g. the URL the frames
  folder is served at). By default ``/data/local-files/?d=`` + the path relative to the frames
  folder's *parent* (``?d=frames/0001.jpg``): Label Studio's local-files storage with
  ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` set to that parent;
* ``label_studio_config.xml``: the labeling config, rectangle labels named after the classes.

The draw is deterministic for a seed: images are sorted by path and shuffled by a seeded NumPy
generator, so neither the file system's order nor Python's hash seed changes it. With
``--group-by`` (a regex like ``data.group_by``, named group ``group``) the same budget goes to
distinct groups: groups are drawn first, then one frame in each, so near-duplicate frames of one
video do not eat the labelling budget (with fewer groups than the budget, one frame per group).
Read the finished labels back with ``data=files`` (Label Studio's JSON export, or Pascal VOC from
CVAT / LabelImg) or check them with ``python -m beedet.data.inspect``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from beedet.data.images import IMAGE_SUFFIXES, find_images
from beedet.data.label_studio import LOCAL_FILES_PREFIX, labeling_config_xml, write_tasks
from beedet.data.records import DataError
from beedet.data.splits import compile_group_pattern, group_key

# The honeybee data's classes, in its class-map order: the default labeling config.
DEFAULT_CLASSES = ("bee", "drone", "pollenbee", "queen")


def draw_sample(image_paths: Sequence[Path], *, fraction: float, max_images: int | None, seed: int,
                group_by: str | None = None) -> list[Path]:
    """``round(fraction * n)`` of the ``n`` images (at least one), at most ``max_images``, drawn
    with ``seed``. With ``group_by`` the same budget is spent on distinct groups: that many groups
    (all of them, when there are fewer) are drawn and one image from each. Returned sorted."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    paths = sorted(Path(p) for p in image_paths)
    if not paths:
        raise ValueError("no images to draw from")
    rng = np.random.default_rng(seed)
    if group_by is None:
        units = [[p] for p in paths]
    else:
        pattern = compile_group_pattern(group_by)
        groups: dict[str, list[Path]] = {}
        for p in paths:
            # A name the pattern does not match is a group of its own.
            groups.setdefault(group_key(p.name, pattern) or f"\0{p}", []).append(p)
        units = [groups[key] for key in sorted(groups)]
    count = max(1, round(fraction * len(paths)))
    if max_images is not None:
        count = min(count, max_images)
    count = min(count, len(units))
    chosen = rng.permutation(len(units))[:count]
    return sorted(units[i][int(rng.integers(len(units[i])))] for i in sorted(chosen))


def write_ground_truth_manifest(images: Sequence[Path], root: Path, path: Path, s3_prefix: str | None) -> None:
    """A Ground Truth input manifest: one ``{"source-ref": ...}`` line per image."""
    lines = []
    for image in images:
        rel = image.relative_to(root).as_posix()
        ref = s3_prefix.rstrip("/") + "/" + rel if s3_prefix else str(image.resolve())
        lines.append(json.dumps({"source-ref": ref}) + "\n")
    path.write_text("".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beedet.data.sample", description=__doc__.split("\n\n")[0])
    parser.add_argument("images", type=Path, help="folder of frames (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the four files into")
    parser.add_argument("--fraction", type=float, default=0.02, help="share of the images (or groups) to draw")
    parser.add_argument("--max-images", type=int, help="draw at most this many")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--group-by", help="regex on file names; its named group `group` keys frames of one video")
    classes = parser.add_mutually_exclusive_group()
    classes.add_argument("--classes", type=lambda s: [n.strip() for n in s.split(",") if n.strip()],
                         help=f"comma-separated class names for the labeling config (default: {','.join(DEFAULT_CLASSES)})")
    classes.add_argument("--classes-from", type=Path, help="take the class names from labelled data beedet reads")
    parser.add_argument("--s3-prefix", help="S3 prefix the frames folder is uploaded to (for Ground Truth)")
    parser.add_argument("--label-studio-root",
                        help="URL prefix the frames folder is served at, for the Label Studio tasks (default: "
                             f"{LOCAL_FILES_PREFIX}<frames folder name>/, Label Studio's local-files storage "
                             "rooted at the frames folder's parent)")
    args = parser.parse_args(argv)

    try:
        class_names = args.classes or (_class_names_of(args.classes_from) if args.classes_from else list(DEFAULT_CLASSES))
        if not args.images.is_dir():
            raise ValueError(f"{args.images}: not a folder")
        every = find_images(args.images)
        if not every:
            raise ValueError(f"{args.images}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in it or below")
        drawn = draw_sample(every, fraction=args.fraction, max_images=args.max_images, seed=args.seed,
                            group_by=args.group_by)
    except (ValueError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    root = args.images.resolve()
    drawn = [p.resolve() for p in drawn]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sample.txt").write_text("".join(p.relative_to(root).as_posix() + "\n" for p in drawn), encoding="utf-8")
    write_ground_truth_manifest(drawn, root, args.out / "input.manifest", args.s3_prefix)
    # Label Studio's local-files storage serves paths relative to its document root; with the
    # frames folder's parent as the root, the URLs keep the folder's name (frames/0001.jpg).
    ls_root = args.label_studio_root or f"{LOCAL_FILES_PREFIX}{root.name}/"
    if not ls_root.endswith(("/", "=")):  # a folder URL given without its slash
        ls_root += "/"
    write_tasks([ls_root + p.relative_to(root).as_posix() for p in drawn], args.out / "label_studio_tasks.json")
    (args.out / "label_studio_config.xml").write_text(labeling_config_xml(class_names), encoding="utf-8")

    groups = ""
    if args.group_by:
        pattern = compile_group_pattern(args.group_by)
        groups = f" in {len({group_key(p.name, pattern) or str(p) for p in every})} groups, one per group"
    print(f"drew {len(drawn)} of {len(every)} images{groups} (fraction {args.fraction}, seed {args.seed}"
          + (f", at most {args.max_images}" if args.max_images else "") + ")")
    for name in ("sample.txt", "input.manifest", "label_studio_tasks.json", "label_studio_config.xml"):
        print(f"  {args.out / name}")
    if not args.s3_prefix:
        print("  (input.manifest holds local paths: give --s3-prefix for a Ground Truth labeling job, which reads S3)")
    return 0


def _class_names_of(path: Path) -> list[str]:
    from beedet.data.sources import source_for_path

    return source_for_path(path).read().class_names


if __name__ == "__main__":
    raise SystemExit(main())
