"""Every chapter opens with the same two code cells; this script writes and checks them.

1. the parameters cell (tag ``parameters``): ``PROFILE = None``, which papermill or a reader
   may override;
2. the Setup cell: install ``transcam_nb`` from the repository where it is not importable
   (Colab), then ``profile = workflow.setup(PROFILE)``.

The repository URL is read from ``_config.yml``'s ``repository.url``, its one home.

    python scripts/setup_cells.py notebooks/*.ipynb          # check: exit 1 and name each bad chapter
    python scripts/setup_cells.py --fix notebooks/0[25]*.ipynb  # rewrite the two cells

``--fix`` keeps the chapter's own lines of an older Setup cell (its imports) in a new code
cell right after the Setup cell, and removes an old untagged ``PROFILE = ...`` line.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PARAMETERS = """\
# Parameters: the profile, "tiny" (CPU) or "paper" (GPU + VOC); None reads
# $TRANSCAM_PROFILE, else "tiny". papermill or you may set it here.
PROFILE = None"""

SETUP = """\
# Setup. Where transcam_nb is not installed (e.g. on Colab), install it from
# the repository first (book/how_to_run.md).
import importlib.util

if importlib.util.find_spec("transcam_nb") is None:
    REPO = "{url}"
    %pip install -q "transcam_nb @ git+{{REPO}}"

from transcam_nb import workflow

profile = workflow.setup(PROFILE)"""


def repository_url(config: Path = REPO / "_config.yml") -> str:
    """``repository.url`` from the book's _config.yml (a two-level YAML key; no YAML parser needed)."""
    m = re.search(r"^repository:\s*\n(?:[ \t]+.*\n)*?[ \t]+url:\s*(\S+)", config.read_text(), re.M)
    if not m:
        raise SystemExit(f"{config}: no repository.url")
    return m.group(1).strip("'\"")


def expected_cells(url: str | None = None) -> tuple[str, str]:
    """(parameters cell, Setup cell) source, as every chapter must begin."""
    return PARAMETERS, SETUP.format(url=url or repository_url())


def _source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _code_cells(nb) -> list[int]:
    return [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]


def problems(nb: dict, url: str | None = None) -> list[str]:
    """What is wrong with a chapter's first two code cells (empty list: nothing)."""
    params, setup = expected_cells(url)
    code = _code_cells(nb)
    if len(code) < 2:
        return ["fewer than two code cells"]
    out = []
    first, second = nb["cells"][code[0]], nb["cells"][code[1]]
    if _source(first).strip() != params:
        out.append("the first code cell is not the standard parameters cell")
    if "parameters" not in first.get("metadata", {}).get("tags", []):
        out.append("the first code cell is not tagged 'parameters'")
    if _source(second).strip() != setup:
        out.append("the second code cell is not the standard Setup cell")
    return out


def _lines(text: str) -> list[str]:
    return [ln + "\n" for ln in text.split("\n")[:-1]] + [text.split("\n")[-1]]


def _code_cell(text: str, tags=None) -> dict:
    meta = {"tags": list(tags)} if tags else {}
    return {"cell_type": "code", "execution_count": None, "id": uuid.uuid4().hex[:8], "metadata": meta,
            "outputs": [], "source": _lines(text)}


def fix(nb: dict, url: str | None = None) -> dict:
    """Make the chapter begin with the standard parameters and Setup cells (see module doc)."""
    params, setup = expected_cells(url)
    cells = nb["cells"]
    code = _code_cells(nb)
    # the old parameters cell (tagged), if any, and the old Setup cell (the first code cell after it)
    tagged = [i for i in code if "parameters" in cells[i].get("metadata", {}).get("tags", [])]
    p_idx = tagged[0] if tagged else None
    rest = [i for i in code if i != p_idx]
    s_idx = rest[0] if rest else None
    kept = []
    ours = {ln.strip() for ln in setup.split("\n")}  # any line of the standard cell (a re-run)
    if s_idx is not None:
        for ln in _source(cells[s_idx]).split("\n"):
            s = ln.strip()
            if s and s in ours:
                continue
            if (s.startswith("#") and ("Setup" in s or "pip install" in s or "install the package" in s)) \
                    or s.startswith("%pip") or s in ("import transcam_nb", "profile = workflow.setup(PROFILE)") \
                    or s.startswith("PROFILE =") or s == "import importlib.util" \
                    or s.startswith("if importlib.util.find_spec") or s == "from transcam_nb import workflow" \
                    or s.startswith("REPO = "):
                continue
            kept.append(ln)
    own = "\n".join(kept).strip("\n")
    new_params = _code_cell(params, tags=["parameters"])
    new_setup = _code_cell(setup)
    for new, old_idx in ((new_params, p_idx), (new_setup, s_idx)):  # keep the cell ids
        if old_idx is not None and "id" in cells[old_idx]:
            new["id"] = cells[old_idx]["id"]
    insert_at = p_idx if p_idx is not None else (s_idx if s_idx is not None else len(cells))
    drop = {i for i in (p_idx, s_idx) if i is not None}
    before = [c for i, c in enumerate(cells[:insert_at]) if i not in drop]
    after = [c for i, c in enumerate(cells[insert_at:], start=insert_at) if i not in drop]
    block = [new_params, new_setup] + ([_code_cell(own)] if own else [])
    nb["cells"] = before + block + after
    return nb


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--fix", action="store_true", help="rewrite the two cells instead of checking them")
    args = ap.parse_args(argv)
    url = repository_url()
    bad = 0
    for path in args.notebooks:
        nb = json.loads(path.read_text())
        if args.fix:
            if problems(nb, url):
                path.write_text(json.dumps(fix(nb, url), indent=1, ensure_ascii=False))
                print(f"{path}: rewritten")
            continue
        for p in problems(nb, url):
            print(f"{path}: {p}")
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
