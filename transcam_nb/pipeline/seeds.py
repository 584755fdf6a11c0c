"""The pipeline over several seeds, and the committed table of them.

One command runs the whole pipeline once per seed and writes one results file::

    python -m transcam_nb seeds --profile tiny --seeds 0,1,2 --pseudo-limit 200 --val-limit 200 \\
        --out runs/seeds

(``--results`` defaults to :func:`committed_table`'s file, ``transcam_nb/results/seeds-<profile>.json``,
shipped with the package so that the book finds it wherever it is installed.)

Each run is an ordinary, resumable pipeline run (``OUT/seed<S>-<key>``), so an interrupted
command continues where it stopped, and the file is rewritten after every run. Every row
carries its **run key**: the hash of the profile (with its seed) and the pipeline settings,
the same hash that names the book's run folder (:func:`~transcam_nb.pipeline.default_out_dir`).
By default the command also runs seed 0 at the profile's own pipeline settings, which is
what chapter 6 computes; the book then calls :func:`check_seed_row` with the summary it just
computed. A results file made with other settings stops the build with a message that names
the command to run again; so do numbers that drifted, on the kind of machine that wrote the
file (:func:`machine_id`). Elsewhere the differences are shown, since fp32 kernels of
another CPU round differently and a 600-step training carries that into the maps.

A row holds the summary's numbers in percent (:data:`SEED_COLUMNS`): the pseudo labels at
the fixed τ (``cam``, ``transcam``), at the τ picked on the ground truth (``cam_best``,
``transcam_best``), after the random walk (``random_walk``, ``random_walk_crf``), and
DeepLab on the validation images (``deeplab_val``).
"""
from __future__ import annotations

import datetime
import os
import shlex
from pathlib import Path
from typing import Callable, Iterable

from ..artifacts import read_json, write_json
from ..config import PipelineConfig, Profile, get_profile
from ..errors import InputError
from .context import pipeline_config, run_key

__all__ = ["SEED_COLUMNS", "run_key", "seed_row", "run_seeds", "committed_table", "read_seed_table", "seed_frame",
           "machine_id", "check_seed_row", "check_row", "check_summary", "stats_frame", "read_results",
           "ROW_TOLERANCE"]

#: where the committed results files live (package data)
RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"

#: the columns of a seed row: key -> label
SEED_COLUMNS = {
    "cam": "CAM (τ fixed)",
    "transcam": "TransCAM (τ fixed)",
    "cam_best": "CAM (best τ)",
    "transcam_best": "TransCAM (best τ)",
    "random_walk": "random walk",
    "random_walk_crf": "random walk + CRF",
    "deeplab_val": "DeepLab (val)",
}
#: the largest difference (mIoU points) :func:`check_seed_row` accepts on the kind of machine that
#: wrote the file (where a single-threaded CPU run repeats to the last digit; measured: two 600-step
#: trainings of the book's classifier gave identical weights); a changed setting changes the run key
#: and is refused on any machine
ROW_TOLERANCE = 0.5


def seed_row(summary: dict) -> dict:
    """The :data:`SEED_COLUMNS` of a pipeline ``summary.json`` (percent, rounded to 0.01)."""
    row = {k: summary[k] for k in ("cam", "transcam", "random_walk", "random_walk_crf", "deeplab_val")
           if summary.get(k) is not None}
    det = summary.get("details", {})
    for name in ("cam", "transcam"):
        if name in det and det[name].get("best_miou") is not None:
            row[f"{name}_best"] = det[name]["best_miou"]
    return {k: round(float(row[k]), 2) for k in SEED_COLUMNS if k in row}


def _settings(config: PipelineConfig) -> dict:
    return {"pseudo_limit": config.pseudo_limit, "val_limit": config.val_limit}


def run_seeds(profile: Profile | str, seeds: Iterable[int], out_root: str | os.PathLike,
              results: str | os.PathLike, *, config: PipelineConfig | None = None, check_row: bool = True,
              progress: bool = True, command: str | None = None) -> dict:
    """Run the pipeline of ``profile`` once per seed (``config``: the pipeline settings, default
    the profile's) into ``out_root/seed<S>-<key>``; with ``check_row`` also seed 0 at the
    profile's own settings (the book's run). Rewrites ``results`` after every run; returns it."""
    from .runner import run_pipeline

    base = profile if isinstance(profile, Profile) else get_profile(profile)
    cfg = config or pipeline_config(base)
    jobs = [(int(s), cfg, "table") for s in seeds]
    book_cfg = pipeline_config(base)
    if check_row and not any(s == 0 and c == book_cfg for s, c, _ in jobs):
        jobs.append((0, book_cfg, "book"))
    table = read_seed_table(results) if Path(results).is_file() else None
    runs = {r["key"]: r for r in (table or {}).get("runs", [])}
    for seed, c, role in jobs:
        prof = base.replace(seed=seed)
        key = run_key(prof, c)
        summary = run_pipeline(prof, Path(out_root) / f"seed{seed}-{key}", config=c, progress=progress)
        runs[key] = {"seed": seed, "role": role, "key": key, "settings": _settings(c), "row": seed_row(summary),
                     "complete": all(v in ("ran", "skipped") for v in summary["details"]["status"].values())}
        table = {"profile": base.name, "command": command, "machine": machine_id(),
                 "written": datetime.datetime.now().isoformat(timespec="seconds"),
                 "settings": _settings(cfg), "seeds": [s for s, _, r in jobs if r == "table"],
                 "runs": sorted(runs.values(), key=lambda r: (r["role"] != "table", r["seed"]))}
        write_json(results, table)
    return table


def committed_table(profile: Profile | str) -> Path:
    """The committed results file of a profile (it may not exist: only the tiny profile ships one)."""
    name = profile.name if isinstance(profile, Profile) else str(profile)
    return RESULTS_DIR / f"seeds-{name}.json"


def read_seed_table(path: str | os.PathLike) -> dict:
    """A results file written by :func:`run_seeds` (``InputError`` naming it when it is not one)."""
    return read_results(path, "seeds")


def read_results(path: str | os.PathLike, what: str) -> dict:
    """A committed results file (a dict with a list of ``runs``) of the command ``what``
    (``seeds``, ``variant-seeds``); ``InputError`` naming the file when it is not one."""
    t = read_json(path)
    if not isinstance(t, dict) or not isinstance(t.get("runs"), list):
        raise InputError(f"{Path(path).name}: not a {what} results file (written by `python -m transcam_nb {what}`)")
    return t


def seed_frame(table: dict):
    """The table's runs (role ``"table"``) as a DataFrame: one row per seed, then the mean and
    the spread (sample standard deviation) over the seeds."""
    rows = {f"seed {r['seed']}": r["row"] for r in table["runs"] if r["role"] == "table"}
    df = stats_frame(rows, list(SEED_COLUMNS))
    return df.rename(columns=SEED_COLUMNS)


def stats_frame(rows: dict, columns: Iterable | None = None):
    """``rows`` (label -> {column: value}, one per seed) as a DataFrame in that order, the
    ``columns`` present (default: all, in first-seen order), then two rows: ``"mean"`` and
    ``"spread (std)"`` (the sample standard deviation over the seeds, ``ddof=1``)."""
    import pandas as pd

    df = pd.DataFrame.from_dict(rows, orient="index")
    if columns is not None:
        df = df[[k for k in columns if k in df.columns]]
    stats = pd.DataFrame([df.mean(), df.std(ddof=1)], index=["mean", "spread (std)"])
    return pd.concat([df, stats])


def machine_id() -> dict:
    """What decides whether a CPU run repeats another to the last digit: the CPU model, its
    vector units and the PyTorch build (fp32 kernels round differently on other SIMD widths,
    and 600 training steps carry such differences into the maps)."""
    import platform

    import torch

    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == (platform.processor() or platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    simd = sorted(flags & {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    return {"cpu": cpu, "simd": simd, "torch": torch.__version__}


def check_seed_row(table: dict | str | os.PathLike, summary: dict, profile: Profile,
                   config: PipelineConfig | None = None, tolerance: float = ROW_TOLERANCE) -> dict:
    """Check that the results file holds the run the caller just computed (``summary`` of
    ``profile`` with ``config``, default the profile's pipeline settings).

    The settings must match (the run key) everywhere: otherwise ``AssertionError`` naming the
    command to run again. The numbers must match within ``tolerance`` when this machine is the
    kind that wrote the file (:func:`machine_id`: same CPU, vector units and PyTorch build,
    where a single-threaded run repeats to the last digit); on another kind of machine they
    are compared and reported, not asserted. Returns ``{"pairs": {column: (file, computed)},
    "max_diff": points, "same_machine": bool}``."""
    t = read_seed_table(table) if not isinstance(table, dict) else table
    key = run_key(profile, config or pipeline_config(profile))
    return check_row(t, key, seed_row(summary), what="seeds", tolerance=tolerance)


def check_row(table: dict, key: str, mine: dict, *, what: str, flatten: Callable[[dict], dict] | None = None,
              tolerance: float = ROW_TOLERANCE) -> dict:
    """The check of :func:`check_seed_row`, for any committed results file (``what``: the command
    that writes it): the run with ``key`` must exist (everywhere), and its row (through
    ``flatten``) must hold every column of ``mine`` within ``tolerance`` when this machine is the
    kind that wrote the file (:func:`machine_id`); elsewhere the differences are returned only."""
    hint = f"run `{table.get('command') or 'python -m transcam_nb ' + what}` again and commit its file"
    match = [r for r in table["runs"] if r["key"] == key]
    assert match, f"the {what} results file holds no run with this build's settings (key {key}): {hint}"
    theirs = flatten(match[0]["row"]) if flatten else match[0]["row"]
    pairs = {k: (theirs.get(k), v) for k, v in mine.items()}
    assert all(v[0] is not None for v in pairs.values()), f"the {what} results file lacks numbers: {hint}"
    diffs = {k: abs(a - b) for k, (a, b) in pairs.items()}
    same = table.get("machine") == machine_id()
    bad = {k: pairs[k] for k, d in diffs.items() if d > tolerance}
    assert not (same and bad), f"the {what} results file differs from this build ({bad}): {hint}"
    return {"pairs": pairs, "max_diff": max(diffs.values(), default=0.0), "same_machine": same,
            "tolerance": tolerance}


def check_summary(checked: dict, seed: int) -> str:
    """One line on the outcome of :func:`check_row` for the book: asserted on the kind of machine
    that wrote the file, only compared elsewhere."""
    worst, n = checked["max_diff"], len(checked["pairs"])
    if checked["same_machine"]:
        return (f"seed {seed} of this build: the committed row on {n} numbers (largest difference "
                f"{worst:.2f} points, asserted ≤ {checked['tolerance']:g})")
    return (f"seed {seed} of this build, on another kind of CPU than the file's: settings equal, "
            f"{n} numbers differ by up to {worst:.2f} points (fp32 kernels round differently; shown, not asserted)")


def command_line(argv: Iterable[str]) -> str:
    """The command that wrote a results file, as one shell line (for the file's ``command``)."""
    return "python -m transcam_nb " + " ".join(shlex.quote(a) for a in argv)
