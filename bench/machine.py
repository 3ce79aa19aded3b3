"""The machine a benchmark ran on, and the versions that produced its numbers.

Shared by every script in bench/ (run as ``python bench/<name>.py``, so this imports as ``machine``).
"""

from __future__ import annotations

import json
import os
import platform
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def describe_machine() -> dict[str, Any]:
    """Device name, a short slug for result file names (``cpu-2core``, ``nvidia-h100-80gb-hbm3``),
    and the library versions. Imports torch lazily: this module has no import-time cost."""
    import pytorch_lightning
    import torch
    import torchvision

    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
        slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    else:
        device = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"
        slug = f"cpu-{os.cpu_count()}core"
    return {
        "device": device,
        "slug": slug,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pytorch_lightning": pytorch_lightning.__version__,
        "platform": platform.platform(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def write_results(name: str, device_slug: str, payload: dict[str, Any], out_dir: Path = RESULTS) -> Path:
    """Write ``<out_dir>/<name>-<device_slug>.json`` (pretty JSON) and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}-{device_slug}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
