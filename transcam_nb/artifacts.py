"""Stage outputs on disk: the artifacts folder, atomic writes, JSON / JSON-lines, "load if cached".

Every stage of the pipeline (checkpoint, CAM files, label PNGs, metrics JSON) writes an
artifact that the next stage reads. Two small tools make that safe and cheap:

* :func:`atomic_path` / :func:`atomic_write`: write into a temporary name in the same folder,
  then ``os.replace`` it onto the final name, so a reader (or a resumed run) never sees a
  half-written file, even when the writer is killed.
* :func:`cached`: ``cached(path, config, compute_fn)`` returns the artifact at ``path`` when a
  JSON manifest next to it (``<path>.manifest.json``) records the same config hash, and
  otherwise calls ``compute_fn``, stores the result atomically and writes the manifest. Later
  notebook chapters therefore do not retrain or recompute what an earlier one produced with
  the same settings (the uvadlc "load if cached, else train" pattern).
* :func:`write_json` / :func:`read_json`, :func:`append_jsonl` / :func:`read_jsonl` /
  :func:`write_jsonl`: the one set of JSON helpers of the package (numpy scalars and arrays,
  paths and sets are written as plain JSON through :func:`json_default`).
* :func:`artifacts_dir`: where cached stage outputs go (``$TRANSCAM_ARTIFACTS``, else
  ``<repo>/artifacts`` inside a checkout, else ``~/.cache/transcam_nb/artifacts``).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

_log = logging.getLogger("transcam_nb.artifacts")

__all__ = ["config_hash", "atomic_path", "atomic_write", "cached", "manifest_path", "read_manifest", "artifacts_dir",
           "json_default", "to_jsonable", "write_json", "read_json", "append_jsonl", "read_jsonl", "write_jsonl",
           "file_sha256"]


def artifacts_dir() -> Path:
    """The folder of cached stage outputs (created): ``$TRANSCAM_ARTIFACTS``, else
    ``<repo>/artifacts`` inside a checkout (a folder with ``_config.yml``), else
    ``~/.cache/transcam_nb/artifacts``."""
    env = os.environ.get("TRANSCAM_ARTIFACTS")
    if env:
        p = Path(env)
    else:
        repo = Path(__file__).resolve().parents[1]
        p = repo / "artifacts" if (repo / "_config.yml").is_file() else Path.home() / ".cache" / "transcam_nb" / "artifacts"
    p.mkdir(parents=True, exist_ok=True)
    return p


def json_default(o: Any):
    """``json.dump(..., default=json_default)``: numpy scalars → numbers, arrays → lists, paths →
    strings, sets and tuples → lists, anything else → ``str(o)``."""
    if hasattr(o, "item") and getattr(o, "ndim", None) == 0:  # numpy / torch scalar
        return o.item()
    if hasattr(o, "tolist"):  # numpy array
        return o.tolist()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    return str(o)


def to_jsonable(obj: Any) -> Any:
    """A JSON round trip (tuples → lists, numpy → numbers), so stored and fresh values compare equal."""
    return json.loads(json.dumps(obj, sort_keys=True, default=json_default))


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, sort_keys: bool = True) -> None:
    """Write ``obj`` as JSON at ``path`` atomically (see :func:`json_default` for non-JSON values)."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=indent, sort_keys=sort_keys, default=json_default)


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """The JSON at ``path``, or ``default`` when the file is absent or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one record as a line of JSON (a kill can cut only this last line; :func:`read_jsonl`
    drops such a line)."""
    with open(path, "a") as f:
        f.write(json.dumps(record, default=json_default) + "\n")
        f.flush()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSON-lines file (``[]`` when absent); lines that are not JSON (cut by a
    kill) are skipped."""
    path = Path(path)
    out: list = []
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def write_jsonl(path: str | os.PathLike, records) -> None:
    """Write ``records`` as JSON lines at ``path`` atomically (e.g. a log truncated for a resume)."""
    with atomic_write(path, "w") as f:
        for r in records:
            f.write(json.dumps(r, default=json_default) + "\n")


def config_hash(config: Any, length: int = 16) -> str:
    """A stable short hash of a JSON-like config (keys sorted; unknown objects via ``str``)."""
    blob = json.dumps(config, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 (hex) of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tmp_name(path: Path, is_dir: bool = False) -> Path:
    # same folder (so os.replace is atomic), same suffix (so suffix-driven writers such as
    # np.savez or PIL pick the right format), hidden and unique per process
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.tmp-{os.getpid()}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    if is_dir:
        os.unlink(name)
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False):
    """Yield a temporary path next to ``path``; on success move it onto ``path`` atomically.

    Write the artifact at the yielded path (a file, or a folder with ``is_dir=True``). On an
    exception the temporary file/folder is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path, is_dir)
    try:
        yield tmp
        if is_dir:
            if not tmp.is_dir():
                raise FileNotFoundError(f"the writer did not create the folder {tmp} for {path}")
            if path.exists():
                old = _tmp_name(path, True)
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        else:
            if not tmp.exists():
                raise FileNotFoundError(f"the writer did not create {tmp} for {path}")
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **kwargs):
    """``with atomic_write(p, "w") as f: ...``: an open file whose content appears at ``p`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def manifest_path(path: str | os.PathLike) -> Path:
    """The manifest that sits next to an artifact: ``<path>.manifest.json``."""
    path = Path(path)
    return path.with_name(path.name + ".manifest.json")


def read_manifest(path: str | os.PathLike) -> dict | None:
    """The artifact's manifest as a dict, or ``None`` when absent or unreadable."""
    m = manifest_path(path)
    try:
        return json.loads(m.read_text())
    except (OSError, ValueError):
        return None


def _save_value(value: Any, path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        import numpy as np

        if not isinstance(value, dict):
            raise TypeError(f"compute_fn for {path.name} must return a dict of arrays to store as .npz")
        with open(path, "wb") as f:
            np.savez_compressed(f, **value)
    elif suffix == ".npy":
        import numpy as np

        with open(path, "wb") as f:
            np.save(f, np.asarray(value), allow_pickle=False)
    elif suffix in (".pt", ".pth"):
        import torch

        torch.save(value, path)
    elif suffix == ".json":
        path.write_text(json.dumps(value, indent=2, default=str))
    else:
        raise TypeError(
            f"compute_fn returned a value but no saver is known for {path.name!r}; either write the artifact "
            "at the path compute_fn receives, or use a .npz/.npy/.pt/.pth/.json name"
        )


def _load_value(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        import numpy as np

        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    if suffix == ".npy":
        import numpy as np

        return np.load(path)
    if suffix in (".pt", ".pth"):
        import torch

        return torch.load(path, map_location="cpu", weights_only=True)
    if suffix == ".json":
        return json.loads(path.read_text())
    return path


def cached(
    path: str | os.PathLike,
    config: dict,
    compute_fn: Callable[..., Any],
    *,
    load_fn: Callable[[Path], Any] | None = None,
    force: bool = False,
    verbose: bool = True,
) -> Any:
    """Load the artifact at ``path`` if it was made with ``config``, else compute and store it.

    Parameters
    ----------
    path
        The artifact: a file or a folder.
    config
        Everything that determines the artifact (JSON-serialisable; other objects are hashed
        through ``str``). Its hash is stored in ``<path>.manifest.json``.
    compute_fn
        Called as ``compute_fn(tmp_path)`` when the artifact must be (re)made. Either write the
        artifact at ``tmp_path`` (a file with ``path``'s suffix, or a folder to create when
        ``path`` has no suffix or already is a folder) and return ``None``, or return a value
        that is saved by suffix: ``.npz`` (dict of arrays), ``.npy``, ``.pt``/``.pth``
        (``torch.save``), ``.json``. If ``compute_fn`` takes no argument it is called as
        ``compute_fn()`` and must return the value.
    load_fn
        How to read the artifact back. Default: by suffix (``.npz`` → dict of arrays, ``.npy``,
        ``.pt``/``.pth`` with ``weights_only=True``, ``.json``), otherwise the path itself.
    force
        Recompute even if a matching artifact exists.
    verbose
        Report ``[cached]`` / ``[compute]`` (the file name, never its folder) on the
        ``transcam_nb.artifacts`` logger at INFO level (else DEBUG); silence it with
        ``logging.getLogger("transcam_nb").setLevel(logging.WARNING)``.

    Returns ``load_fn(path)`` (or the default loader's result).
    """
    import inspect

    path = Path(path)
    h = config_hash(config)
    man = read_manifest(path)
    hit = path.exists() and man is not None and man.get("config_hash") == h and not force
    if hit:
        _log.log(logging.INFO if verbose else logging.DEBUG, "[cached] %s (config %s)", path.name, h)
    else:
        why = "forced" if force else ("config changed" if path.exists() else "not found")
        _log.log(logging.INFO if verbose else logging.DEBUG, "[compute] %s (%s; config %s)", path.name, why, h)
        is_dir = path.is_dir() or (not path.exists() and path.suffix == "")
        try:
            n_params = len(inspect.signature(compute_fn).parameters)
        except (TypeError, ValueError):
            n_params = 1
        # invalidate the old manifest first, so a crash between the two writes cannot pair
        # a new artifact with a stale manifest (or vice versa)
        manifest_path(path).unlink(missing_ok=True)
        t0 = time.time()
        with atomic_path(path, is_dir=is_dir) as tmp:
            if is_dir:
                tmp.mkdir()
            if n_params == 0:
                value = compute_fn()
            else:
                value = compute_fn(tmp)
            if value is not None:
                if is_dir:
                    raise TypeError(f"compute_fn for the folder artifact {path} must write into the folder, not return a value")
                _save_value(value, tmp)
            elif not is_dir and tmp.stat().st_size == 0:
                raise ValueError(f"compute_fn for {path} returned None and wrote nothing at the path it was given")
        manifest = {
            "artifact": path.name,
            "config_hash": h,
            "config": json.loads(json.dumps(config, sort_keys=True, default=str)),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "seconds": round(time.time() - t0, 3),
        }
        with atomic_write(manifest_path(path), "w") as f:
            json.dump(manifest, f, indent=2)
    return load_fn(path) if load_fn is not None else _load_value(path)
