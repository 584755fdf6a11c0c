"""Segmentation metrics: confusion matrix, IoU / mIoU, per-class tables, the τ sweep.

The metric is the one of the authors' ``evaluation.py`` (docs/reference.md §5):

* pixels whose ground truth is ``ignore_index`` (255) are skipped;
* per class ``c``, the predicted (``P``), true (``T``) and true-positive (``TP``) pixel counts
  are **accumulated over the whole dataset** (a dataset-level confusion count, not a mean of
  per-image IoUs);
* ``IoU_c = TP / (T + P - TP + 1e-10)`` and ``mIoU`` is the mean over **all** classes, the
  background included. A class with ``T = P = 0`` (absent from the data and never predicted)
  therefore counts as IoU 0, exactly as in the reference. :meth:`ConfusionMatrix.miou` can
  also average over the classes that occur (``present_only=True``), reported separately.

Predicted values outside ``[0, num_classes)`` (for example 255 in a PNG whose producer marked
pixels as "unsure") are not a prediction of any class: they count in ``T`` of the true class
and nowhere else, as in the reference formula.

The background threshold τ (paper Eq. 7) is chosen by the authors with a sweep over
``0.00, 0.01, …, 0.59`` that reads the ground truth (docs/reference.md §5). That flatters the
number; :class:`ThresholdSweep` returns the whole curve and the best τ, and
:func:`evaluate_labels` / a sweep's :meth:`SweepResult.at` give the mIoU at a τ fixed in
advance. Report both.

The package has **one** τ grid, :data:`DEFAULT_THRESHOLDS` = ``0.00, 0.01, …, 0.90``: it holds
the authors' 0–0.59 sweep and is wide enough for the tiny profile, whose CAMs peak near 0.6.
Every sweep result is summarised by :func:`sweep_summary` in one shape, with **fractions**
(mIoU in [0, 1]); percent appears only where numbers are displayed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from .config import VOC_CLASSES

__all__ = [
    "ConfusionMatrix",
    "ThresholdSweep",
    "SweepResult",
    "DEFAULT_THRESHOLDS",
    "sweep_grid",
    "sweep_summary",
    "evaluate_labels",
]


#: the one τ grid: t = i / 100 for i in 0..90 (contains the authors' 0..59, evaluation.py --curve)
DEFAULT_THRESHOLDS = tuple(i / 100.0 for i in range(91))

_EPS = 1e-10  # the reference's denominator epsilon


def _to_numpy(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype.kind not in "iub":
        if x.dtype.kind == "f" and np.all(np.mod(x, 1) == 0):
            x = x.astype(np.int64)
        else:
            raise TypeError(f"{name} must hold integer class labels, got dtype {x.dtype}")
    return x


class ConfusionMatrix:
    """Dataset-level confusion counts for ``num_classes`` classes (docs/reference.md §5).

    ``mat[t, p]`` counts pixels of true class ``t`` predicted as ``p``; an extra last column
    counts pixels whose prediction is outside ``[0, num_classes)``. Use :meth:`update` once per
    image; :meth:`merge` / ``+`` combine matrices of shards.
    """

    def __init__(self, num_classes: int = 21, ignore_index: int | None = 255,
                 class_names: Sequence[str] | None = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        if class_names is None:
            class_names = (("background",) + VOC_CLASSES if num_classes == len(VOC_CLASSES) + 1
                           else [str(i) for i in range(num_classes)])
        if len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for {num_classes} classes")
        self.class_names = list(class_names)
        self.mat = np.zeros((self.num_classes, self.num_classes + 1), dtype=np.int64)

    # -- accumulation ------------------------------------------------------------------
    def update(self, pred, gt) -> "ConfusionMatrix":
        """Add one image (or a batch): ``pred`` and ``gt`` integer arrays of the same shape."""
        pred = _to_numpy(pred, "pred")
        gt = _to_numpy(gt, "gt")
        if pred.shape != gt.shape:
            raise ValueError(f"pred shape {pred.shape} does not match gt shape {gt.shape}")
        keep = self._valid(gt)
        self._add(gt.reshape(-1)[keep].astype(np.int64), pred.reshape(-1)[keep].astype(np.int64))
        return self

    def _valid(self, gt: np.ndarray) -> np.ndarray:
        """Flat mask of the non-ignored pixels; checks the remaining ground-truth values."""
        flat = gt.reshape(-1)
        keep = flat != self.ignore_index if self.ignore_index is not None else np.ones(flat.shape, bool)
        g = flat[keep]
        if g.size and (g.min() < 0 or g.max() >= self.num_classes):
            bad = np.unique(g[(g < 0) | (g >= self.num_classes)])
            raise ValueError(
                f"ground truth holds values {bad[:10].tolist()} outside [0, {self.num_classes}) "
                f"that are not the ignore index {self.ignore_index}"
            )
        return keep

    def _add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """Add flat, already filtered int64 ``gt`` and ``pred`` pixels."""
        C = self.num_classes
        pred = np.where((pred >= 0) & (pred < C), pred, C)
        self.mat += np.bincount(gt * (C + 1) + pred, minlength=C * (C + 1)).reshape(C, C + 1)

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes}-class and {self.num_classes}-class matrices")
        self.mat += other.mat
        return self

    def __add__(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        out = ConfusionMatrix(self.num_classes, self.ignore_index, self.class_names)
        out.mat = self.mat.copy()
        return out.merge(other)

    def reset(self) -> None:
        self.mat[:] = 0

    # -- counts and scores -------------------------------------------------------------
    @property
    def tp(self) -> np.ndarray:
        """True positives per class (``TP``)."""
        return np.diag(self.mat[:, : self.num_classes]).copy()

    @property
    def pred_count(self) -> np.ndarray:
        """Predicted pixels per class (``P``), over non-ignored pixels."""
        return self.mat[:, : self.num_classes].sum(0)

    @property
    def true_count(self) -> np.ndarray:
        """Ground-truth pixels per class (``T``), over non-ignored pixels."""
        return self.mat.sum(1)

    def iou(self) -> np.ndarray:
        """Per-class IoU ``TP / (T + P - TP + 1e-10)`` (float64, length ``num_classes``)."""
        tp = self.tp.astype(np.float64)
        return tp / (self.true_count + self.pred_count - tp + _EPS)

    def miou(self, present_only: bool = False) -> float:
        """Mean IoU over all classes (the reference), or over the classes with ``T + P > 0``."""
        iou = self.iou()
        if present_only:
            present = (self.true_count + self.pred_count) > 0
            return float(iou[present].mean()) if present.any() else 0.0
        return float(iou.mean())

    def pixel_accuracy(self) -> float:
        total = self.mat.sum()
        return float(self.tp.sum() / total) if total else 0.0

    def table(self):
        """A pandas DataFrame: one row per class (IoU, TP, P, T, precision, recall) plus ``mean``."""
        import pandas as pd

        tp, p, t = self.tp, self.pred_count, self.true_count
        with np.errstate(invalid="ignore", divide="ignore"):
            prec = np.where(p > 0, tp / np.maximum(p, 1), np.nan)
            rec = np.where(t > 0, tp / np.maximum(t, 1), np.nan)
        df = pd.DataFrame(
            {"class": self.class_names, "IoU": self.iou(), "TP": tp, "P": p, "T": t,
             "precision": prec, "recall": rec}
        )
        df.index.name = "id"
        mean = pd.DataFrame(
            {"class": ["mean"], "IoU": [self.miou()], "TP": [tp.sum()], "P": [p.sum()], "T": [t.sum()],
             "precision": [np.nan], "recall": [np.nan]},
            index=pd.Index(["mIoU"], name="id"),
        )
        return pd.concat([df, mean])

    def to_dict(self) -> dict:
        return {
            "miou": self.miou(),
            "miou_present": self.miou(present_only=True),
            "iou": dict(zip(self.class_names, map(float, self.iou()))),
            "TP": self.tp.tolist(),
            "P": self.pred_count.tolist(),
            "T": self.true_count.tolist(),
        }

    def __repr__(self) -> str:
        return f"ConfusionMatrix(num_classes={self.num_classes}, pixels={int(self.mat.sum())}, mIoU={self.miou():.4f})"


def evaluate_labels(pairs: Iterable[tuple], num_classes: int = 21, ignore_index: int | None = 255) -> ConfusionMatrix:
    """Accumulate a :class:`ConfusionMatrix` over ``(pred, gt)`` pairs (label maps)."""
    cm = ConfusionMatrix(num_classes, ignore_index)
    for pred, gt in pairs:
        cm.update(pred, gt)
    return cm


@dataclass
class SweepResult:
    """Outcome of a background-threshold sweep."""

    thresholds: np.ndarray  # [T]
    miou: np.ndarray  # [T], mIoU at each threshold (reference formula)
    matrices: list = field(repr=False)  # one ConfusionMatrix per threshold

    @property
    def best_index(self) -> int:
        return int(np.argmax(self.miou))  # first best, as reading the log top-down

    @property
    def best_tau(self) -> float:
        """The τ with the highest mIoU: **chosen on the ground truth** (optimistic)."""
        return float(self.thresholds[self.best_index])

    @property
    def best_miou(self) -> float:
        return float(self.miou[self.best_index])

    def at(self, tau: float) -> ConfusionMatrix:
        """The confusion matrix at a threshold of the sweep (e.g. one fixed in advance)."""
        i = np.flatnonzero(np.isclose(self.thresholds, tau, atol=1e-9, rtol=0))
        if not i.size:
            raise KeyError(f"tau={tau} is not one of the swept thresholds")
        return self.matrices[int(i[0])]

    def curve(self):
        """The whole curve as a pandas DataFrame (columns tau, mIoU)."""
        import pandas as pd

        return pd.DataFrame({"tau": self.thresholds, "mIoU": self.miou})


class ThresholdSweep:
    """Evaluate the pseudo labels of paper Eq. 7-8 at many background thresholds at once.

    Feed it, image by image, the normalised foreground CAMs (``[K, H, W]`` for the present
    classes and their class indices 0..num_fg-1, as :func:`transcam_nb.pseudo.load_cams`
    returns) and the ground-truth mask. For every τ it accumulates the confusion matrix of the
    label map ``argmax([τ, cam_0, …, cam_{num_fg-1}])`` (absent classes scored 0), which is the
    authors' evaluation. The argmax is computed once per image (max and first arg-max over
    the foreground channels), and the labels at each τ follow from one comparison with τ
    stored as float32, as the reference's float32 score tensor does; the result equals
    :func:`transcam_nb.pseudo.label_map` at every τ.
    """

    def __init__(self, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, num_classes: int = 21,
                 ignore_index: int | None = 255):
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        if self.thresholds.ndim != 1 or not self.thresholds.size:
            raise ValueError("thresholds must be a non-empty 1-D sequence")
        self.num_classes = num_classes
        self.matrices = [ConfusionMatrix(num_classes, ignore_index) for _ in self.thresholds]

    def update(self, cams, classes, gt) -> "ThresholdSweep":
        from .pseudo import foreground_argmax

        gt = _to_numpy(gt, "gt")
        fg_max, fg_arg = foreground_argmax(cams, classes, num_fg=self.num_classes - 1, shape=gt.shape)
        keep = self.matrices[0]._valid(gt)  # filter the ignored pixels once, not once per τ
        g = gt.reshape(-1)[keep].astype(np.int64)
        fm = fg_max.reshape(-1)[keep]
        fa = fg_arg.reshape(-1)[keep]
        thr32 = self.thresholds.astype(np.float32)  # the reference's score tensor is float32
        for t, cm in zip(thr32, self.matrices):
            cm._add(g, np.where(fm > t, fa, 0))
        return self

    def result(self) -> SweepResult:
        return SweepResult(self.thresholds.copy(), np.array([m.miou() for m in self.matrices]), self.matrices)


def sweep_grid(fixed_tau: float | None = None, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> tuple:
    """The τ grid with ``fixed_tau`` added (sorted, duplicates removed), for a :class:`ThresholdSweep`."""
    taus = {round(float(t), 10) for t in thresholds}
    if fixed_tau is not None:
        taus.add(round(float(fixed_tau), 10))
    return tuple(sorted(taus))


def sweep_summary(result: SweepResult, fixed_tau: float | None = None) -> dict:
    """A τ sweep in the package's one shape, all mIoUs as fractions::

        {"taus": [...], "mious": [...], "best_tau": τ*, "best_miou": mIoU(τ*),
         "fixed_tau": τ0, "fixed_miou": mIoU(τ0), "iou_fixed": [IoU per class at τ0]}

    ``best_tau`` is chosen on the ground truth (optimistic); ``fixed_tau`` (a τ of the sweep,
    fixed in advance) gives the honest number. Without ``fixed_tau`` the last three keys are
    ``None``."""
    out = {"taus": [float(t) for t in result.thresholds], "mious": [float(v) for v in result.miou],
           "best_tau": float(result.best_tau), "best_miou": float(result.best_miou),
           "fixed_tau": None, "fixed_miou": None, "iou_fixed": None}
    if fixed_tau is not None:
        cm = result.at(fixed_tau)
        out.update(fixed_tau=float(fixed_tau), fixed_miou=float(cm.miou()), iou_fixed=[float(v) for v in cm.iou()])
    return out
