"""Finished classifiers shipped with the package: the book loads its contrast arm instead of training it.

Why. Chapters 2 and 5 contrast the profile's classifier with the same recipe started from the
other shipped pretext weights (``workflow.classifier(profile, init="package:tiny_pretrained_grouped.pt")``).
Training that second classifier costs about 12 minutes of a 2-core CPU, most of what the cold book
may take (issue 11's budget: 15 minutes). The profile's own seed-0 classifier stays trained
during the build ("the build computes seed 0 of everything"); the contrast arm ships finished.

What ships, in ``transcam_nb/weights/``:

``<name>.pt``    ``{"model": state dict}``, float32 as trained (half precision would change the
                 CAMs' last digits, and those numbers are quoted), read with ``weights_only=True``
                 by :func:`transcam_nb.models.load_checkpoint` like every other checkpoint.
``<name>.json``  its manifest: ``kind: "classifier"`` (what marks the manifests of this module);
                 ``request`` (``profile``, ``init``: the call that asks for it,
                 ``cached_classifier(get_profile(profile), init=init)``); ``spec`` and ``run_name``
                 (:func:`~transcam_nb.pipeline.classifier.classifier_spec` of that call: the whole
                 cache key, stored in full so a difference shows field by field); ``init_sha256``
                 (the spec knows the initial weights by file name and size only); ``weights_file``,
                 ``weights_sha256``, ``weights_dtype``; ``summary`` (steps, losses, val mAP, wall
                 time of the training run); ``machine`` (:func:`~transcam_nb.pipeline.seeds.machine_id`
                 of the machine the command ran on; fp32 training on another kind of CPU ends a
                 little elsewhere);
                 ``command`` (what regenerates it); ``source_run``, ``shipped_utc``.

When it is used. :func:`~transcam_nb.pipeline.classifier.cached_classifier`, on a cache miss (its
run folder has no ``DONE.json``), asks :func:`find_shipped` for a manifest whose ``spec`` equals
the call's spec exactly (after a JSON round trip) and whose ``init_sha256`` equals the sha256 of
the file the call would start from. :func:`install` then checks the weights' sha256, copies them
to ``<run folder>/classifier.pt``, writes ``spec.json`` and a ``DONE.json`` that says where they
came from (``"shipped"``), and logs one line. Anything different (a profile field, the package
version, the data generator, other initial weights) finds nothing and trains as before: stale
weights are never used silently. ``shipped=False`` or ``TRANSCAM_NO_SHIPPED=1`` trains for real
(a run folder holding an installed copy is then trained over).

Drift. ``tests/test_shipped_classifier.py`` recomputes every manifest's spec from its ``request``
and fails, naming the regenerate command, when the code now computes another one (then the book
would quietly go back to training). The command (``scripts/ship_classifier.py``) trains the
classifier through the cache, or with ``--from RUN`` copies a finished run whose ``spec.json``
equals the spec; both end in :func:`write_shipped`.

This module imports nothing of the pipeline's stages (the classifier stage imports it), so the
spec is computed by the caller (:func:`~transcam_nb.pipeline.classifier.classifier_spec`).
"""
from __future__ import annotations

import datetime
import io
import logging
import os
import shutil
from pathlib import Path

from ..engine.config import classifier_weights
from ..artifacts import atomic_path, atomic_write, file_sha256, read_json, to_jsonable, write_json
from ..errors import InputError
from ..weights import WEIGHTS_DIR, resolve_checkpoint

log = logging.getLogger("transcam_nb.pipeline")

__all__ = ["ENV_OPT_OUT", "KIND", "REGENERATE", "use_shipped", "shipped_classifiers", "find_shipped", "install",
           "write_shipped", "drift", "default_name", "regenerate_command"]

#: set to 1 to train every classifier for real (never install a shipped one)
ENV_OPT_OUT = "TRANSCAM_NO_SHIPPED"
#: the ``kind`` of the manifests this module reads and writes
KIND = "classifier"
#: the command that writes a shipped classifier (run from a checkout)
REGENERATE = "python scripts/ship_classifier.py --profile {profile} --init {init} --name {name}"
#: what a manifest's ``summary`` keeps of the training run's summary
_SUMMARY_KEYS = ("steps", "total_steps", "epochs", "final_loss", "last_loss", "wall_time_s", "train_time_s",
                 "images_per_s", "effective_batch", "device", "precision", "eval")


def regenerate_command(profile: str, init: str | None, name: str) -> str:
    return REGENERATE.format(profile=profile, init=init, name=name)


def default_name(profile: str, init: str | None) -> str:
    """``package:tiny_pretrained_grouped.pt`` → ``tiny_classifier_grouped``; other inits: ``<profile>_classifier_<stem>``."""
    if init is None:
        return f"{profile}_classifier_scratch"
    stem = Path(str(init).split(":", 1)[-1]).stem
    return stem.replace("pretrained", "classifier") if "pretrained" in stem else f"{profile}_classifier_{stem}"


def use_shipped(flag: bool | None = None) -> bool:
    """``flag`` when given, else whether ``$TRANSCAM_NO_SHIPPED`` is unset (or 0/false/no)."""
    if flag is not None:
        return bool(flag)
    return os.environ.get(ENV_OPT_OUT, "").strip().lower() in ("", "0", "false", "no")


def shipped_classifiers(folder: str | os.PathLike | None = None) -> list[tuple[Path, dict]]:
    """``(manifest path, manifest)`` of every shipped classifier in ``folder`` (default: the package's weights)."""
    found = []
    for js in sorted(Path(folder or WEIGHTS_DIR).glob("*.json")):
        man = read_json(js)
        if isinstance(man, dict) and man.get("kind") == KIND:
            found.append((js, man))
    return found


def find_shipped(spec: dict, init: str | None, folder: str | os.PathLike | None = None) -> tuple[Path, dict] | None:
    """The shipped classifier trained with exactly ``spec`` from exactly the file ``init`` names, or ``None``."""
    want = to_jsonable(spec)
    same = [(p, m) for p, m in shipped_classifiers(folder) if to_jsonable(m.get("spec")) == want]
    if not same:
        return None
    init_sha = file_sha256(resolve_checkpoint(init)) if init is not None else None
    for p, m in same:
        if m.get("init_sha256") == init_sha:
            return p, m
        log.warning("shipped classifier %s was trained from other initial weights than %s (sha256 differs): "
                    "training instead; regenerate it with: %s", m.get("weights_file"), init, m.get("command"))
    return None


def drift(man: dict, spec: dict) -> list[str]:
    """Why a shipped classifier's manifest no longer describes the classifier its ``request`` asks
    for (empty when it does): the spec fields that differ from ``spec`` (what
    :func:`~transcam_nb.pipeline.classifier.classifier_spec` computes for the request now), or
    other initial weights than those it was trained from."""
    problems = [f"spec differs at {k}" for k in _diff(to_jsonable(man.get("spec")), to_jsonable(spec))]
    init = man["request"]["init"]
    if init is not None and man.get("init_sha256") != file_sha256(resolve_checkpoint(init)):
        problems.append(f"{init} is not the file it was trained from (sha256 differs)")
    return problems


def install(found: tuple[Path, dict], run_dir: str | os.PathLike, spec: dict) -> Path:
    """Copy a shipped classifier into the cache's run folder as a finished run; returns the weights' path."""
    manifest, man = found
    src = Path(manifest).parent / man["weights_file"]
    hint = f"regenerate it with: {man.get('command')} (or set {ENV_OPT_OUT}=1 to train the classifier instead)"
    if not src.is_file():
        raise FileNotFoundError(f"shipped classifier {src} is missing (named by {Path(manifest).name}); {hint}")
    sha = file_sha256(src)
    if sha != man["weights_sha256"]:
        raise RuntimeError(f"shipped classifier {src} does not match the sha256 in {Path(manifest).name} "
                           f"(a damaged or Git LFS pointer copy?); {hint}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "spec.json", spec, sort_keys=False)
    dst = run_dir / "classifier.pt"
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    done = {**man.get("summary", {}),
            "shipped": {"weights": f"package:{src.name}", "weights_sha256": sha, "manifest": Path(manifest).name,
                        "machine": man.get("machine"), "command": man.get("command")},
            "installed_utc": _now()}
    write_json(run_dir / "DONE.json", done, sort_keys=False)
    log.info("[shipped] classifier %s: installed package:%s instead of training (%s=1 trains it)",
             run_dir.name, src.name, ENV_OPT_OUT)
    return dst


def write_shipped(run_dir: str | os.PathLike, *, spec: dict, run_name: str, request: dict, machine: dict,
                  name: str | None = None, folder: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Write ``<name>.pt`` + ``<name>.json`` into ``folder`` (default: the package's weights) from
    ``run_dir``, a finished training run of the classifier ``request`` (``profile``, ``init``) asks for.

    ``spec`` and ``run_name`` are :func:`~transcam_nb.pipeline.classifier.classifier_spec` of that
    request; the run's ``spec.json`` must equal ``spec``. ``machine``: where it was trained
    (:func:`~transcam_nb.pipeline.seeds.machine_id`). ``scripts/ship_classifier.py`` is the command."""
    import torch

    from ..models.checkpoints import read_state_dict

    profile, init = request["profile"], request["init"]
    name = name or default_name(profile, init)
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise InputError(f"--name {name!r}: expected a plain file stem such as 'tiny_classifier_grouped'")
    run_dir = Path(run_dir)
    stored, done = read_json(run_dir / "spec.json"), read_json(run_dir / "DONE.json")
    if stored is None or done is None:
        raise InputError(f"{run_dir}: not a finished classifier run (expected spec.json and DONE.json)")
    if done.get("shipped"):
        raise InputError(f"{run_dir} holds an installed shipped classifier, not a training run: "
                         "pass --from a trained run, or run without --from (it trains)")
    if to_jsonable(stored) != to_jsonable(spec):
        diff = _diff(to_jsonable(stored), to_jsonable(spec))
        raise InputError(f"{run_dir / 'spec.json'} is not the classifier this code computes for profile {profile!r}, "
                         f"init {init!r} (differs at: {', '.join(diff[:8])}); train it: "
                         f"{regenerate_command(profile, init, name)} (without --from)")
    try:
        weights = classifier_weights(run_dir)
    except FileNotFoundError:
        raise InputError(f"{run_dir}: no classifier weights (classifier.pt / last.pt)") from None
    sd = read_state_dict(weights)
    if any(v.is_floating_point() and v.dtype != torch.float32 for v in sd.values()):
        raise InputError(f"{weights}: expected float32 weights")
    folder = Path(folder or WEIGHTS_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    pt, js = folder / f"{name}.pt", folder / f"{name}.json"
    buf = io.BytesIO()  # not the temporary file's name: torch.save records it, the bytes would differ each time
    torch.save({"model": {k: v.detach().cpu().contiguous() for k, v in sd.items()}}, buf)
    with atomic_write(pt, "wb") as f:
        f.write(buf.getvalue())
    trained = {**(read_json(run_dir / "summary.json") or {}), **done}
    manifest = {
        "kind": KIND,
        "what": f"the {profile} profile's classifier fine-tuned from {init} (seed {spec['profile'].get('seed')}), "
                "shipped so the book loads it instead of training it (transcam_nb.pipeline.shipped)",
        "command": regenerate_command(profile, init, name),
        "request": {"profile": profile, "init": init},
        "run_name": run_name,
        "spec": spec,
        "init_sha256": file_sha256(resolve_checkpoint(init)) if init is not None else None,
        "weights_file": pt.name,
        "weights_sha256": file_sha256(pt),
        "weights_dtype": "float32",
        "summary": {k: trained[k] for k in _SUMMARY_KEYS if k in trained},
        "machine": machine,
        "source_run": run_dir.name,
        "shipped_utc": _now(),
    }
    write_json(js, manifest, sort_keys=False)
    return pt, js


def _diff(a, b, prefix: str = "") -> list[str]:
    """The dotted keys where two JSON-like values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.") if k in a and k in b else [f"{prefix}{k}"]
        return out
    return [] if a == b else [prefix.rstrip(".") or "(value)"]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
