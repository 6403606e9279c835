"""Shared test setup: the repository root and the shared CIFAR-10 archive."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_ARCHIVE = Path(
    os.environ.get("APPLIANCE_TEST_ARCHIVE", ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz")
)


@pytest.fixture(scope="session")
def shared_archive() -> Path:
    if not SHARED_ARCHIVE.exists():
        pytest.fail(
            f"{SHARED_ARCHIVE} not found: set APPLIANCE_TEST_ARCHIVE to the CIFAR-10 "
            "image-folder .tar.gz"
        )
    return SHARED_ARCHIVE
