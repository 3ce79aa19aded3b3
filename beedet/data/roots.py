"""Image paths named by label files, kept inside the folder their data lives in (its *data root*).

A label file comes from outside: a labeling vendor's manifest, a Label Studio export, a COCO file
downloaded with a data set. The image paths in it decide which files beedet opens, decodes, quotes
in error messages, copies (``convert --image-mode copy``) and links. An entry such as
``../../home/me/.ssh/id_rsa``, ``/etc/shadow`` or ``s3://bucket/../../../secret.jpg`` would make
beedet read a file that has nothing to do with the data set. So each reader checks every image path
against its data root (the manifest's ``local_root``, COCO's ``image_root``, the folder of a VOC,
Label Studio or built-in-detector export), and a path that leaves it is a
:class:`~beedet.data.records.Problem` like any other bad record: named, skipped and counted, or the
end of a strict run. ``data.allow_outside_root=true`` (``--allow-outside-root`` on the data CLIs)
lets such paths through, for users whose label files really do point elsewhere.

The check is **lexical**: the path is made absolute and ``.`` and ``..`` are collapsed
(:func:`os.path.normpath`) without touching the file system, and the collapsed path is what the
record keeps, so the file later opened is the file checked (``root/link/../x`` is ``root/x``, not
wherever ``link`` points). Nothing outside the root is even tested for existence, so problem
messages cannot tell which outside files exist. **Symlinks are not followed**: a symlink inside the
root was put there by whoever owns the data folder (beedet's own YOLO export links its images to
the originals), which is a decision about the data, not text from a label file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


class OutsideRoot(ValueError):
    """An image path from a label file leaves its data root; ``str()`` is the reason shown."""


def is_inside(path: Path | str, root: Path | str) -> bool:
    """Whether ``path``, made absolute with ``..`` collapsed, is ``root`` or lies under it."""
    absolute, top = os.path.abspath(path), os.path.abspath(root)
    return os.path.commonpath([absolute, top]) == top


def confined(path: Path | str, roots: Sequence[Path | str], *, named: str, allow_outside_root: bool) -> Path:
    """``path`` with ``.`` and ``..`` collapsed, when it lies inside one of ``roots``.

    ``named`` is the path as the label file wrote it, quoted in the message. Raises
    :class:`OutsideRoot` for a path outside every root, unless ``allow_outside_root``.
    """
    normal = Path(os.path.normpath(path))
    if allow_outside_root or any(is_inside(normal, root) for root in roots):
        return normal
    where = " or ".join(str(Path(os.path.abspath(root))) for root in dict.fromkeys(roots))
    raise OutsideRoot(f"image path {named!r} resolves to {os.path.abspath(normal)}, outside the data root {where}; "
                      f"set data.allow_outside_root=true (--allow-outside-root) if the label file is meant to "
                      f"point there")
