"""No Docker engine runs here, so keep the Dockerfiles honest: every path they copy exists."""

from __future__ import annotations

import re

import pytest

from conftest import REPO

DOCKERFILES = sorted((REPO / "docker").glob("*Dockerfile"))


def test_there_is_a_training_image():
    assert (REPO / "docker" / "train.Dockerfile") in DOCKERFILES


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copied_path_exists(dockerfile):
    copies = re.findall(r"^COPY\s+(.+)$", dockerfile.read_text(), flags=re.M)
    assert copies, f"{dockerfile} copies nothing"
    for line in copies:
        *sources, _dest = line.split()
        for source in sources:
            assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source} does not exist in the repo"
    entry = re.search(r'^ENTRYPOINT \["python", "([^"]+)"\]', dockerfile.read_text(), flags=re.M)
    assert entry and (REPO / entry.group(1)).is_file()
