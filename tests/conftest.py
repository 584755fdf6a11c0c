"""Shared pytest set-up: one torch thread (this machine has 2 cores), the ../shared data."""
import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
# The team's real test data: ../shared next to the checkout (CI lays it beside the clone).
SHARED = Path(os.environ.get("TRANSCAM_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """Path under ../shared, or skip the test with a clear reason when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"test data {p} is absent (set TRANSCAM_SHARED to the team's shared/ folder)")
    return p


@pytest.fixture
def shared():
    return shared_path
