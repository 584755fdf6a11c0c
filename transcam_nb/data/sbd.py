"""SBD (the Semantic Boundaries Dataset of Hariharan et al.) as the authors use it: the extra
masks that, with VOC 2012 train, make the 10,582-image ``train_aug`` split.

:func:`build_train_aug` writes that list; :func:`convert_sbd` turns SBD's ``cls/*.mat`` masks
into VOC palette PNGs (a ``SegmentationClassAug/`` folder). Reading one ``.mat`` mask is
:func:`transcam_nb.data.devkit.read_sbd_mat`. Both public names are re-exported by
:mod:`transcam_nb.data.voc`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .devkit import read_id_list, read_sbd_mat, resolve_root, save_mask, split_list_path, write_id_list

__all__ = ["build_train_aug", "convert_sbd"]


def _sbd_dataset_dir(sbd_root: Path) -> Path | None:
    for cand in (sbd_root, sbd_root / "dataset", sbd_root / "benchmark_RELEASE" / "dataset"):
        if (cand / "cls").is_dir():
            return cand
    return None


def _sbd_ids(sbd_root) -> tuple[list[str], str]:
    """Ids SBD provides: SBD train ∪ val lists, or the ``cls/*.mat`` stems, or the PNG stems
    of an already converted SegmentationClassAug folder. Returns (ids, kind)."""
    sbd_root = Path(sbd_root).expanduser()
    if not sbd_root.exists():
        raise FileNotFoundError(
            f"SBD root {sbd_root} does not exist (expected SBD's dataset/ folder with cls/*.mat, "
            "or a SegmentationClassAug/ folder of PNG masks)"
        )
    ds = _sbd_dataset_dir(sbd_root)
    if ds is not None:
        ids: list[str] = []
        lists = [ds / "train.txt", ds / "val.txt"]
        if all(p.is_file() for p in lists):
            for p in lists:
                ids += read_id_list(p)
        else:
            ids = sorted(p.stem for p in (ds / "cls").glob("*.mat"))
        return ids, "mat"
    pngs = sorted(p.stem for p in sbd_root.glob("*.png"))
    if pngs:
        return pngs, "png"
    raise FileNotFoundError(
        f"{sbd_root} is neither SBD (no dataset/cls/*.mat under it) nor a folder of "
        "SegmentationClassAug PNG masks"
    )


def build_train_aug(root, sbd_root=None, write: bool = False) -> list[str]:
    """The 10,582-image ``train_aug`` list: (VOC train ∪ SBD train ∪ SBD val) minus VOC val.

    ``sbd_root`` is SBD's ``benchmark_RELEASE`` (or its ``dataset/``) folder with
    ``cls/*.mat`` and ``train.txt``/``val.txt``, or an already converted
    ``SegmentationClassAug/`` folder; by default ``root/SegmentationClassAug`` when present.
    Order: VOC train ids first, then the SBD ids in their list order, without duplicates.
    ``write=True`` also writes ``ImageSets/Segmentation/train_aug.txt`` (atomically).
    """
    root = resolve_root(root)
    if sbd_root is None:
        if (root / "SegmentationClassAug").is_dir():
            sbd_root = root / "SegmentationClassAug"
        else:
            raise FileNotFoundError(
                f"cannot build train_aug for {root}: no ImageSets/Segmentation/train_aug.txt, no "
                "SegmentationClassAug/ folder, and no sbd_root given (SBD's dataset/cls/*.mat)"
            )
    train = read_id_list(split_list_path(root, "train"))
    val = set(read_id_list(split_list_path(root, "val")))
    sbd, _ = _sbd_ids(sbd_root)
    seen: set[str] = set()
    out = []
    for i in list(train) + list(sbd):
        if i in val or i in seen:
            continue
        seen.add(i)
        out.append(i)
    if write:
        write_id_list(root / "ImageSets" / "Segmentation" / "train_aug.txt", out)
    return out


def convert_sbd(sbd_root, out_dir, ids: Iterable[str] | None = None, progress: bool = True) -> Path:
    """Write SBD's ``cls/*.mat`` masks as VOC palette PNGs into ``out_dir`` (e.g.
    ``VOC2012/SegmentationClassAug``). Existing PNGs are kept (resumable)."""
    from tqdm.auto import tqdm

    sbd_root = Path(sbd_root).expanduser()
    ds = _sbd_dataset_dir(sbd_root)
    if ds is None:
        raise FileNotFoundError(f"{sbd_root} has no dataset/cls/ folder (expected SBD's benchmark_RELEASE)")
    ids = list(ids) if ids is not None else sorted(p.stem for p in (ds / "cls").glob("*.mat"))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i in tqdm(ids, desc="SBD .mat → PNG", disable=not progress):
        dst = out_dir / f"{i}.png"
        if not dst.exists():
            save_mask(dst, read_sbd_mat(ds / "cls" / f"{i}.mat"))
    return out_dir
