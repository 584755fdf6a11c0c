"""Shared pytest set-up: one torch thread (this machine has 2 cores), the test data.

Test data are looked up in the repository's own `tests/data/` first (the compact golden set,
the VOC sample, the COCO subset: see tests/data/README.md), and only then in the team's
`shared/` folder next to the checkout (`../shared`, or `TRANSCAM_SHARED=/path/to/shared`),
which holds the rest (the "spec" golden files). A test whose file is in neither skips and
names the file.
"""
import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
# Shipped with the repository: every clone has these.
DATA = REPO / "tests" / "data"
# The team's full test data: ../shared next to the checkout (CI lays it beside the clone).
SHARED = Path(os.environ.get("TRANSCAM_SHARED", REPO.parent / "shared"))


def _local(parts: tuple[str, ...]) -> Path | None:
    """Where `shared/<parts>` lives inside tests/data, if that part of shared/ was copied."""
    if parts[:2] == ("reference", "golden") and len(parts) > 2:
        return DATA.joinpath("golden", *parts[2:])
    if parts[:1] == ("reference",) and len(parts) == 2:
        return DATA / parts[1]
    if parts[:1] == ("data",) and len(parts) > 1:
        return DATA.joinpath(*parts[1:])
    return None


def shared_path(*parts: str) -> Path:
    """`shared/<parts>`: the copy in tests/data, else ../shared, else skip with a clear reason.

    Ask for files (or the data folders `data/<name>`), not for `reference/golden` itself:
    tests/data/golden holds only part of the golden set.
    """
    local = _local(parts)
    if local is not None and local.exists():
        return local
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(
            f"test data {'/'.join(parts)} is in neither tests/data nor {p} "
            "(set TRANSCAM_SHARED to the team's shared/ folder)"
        )
    return p


def golden_path(name: str) -> Path:
    """One file of the golden set (golden/README.md in shared/, tests/data/README.md)."""
    return shared_path("reference", "golden", name)


@pytest.fixture
def shared():
    return shared_path
