"""The refinement variants on the evaluation split, per seed, and the committed table of them.

Two evaluation cores that the book calls through :mod:`transcam_nb.workflow` (which adds only
its progress default): :func:`evaluate_variants` (chapter 5's variants table: multi-scale CAMs
of several refinement variants in one pass per image, the τ sweep, the best τ and the fixed τ)
and :func:`learned_aggregation` (chapter 8's block × head weights,
:func:`transcam_nb.aggregation.fit_aggregation`, fitted on the training split's image labels).
Both are cached under the artifacts folder, keyed by the classifier's run folder and their
settings, so the book and the command below share their results.

The committed table follows the rule of :mod:`.seeds` (the pipeline's table): the book computes
seed 0, and the mean ± spread over seeds comes from one results file written by one command::

    python -m transcam_nb variant-seeds --profile tiny --seeds 0,1,2

(``--results`` defaults to :func:`committed_variants`, ``transcam_nb/results/variants-<profile>.json``,
shipped with the package.) Per seed S it takes the profile's classifier for seed S from the
classifier cache (:func:`~transcam_nb.pipeline.classifier.cached_classifier`, exactly what the
book's ``workflow.classifier`` does), evaluates :data:`transcam_nb.refine.VARIANTS` on the
evaluation split as chapter 5 does (the profile's scales, flip, τ grid and fixed τ, every
image unless ``--limit``), fits the learned aggregation and evaluates its variant as chapter 8
does, and records per variant the mIoU at the best τ, at the fixed τ, and the best τ. The file is
rewritten after every seed; an interrupted command run again takes the finished seeds from the
artifacts cache. Every row carries its key (:func:`variant_key`: the profile with its seed and
the evaluation settings), so chapters 5 and 8 find their own row and check it with
:func:`check_variant_row` (:func:`.seeds.check_row`: the key everywhere, the numbers on the kind of
machine that wrote the file).
"""
from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..artifacts import artifacts_dir, cached, config_hash, read_json, write_json
from ..config import Profile, get_profile
from .context import trimmed_profile
from .seeds import RESULTS_DIR, ROW_TOLERANCE, check_row, machine_id, read_results, stats_frame

__all__ = ["evaluate_variants", "learned_aggregation", "AGGREGATION", "variant_settings", "variant_key",
           "variant_row", "seed_variants", "run_variant_seeds", "committed_variants", "read_variant_table",
           "variant_frame", "refinement_gain", "check_variant_row", "KINDS"]

#: the learned aggregation's fit as the book runs it (chapter 8): training images, Adam steps, lr
AGGREGATION = {"num_images": 200, "steps": 50, "lr": 0.1}
#: the numbers of a variant in a row: key -> label (percent mIoU; the best τ itself is kept as ``best_tau``)
KINDS = {"best": "mIoU at best τ (%)", "fixed": "mIoU at fixed τ (%)"}


def _dataset(profile: Profile, split: str, mode: str):
    """The profile's ``split`` in ``mode`` (its data root; the embedded benchmark generated on first use)."""
    from ..data.roots import build_dataset, resolve_data_root

    return build_dataset(profile, split, mode, data_root=resolve_data_root(profile, progress=False), progress=False)


def evaluate_variants(model, profile: Profile, *, variants: dict | None = None, split: str | None = None,
                      limit: int | None = None, taus: Sequence[float] | None = None, fixed_tau: float | None = None,
                      cache_key: dict | str | None = None, progress: bool = False) -> dict:
    """Pseudo-label quality of each refinement variant on a split: the τ sweep, the best τ (chosen
    on ground truth, so optimistic) and the mIoU at a τ fixed in advance.

    ``variants``: ``{name: (method, blocks)}`` (default :data:`transcam_nb.refine.VARIANTS`);
    ``split``: default the profile's ``eval_split`` (read only when the result is not cached);
    ``limit``: only the first N images. Returns ``{"variants": {name: {"taus",
    "mious", "best_tau", "best_miou", "fixed_tau", "fixed_miou", "iou_fixed"}}, "num_images",
    "class_names"}``; cached as JSON when ``cache_key`` (e.g. the classifier's run folder name)
    is given."""
    from tqdm.auto import tqdm

    from .. import __version__
    from ..cam import multiscale_variants
    from ..metrics import DEFAULT_THRESHOLDS, ThresholdSweep, sweep_grid, sweep_summary
    from ..refine import VARIANTS

    variants = variants or VARIANTS
    fixed = float(profile.bg_threshold if fixed_tau is None else fixed_tau)
    taus = sweep_grid(fixed, DEFAULT_THRESHOLDS if taus is None else taus)
    split = split or profile.eval_split

    def compute():
        ds = _dataset(profile, split, "infer")
        n = len(ds) if limit is None else min(limit, len(ds))
        K = len(ds.class_names)
        sweeps = {name: ThresholdSweep(taus, num_classes=K + 1) for name in variants}
        for i in tqdm(range(n), desc="CAMs", disable=not progress):
            item = ds[i]
            res = multiscale_variants(model, item.image, item.label, variants=variants, scales=profile.scales,
                                      flip=profile.flip, square=profile.square)
            for name, (cams, classes) in res.items():
                sweeps[name].update(cams, classes, item.mask)
        out = {"num_images": n, "class_names": list(ds.class_names), "variants": {}}
        for name, sw in sweeps.items():
            out["variants"][name] = sweep_summary(sw.result(), fixed)
        return out

    if cache_key is None:
        return compute()
    key = {"cache_key": cache_key, "variants": {k: list(map(str, v)) for k, v in variants.items()},
           "split": split, "limit": limit, "taus": taus, "fixed": fixed,
           "scales": list(profile.scales), "flip": profile.flip, "square": profile.square, "version": __version__}
    path = artifacts_dir() / f"variants-{config_hash(key, 12)}.json"
    return cached(path, key, compute)


def learned_aggregation(model, profile: Profile, *, cache_key: dict | str, num_images: int = AGGREGATION["num_images"],
                        steps: int = AGGREGATION["steps"], lr: float = AGGREGATION["lr"], split: str | None = None,
                        progress: bool = False) -> dict:
    """The block and head weights of :func:`transcam_nb.aggregation.fit_aggregation`, fitted on
    the first ``num_images`` images of the training split (``profile.train_split``; ``"cls"``
    mode, image labels only) at the
    profile's largest CAM scale, cached as JSON under ``cache_key`` (e.g. the classifier's run
    folder name). Returns ``{"weights": [[...]] (blocks × heads), "map_start", "map_end",
    "loss", "num_images", "split"}``."""
    from .. import __version__
    from ..aggregation import fit_aggregation

    split = split or profile.train_split
    scale = max(profile.scales)

    def compute():
        ds = _dataset(profile, split, "cls")
        items = [ds[i] for i in range(min(num_images, len(ds)))]
        w, hist = fit_aggregation(model, items, scale=scale, square=profile.square, steps=steps, lr=lr,
                                  progress=progress)
        return {"weights": w.tolist(), "map_start": hist["map_start"], "map_end": hist["map_end"],
                "loss": hist["loss"], "num_images": hist["num_images"], "split": split}

    key = {"cache_key": cache_key, "split": split, "num_images": num_images, "steps": steps, "lr": lr,
           "scale": scale, "square": profile.square, "version": __version__}
    return cached(artifacts_dir() / f"aggregation-{config_hash(key, 12)}.json", key, compute)


# ------------------------------------------------------------------------------------------
# one seed, its key and its row
# ------------------------------------------------------------------------------------------
def variant_settings(profile: Profile, *, limit: int | None = None) -> dict:
    """What, besides the profile, determines a seed's row: the variants (name, method, blocks, in
    the table's order, the learned one last), the evaluation split, ``limit``, the τ grid, the
    fixed τ, and the learned aggregation's fit (:data:`AGGREGATION`, on the training split)."""
    from ..aggregation import LEARNED
    from ..metrics import sweep_grid
    from ..refine import VARIANTS

    fixed = float(profile.bg_threshold)
    return {"split": profile.eval_split, "limit": limit, "taus": list(sweep_grid(fixed)), "fixed_tau": fixed,
            "variants": [[n, *map(str, v)] for n, v in VARIANTS.items()] + [[LEARNED, "learned", "AA"]],
            "learned": {"split": profile.train_split, **AGGREGATION}}


def variant_key(profile: Profile, settings: dict | None = None) -> str:
    """The hash of the profile (its seed included) and the :func:`variant_settings`: keys a row."""
    settings = variant_settings(profile) if settings is None else settings
    return config_hash({"profile": trimmed_profile(profile), "variants": settings}, 10)


def variant_row(variants: dict, order: Iterable[str] | None = None) -> dict:
    """``{name: {"best", "fixed" (mIoU %, rounded to 0.01), "best_tau"}}`` of an
    :func:`evaluate_variants` result's ``"variants"`` (or the result itself), in ``order``."""
    v = variants["variants"] if isinstance(variants.get("variants"), dict) else variants
    names = [n for n in (order or v) if n in v]
    return {n: {"best": round(100 * float(v[n]["best_miou"]), 2), "fixed": round(100 * float(v[n]["fixed_miou"]), 2),
                "best_tau": round(float(v[n]["best_tau"]), 4)} for n in names}


def seed_variants(profile: Profile, *, limit: int | None = None, progress: bool = False,
                  from_scratch: bool = False) -> dict:
    """Everything chapters 5 and 8 compute for ``profile`` (with its seed): the classifier from the
    classifier cache, :data:`transcam_nb.refine.VARIANTS` on the evaluation split, the learned
    aggregation and its variant. Returns ``{"variants": {name: sweep summary}, "num_images",
    "classifier": run folder name, "aggregation": the fit}``."""
    from ..aggregation import LEARNED, learned_variant
    from ..refine import VARIANTS
    from .classifier import cached_classifier

    model, run_dir = cached_classifier(profile, progress=progress, from_scratch=from_scratch)
    res = evaluate_variants(model, profile, variants=VARIANTS, limit=limit, cache_key=run_dir.name,
                            progress=progress)
    agg = learned_aggregation(model, profile, cache_key=run_dir.name, progress=progress)
    learned = learned_variant(agg["weights"], LEARNED)
    res_l = evaluate_variants(model, profile, variants=learned, limit=limit, cache_key=run_dir.name,
                              progress=progress)
    return {"variants": {**res["variants"], **res_l["variants"]}, "num_images": res["num_images"],
            "classifier": run_dir.name, "aggregation": agg}


# ------------------------------------------------------------------------------------------
# the results file
# ------------------------------------------------------------------------------------------
def committed_variants(profile: Profile | str) -> Path:
    """The committed variants file of a profile (it may not exist: only the tiny profile ships one)."""
    name = profile.name if isinstance(profile, Profile) else str(profile)
    return RESULTS_DIR / f"variants-{name}.json"


def read_variant_table(path: str | os.PathLike) -> dict:
    """A results file written by :func:`run_variant_seeds` (``InputError`` naming it when it is not one)."""
    return read_results(path, "variant-seeds")


def _profile_id(profile: Profile) -> str:
    return config_hash({k: v for k, v in trimmed_profile(profile).items() if k != "seed"}, 10)


def run_variant_seeds(profile: Profile | str, seeds: Iterable[int], results: str | os.PathLike, *,
                      limit: int | None = None, progress: bool = True, from_scratch: bool = False,
                      command: str | None = None,
                      compute: Callable[..., dict] | None = None) -> dict:
    """:func:`seed_variants` of ``profile`` once per seed; rewrites ``results`` after every seed
    and returns it. Rows of the same profile and settings already in the file are kept (a
    second call adds seeds); a file made with another profile or other settings is replaced.
    ``compute`` replaces :func:`seed_variants` (tests)."""
    from ..device import set_threads

    base = profile if isinstance(profile, Profile) else get_profile(profile)
    settings = variant_settings(base, limit=limit)
    order = [v[0] for v in settings["variants"]]
    old = read_json(results) if Path(results).is_file() else None
    keep = (isinstance(old, dict) and old.get("settings") == settings and old.get("profile_id") == _profile_id(base))
    runs = {r["key"]: r for r in old["runs"]} if keep else {}
    set_threads(base.threads)
    table = None
    for seed in seeds:
        prof = base.replace(seed=int(seed))
        out = (compute or seed_variants)(prof, limit=limit, progress=progress, from_scratch=from_scratch)
        key = variant_key(prof, settings)
        runs[key] = {"seed": int(seed), "key": key, "classifier": out.get("classifier"),
                     "num_images": out["num_images"], "row": variant_row(out["variants"], order)}
        table = {"profile": base.name, "profile_id": _profile_id(base), "command": command, "machine": machine_id(),
                 "written": datetime.datetime.now().isoformat(timespec="seconds"), "settings": settings,
                 "seeds": sorted(r["seed"] for r in runs.values()),
                 "runs": sorted(runs.values(), key=lambda r: r["seed"])}
        write_json(results, table, sort_keys=False)
    return table


def _flat(row: dict) -> dict:
    return {(name, kind): vals[kind] for name, vals in row.items() for kind in KINDS if kind in vals}


def variant_frame(table: dict):
    """The table as a DataFrame: one row per variant; for the best and the fixed τ (:data:`KINDS`)
    the mIoU of each seed, their mean and their spread (sample standard deviation)."""
    import pandas as pd

    rows = {f"seed {r['seed']}": _flat(r["row"]) for r in sorted(table["runs"], key=lambda r: r["seed"])}
    t = stats_frame(rows).T  # index (variant, kind); columns: seeds, mean, spread
    t.index = pd.MultiIndex.from_tuples(t.index)
    order = [v[0] for v in table.get("settings", {}).get("variants", [])]
    order = order or list(dict.fromkeys(t.index.get_level_values(0)))
    parts = {label: t.xs(kind, level=1) for kind, label in KINDS.items()}
    out = pd.concat(parts, axis=1)
    return out.loc[[n for n in order if n in out.index]]


def refinement_gain(table: dict, names: Iterable[str] | None = None, kind: str = "best",
                    baseline: str = "CAM") -> dict:
    """The refinement with the highest mean mIoU over the seeds (``kind``: ``"best"`` or
    ``"fixed"`` τ) among ``names`` (default: every variant but ``baseline``), and its difference
    to ``baseline`` per seed, their mean and spread: ``{"name", "per_seed": {seed: points},
    "mean", "spread"}``. The refinement is picked once, on the mean, not per seed."""
    import numpy as np

    runs = sorted(table["runs"], key=lambda r: r["seed"])
    cands = [n for n in (names or runs[0]["row"]) if n != baseline]
    means = {n: float(np.mean([r["row"][n][kind] for r in runs])) for n in cands}
    best = max(means, key=means.get)
    diffs = {r["seed"]: r["row"][best][kind] - r["row"][baseline][kind] for r in runs}
    d = np.array(list(diffs.values()), dtype=float)
    return {"name": best, "per_seed": diffs, "mean": float(d.mean()),
            "spread": float(d.std(ddof=1)) if len(d) > 1 else float("nan")}


def check_variant_row(table: dict | str | os.PathLike, result: dict, profile: Profile, *, limit: int | None = None,
                      tolerance: float = ROW_TOLERANCE) -> dict:
    """Check that the results file holds what the caller just computed: ``result`` (an
    :func:`evaluate_variants` result, or its ``"variants"``, possibly with the learned variant
    merged in) of ``profile`` (its seed included) evaluated as :func:`seed_variants` does (with
    ``limit``). The key must match everywhere (``AssertionError`` naming the command to run
    again); the mIoUs of the variants in ``result`` (best and fixed τ) must match within
    ``tolerance`` on the kind of machine that wrote the file, elsewhere they are reported
    (:func:`.seeds.check_row`). Returns ``{"pairs": {(variant, kind): (file, computed)},
    "max_diff", "same_machine"}``."""
    t = read_variant_table(table) if not isinstance(table, dict) else table
    key = variant_key(profile, variant_settings(profile, limit=limit))
    return check_row(t, key, _flat(variant_row(result)), what="variant-seeds", flatten=_flat, tolerance=tolerance)
