"""What every pipeline stage shares: the stage list, :class:`PipelineContext` (profile, settings,
run folder, data access, ``config.json`` / ``DONE.json`` bookkeeping, sharding) and small helpers."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..artifacts import artifacts_dir, config_hash
from ..artifacts import read_json as _read_json
from ..artifacts import to_jsonable as _norm
from ..artifacts import write_json as _write_json
from ..config import PipelineConfig, Profile, pipeline_defaults
from ..smoke import smoke_overrides
from ..errors import InputError

log = logging.getLogger("transcam_nb.pipeline")

#: the stages, in pipeline order
STAGES = ("classifier", "cams", "crf", "affinity", "randomwalk", "segment")
#: the headline numbers of summary.json (mIoU in percent) and the stage that produces each
SUMMARY_KEYS = {"cam": "cams", "transcam": "cams", "random_walk": "randomwalk", "random_walk_crf": "randomwalk",
                "deeplab_val": "segment"}


def pipeline_config(profile: Profile | str | None = None, **overrides) -> PipelineConfig:
    """The :class:`~transcam_nb.config.PipelineConfig` of a profile (its record in
    :data:`transcam_nb.config.SETTINGS`) with overrides.

    ``$TRANSCAM_CLASSIFIER`` (``workflow``, ``train`` or a weights file) replaces the default
    ``classifier="workflow"``, e.g. to run the pipeline from the authors' released weights.
    ``$TRANSCAM_SMOKE`` shrinks the paper profile's stages to a smoke run
    (:func:`transcam_nb.smoke.smoke_overrides`)."""
    name = profile.name if isinstance(profile, Profile) else (profile or os.environ.get("TRANSCAM_PROFILE", "tiny"))
    base = smoke_overrides(name, "pipeline")
    if os.environ.get("TRANSCAM_CLASSIFIER"):
        base["classifier"] = os.environ["TRANSCAM_CLASSIFIER"]
    base.update(overrides)
    return pipeline_defaults(name).replace(**base)


class StageIncomplete(RuntimeError):
    """A sharded stage whose other shards have not finished (``wait=False``)."""


class PipelineInputError(InputError, RuntimeError):
    """The run folder or the settings do not allow the stage: an earlier stage is not complete,
    the folder was made with other settings, or the stage cannot run this way."""


# =============================================================================================
# small helpers
# =============================================================================================
def pct(x: float) -> float:
    return round(100.0 * float(x), 4)


@dataclass
class PipelineContext:
    """What every stage function receives: the profile, the settings and the run folder."""

    profile: Profile
    config: PipelineConfig
    out_dir: Path
    shard: tuple[int, int] = (0, 1)
    wait: bool = False
    poll_s: float = 5.0
    progress: bool = True
    _cache: dict = field(default_factory=dict, repr=False)

    # -- folders and markers -------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        return self.out_dir / stage

    def done_path(self, stage: str) -> Path:
        return self.stage_dir(stage) / "DONE.json"

    def done(self, stage: str) -> dict | None:
        """The stage's DONE.json, or None when it is not complete."""
        return _read_json(self.done_path(stage))

    def require(self, stage: str) -> dict:
        d = self.done(stage)
        if d is None:
            raise PipelineInputError(f"pipeline stage {stage!r} is not complete in {self.out_dir} (no {self.done_path(stage)}); "
                               f"run it first (stages run in the order {', '.join(STAGES)})")
        return d

    # -- data ----------------------------------------------------------------------------
    @property
    def device(self):
        from ..device import get_device

        if "device" not in self._cache:
            dev = get_device(None if self.profile.device == "auto" else self.profile.device)
            if dev.type == "cuda" and dev.index is None and "LOCAL_RANK" in os.environ:
                import torch

                dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))  # torchrun: one GPU per process
            self._cache["device"] = dev
        return self._cache["device"]

    @property
    def data_root(self) -> Path:
        if "root" not in self._cache:
            from ..data.roots import resolve_data_root

            self._cache["root"] = Path(resolve_data_root(self.profile, progress=self.progress))
        return self._cache["root"]

    def dataset(self, split: str):
        """The profile's dataset of ``split`` in "infer" mode (cached): a
        :class:`~transcam_nb.data.voc.VOCDataset` or :class:`~transcam_nb.data.coco.COCODataset`
        (:func:`transcam_nb.data.roots.build_dataset`, which dispatches on ``profile.dataset``)."""
        key = ("ds", split)
        if key not in self._cache:
            from ..data.roots import build_dataset

            self._cache[key] = build_dataset(self.profile, split, "infer", data_root=self.data_root,
                                             progress=self.progress)
        return self._cache[key]

    def _index(self, split: str | None) -> tuple:
        """``(dataset, {id: index})`` of ``split`` (default: the pseudo-label split)."""
        split = split or self.pseudo_split
        ds = self.dataset(split)
        if ("index", split) not in self._cache:
            self._cache[("index", split)] = {iid: k for k, iid in enumerate(ds.ids)}
        return ds, self._cache[("index", split)]

    def image_dir(self, split: str | None = None) -> Path:
        """The folder holding the images of ``split`` as ``<id>.jpg`` (VOC: ``JPEGImages/``; COCO:
        ``train2014/``, ...; default split: the pseudo-label split)."""
        return Path(self.dataset(split or self.pseudo_split).image_dir)

    @property
    def pseudo_split(self) -> str:
        return self.config.pseudo_split or self.profile.train_split

    @property
    def val_split(self) -> str:
        return self.config.val_split or self.profile.val_split

    def pseudo_ids(self) -> list[str]:
        ids = list(self.dataset(self.pseudo_split).ids)
        return ids[: self.config.pseudo_limit] if self.config.pseudo_limit else ids

    def eval_ids(self) -> list[str]:
        """Pseudo-label images that are scored: those with a mask (within ``pseudo_eval_split``)."""
        ds, index = self._index(None)
        ids = self.pseudo_ids()
        if self.config.pseudo_eval_split:
            keep = set(self.dataset(self.config.pseudo_eval_split).ids)
            ids = [i for i in ids if i in keep]
        return [i for i in ids if ds.mask_path(index[i]) is not None]

    def val_ids(self) -> list[str]:
        ids = list(self.dataset(self.val_split).ids)
        return ids[: self.config.val_limit] if self.config.val_limit else ids

    def mask(self, iid: str, split: str | None = None) -> np.ndarray:
        """The ground-truth class mask of image ``iid`` of ``split`` (default: the pseudo-label split)."""
        ds, index = self._index(split)
        return ds.mask(index[iid])

    def image(self, iid: str, split: str | None = None) -> np.ndarray:
        """Image ``iid`` of ``split`` (default: the pseudo-label split) as a uint8 H×W×3 array."""
        from ..data.voc import load_rgb

        ds, index = self._index(split)
        # a writable copy: pydensecrf refuses read-only buffers (np.asarray of a PIL image is one)
        return np.array(load_rgb(ds.image_path(index[iid])), dtype=np.uint8)

    @property
    def num_fg(self) -> int:
        return int(self.dataset(self.pseudo_split).num_classes)

    @property
    def class_names(self) -> list[str]:
        return ["background"] + list(self.dataset(self.pseudo_split).class_names)

    # -- config.json ---------------------------------------------------------------------
    def begin(self, stage: str, spec: dict) -> str:
        """Record (or check) the stage's configuration; returns its key (a hash)."""
        spec = _norm(spec)
        key = config_hash(spec)
        d = self.stage_dir(stage)
        d.mkdir(parents=True, exist_ok=True)
        path = d / "config.json"
        old = _read_json(path)
        if old is not None and old.get("key") != key:
            changed = sorted(k for k in set(spec) | set(old.get("spec", {})) if spec.get(k) != old.get("spec", {}).get(k))
            raise PipelineInputError(
                f"{d} was made with other settings (changed: {changed}); use a new output folder, "
                f"or delete {d} and the stages after it to recompute"
            )
        if old is None:
            _write_json(path, {"stage": stage, "key": key, "spec": spec})
        return key

    def discard_if_empty(self, stage: str) -> bool:
        """Remove the stage's ``config.json`` (and its empty folders) when nothing else was
        written: a stage that failed while checking its inputs leaves no state behind, so a run
        with corrected inputs is not refused as "made with other settings". Returns whether it did."""
        d = self.stage_dir(stage)
        if not d.is_dir() or any(p.is_file() and p != d / "config.json" for p in d.rglob("*")):
            return False
        (d / "config.json").unlink(missing_ok=True)
        for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            sub.rmdir()
        d.rmdir()
        return True

    def finished(self, stage: str, key: str) -> dict | None:
        """The stage's DONE record when it is complete with the settings ``key``."""
        d = self.done(stage)
        return d if d is not None and d.get("key") == key else None

    def finish(self, stage: str, key: str, result: dict, wall_s: float) -> dict:
        rec = {"stage": stage, "key": key, "result": _norm(result), "wall_s": round(wall_s, 3),
               "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        _write_json(self.done_path(stage), rec)
        return rec

    # -- sharding ------------------------------------------------------------------------
    def my_part(self, ids: Sequence[str]) -> list[str]:
        i, n = self.shard
        return list(ids)[i::n]

    def wait_until(self, ready: Callable[[], bool], what: str) -> None:
        """Return when ``ready()``; else raise :class:`StageIncomplete` or poll (``wait``)."""
        if ready():
            return
        if not self.wait:
            raise StageIncomplete(f"{what}: waiting for the other shards; run again when they have finished")
        log.info("[pipeline] shard %d/%d: waiting for %s", self.shard[0], self.shard[1], what)
        while not ready():
            time.sleep(self.poll_s)


def progress_bar(it, total: int, desc: str, enable: bool):
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, disable=not enable, dynamic_ncols=True)


def trimmed_profile(p: Profile) -> dict:
    """The profile without its run-only fields (:data:`transcam_nb.config.RUN_ONLY_FIELDS`)."""
    return p.fingerprint_dict()


def file_id(path: Path) -> dict:
    st = Path(path).stat()
    return {"file": str(Path(path).resolve()), "size": st.st_size}


def png_confusion(ctx: PipelineContext, folder: Path, ids: Sequence[str], desc: str):
    from ..metrics import ConfusionMatrix
    from ..pseudo import load_label_png

    cm = ConfusionMatrix(ctx.num_fg + 1, class_names=ctx.class_names)
    for iid in progress_bar(ids, len(ids), desc, ctx.progress):
        cm.update(load_label_png(folder / f"{iid}.png"), ctx.mask(iid))
    return cm


def cm_result(cm) -> dict:
    return {"miou": pct(cm.miou()), "iou": [pct(v) for v in cm.iou()]}


def postprocess_spec(spec: dict, postprocess: str) -> dict:
    """Put the label post-processing into a stage's (or run's) spec: PAR as ``"postprocess":
    "par"``; the CRF, the default, adds nothing, so runs made before the setting existed keep
    their keys and folders. Returns ``spec``."""
    from ..postprocess.crf import check_postprocess

    spec.pop("postprocess", None)
    if check_postprocess(postprocess) != "crf":
        spec["postprocess"] = postprocess
    return spec


def default_out_dir(profile: Profile, config: PipelineConfig | None = None) -> Path:
    """``<artifacts>/pipeline-<profile>-<hash of profile and settings>`` (the book's cache)."""
    return artifacts_dir() / f"pipeline-{profile.name}-{run_key(profile, config or pipeline_config(profile))}"


def run_key(profile: Profile, config: PipelineConfig) -> str:
    """The hash of what determines a pipeline run (the profile, its seed included, and the
    pipeline settings): names the book's run folder and keys the seeds table's rows."""
    # from_scratch only allows a run that would otherwise stop: it never changes what a run produces
    cfg = {k: v for k, v in config.to_dict().items() if k != "from_scratch"}
    postprocess_spec(cfg, config.postprocess)
    return config_hash({"profile": trimmed_profile(profile), "config": cfg}, 10)


