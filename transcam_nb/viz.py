"""Figures for the book: overlays, label maps, attention for a reference point, grids, curves.

Every function draws into a Matplotlib axes (``ax=``, created when omitted) and returns it or
the figure, so notebooks can compose them. Inputs are NumPy arrays or tensors: images as
``H x W x 3`` uint8, CAMs as ``H x W`` floats in [0, 1], label maps as ``H x W`` integers
(0 background, 1..K classes, 255 ignore).
"""
from __future__ import annotations

from functools import partial
from typing import Mapping, Sequence

import numpy as np

__all__ = ["colorize_labels", "show_image", "show_cam", "show_labels", "show_map", "show_attention_point",
           "image_grid", "image_mask_gallery", "label_row", "cam_gallery", "plot_stages", "plot_curves", "plot_tau_curve",
           "plot_attention_shares"]


def _np(x):
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().float().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(x)


def colorize_labels(labels) -> np.ndarray:
    """Label map → ``H x W x 3`` uint8 with the VOC palette (255 shown white-ish)."""
    from .data.voc import VOC_PALETTE  # one palette implementation, in data/ (255 = void colour)

    lab = _np(labels).astype(np.int64)
    pal = np.asarray(VOC_PALETTE, dtype=np.uint8).reshape(256, 3)
    return pal[np.clip(lab, 0, 255)]


def _ax(ax, figsize=(3, 3)):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=figsize)
    return ax


def show_image(image, ax=None, title: str | None = None):
    ax = _ax(ax)
    ax.imshow(_np(image).astype(np.uint8) if _np(image).dtype != np.float32 else _np(image))
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def show_cam(image, cam, ax=None, title: str | None = None, alpha: float = 0.55, cmap: str = "jet"):
    """Overlay a ``H x W`` map in [0, 1] (resized to the image if needed) on the image."""
    import torch
    import torch.nn.functional as F

    ax = _ax(ax)
    img = _np(image)
    c = _np(cam).astype(np.float32)
    if c.shape != img.shape[:2]:
        c = F.interpolate(torch.from_numpy(c)[None, None], size=img.shape[:2], mode="bilinear",
                          align_corners=False)[0, 0].numpy()
    ax.imshow(img.astype(np.uint8))
    ax.imshow(np.clip(c, 0, 1), cmap=cmap, alpha=alpha, vmin=0, vmax=1)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def show_labels(labels, image=None, ax=None, title: str | None = None, alpha: float = 0.6):
    """Show a label map with the VOC palette, over the image when given."""
    ax = _ax(ax)
    col = colorize_labels(labels)
    if image is not None:
        img = _np(image).astype(np.float32)
        mix = (1 - alpha) * img + alpha * col
        mix[_np(labels) == 0] = img[_np(labels) == 0]
        ax.imshow(mix.astype(np.uint8))
    else:
        ax.imshow(col)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def show_map(image, m, ax=None, title: str | None = None):
    """One map over ``image``: integers (or booleans) as a label map, floats as a CAM heat map."""
    kind = _np(m).dtype
    if np.issubdtype(kind, np.integer) or kind == bool:
        return show_labels(_np(m).astype(np.int64), image, ax, title=title)
    return show_cam(image, m, ax, title=title)


def show_attention_point(image, attn, point_yx: tuple[int, int], grid_hw: tuple[int, int], ax=None,
                         title: str | None = None):
    """Attention of one reference location (the paper's Fig. 3).

    ``attn`` is a patch-to-patch map ``[h*w, h*w]`` (class token already dropped) or a full
    ``[N, N]`` map with the class token at 0 (dropped here). ``point_yx`` is a pixel position in
    ``image``; its token row is shown as a heat map over the image, and the point is marked.
    """
    a = _np(attn)
    h, w = grid_hw
    if a.shape[0] == h * w + 1:
        a = a[1:, 1:]
    if a.shape != (h * w, h * w):
        raise ValueError(f"attention of shape {a.shape} does not fit a {h}x{w} token grid")
    img = _np(image)
    H, W = img.shape[:2]
    ty = min(int(point_yx[0] * h / H), h - 1)
    tx = min(int(point_yx[1] * w / W), w - 1)
    row = a[ty * w + tx].reshape(h, w)
    row = (row - row.min()) / (row.max() - row.min() + 1e-12)
    ax = show_cam(img, row, ax=ax, title=title)
    ax.plot([point_yx[1]], [point_yx[0]], marker="*", color="white", markersize=12, markeredgecolor="black")
    return ax


def image_grid(rows: Sequence[Sequence], titles: Sequence[Sequence[str]] | None = None, size: float = 2.2,
               row_labels: Sequence[str] | None = None):
    """A grid of panels: ``rows[i][j]`` is a callable ``f(ax)`` that draws one panel."""
    import matplotlib.pyplot as plt

    nr, nc = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(nr, nc, figsize=(size * nc, size * nr), squeeze=False)
    for i, r in enumerate(rows):
        for j in range(nc):
            ax = axes[i][j]
            if j < len(r) and r[j] is not None:
                r[j](ax)
                if titles is not None and titles[i][j]:
                    ax.set_title(titles[i][j], fontsize=9)
            ax.set_axis_off()
        if row_labels is not None:
            axes[i][0].text(-0.05, 0.5, row_labels[i], transform=axes[i][0].transAxes, rotation=90,
                            va="center", ha="right", fontsize=9)
    fig.tight_layout()
    return fig


def image_mask_gallery(images: Sequence, masks: Sequence, titles: Sequence[str] | None = None,
                       size: float = 2.2):
    """Two rows: the images, and under each its label map drawn over it (VOC palette)."""
    rows = [[partial(show_image, im) for im in images],
            [partial(show_labels, m, im) for im, m in zip(images, masks)]]
    head = list(titles) if titles is not None else [""] * len(images)
    return image_grid(rows, titles=[head, [""] * len(images)], size=size, row_labels=["image", "mask"])


def label_row(image, label_maps: Mapping[str, object], size: float = 2.2):
    """One row: each named label map over the same image (e.g. ground truth, several τ, or the
    pipeline's stages), titled with its name."""
    rows = [[partial(show_labels, m, image) for m in label_maps.values()]]
    return image_grid(rows, titles=[list(label_maps)], size=size)


def cam_gallery(images: Sequence, columns: Mapping[str, Sequence], size: float = 2.2):
    """A gallery of CAM / TransCAM / labels for given images: one row per image, the image first,
    then one panel per named column. ``columns[name][i]`` is image ``i``'s map: a float map in
    [0, 1] is drawn as a heat map over the image, an integer map as a label map (``show_map``);
    ``None`` leaves the panel empty."""
    rows = []
    for i, im in enumerate(images):
        row = [partial(show_image, im)]
        for maps in columns.values():
            row.append(None if maps[i] is None else partial(show_map, im, maps[i]))
        rows.append(row)
    titles = [["image", *columns]] * len(images)
    return image_grid(rows, titles=titles, size=size)


def plot_curves(df, x: str, ys: Sequence[str], ax=None, title: str | None = None, smooth: int = 1):
    """Training curves from a metrics log (a pandas DataFrame); ``smooth`` is a moving-average window."""
    ax = _ax(ax, figsize=(5, 3))
    for y in ys:
        if y not in df:
            continue
        s = df[[x, y]].dropna()
        vals = s[y].rolling(smooth, min_periods=1).mean() if smooth > 1 else s[y]
        ax.plot(s[x], vals, label=y)
    ax.set_xlabel(x)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def plot_tau_curve(curves: dict, ax=None, fixed_tau: float | None = None, title: str | None = None):
    """mIoU against the background threshold τ: ``curves = {name: (taus, mious)}``. The best τ
    of each curve is marked (chosen on ground truth, so optimistic); ``fixed_tau`` is drawn as
    a vertical line (chosen in advance)."""
    ax = _ax(ax, figsize=(5, 3.2))
    for name, (taus, mious) in curves.items():
        taus, mious = np.asarray(taus), np.asarray(mious)
        line, = ax.plot(taus, 100 * mious, label=name)
        i = int(np.argmax(mious))
        ax.plot(taus[i], 100 * mious[i], "o", color=line.get_color())
    if fixed_tau is not None:
        ax.axvline(fixed_tau, color="gray", ls="--", lw=1, label=f"fixed τ = {fixed_tau:.2f}")
    ax.set_xlabel("background threshold τ")
    ax.set_ylabel("mIoU (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def plot_stages(ours: Mapping[str, float], paper: Mapping[str, float] | None = None, ax=None,
                title: str | None = None):
    """mIoU (%) after each stage of the pipeline, in order, as bars; ``paper`` (same stage
    names, a subset is fine) adds the paper's reported numbers as hollow bars beside them."""
    ax = _ax(ax, figsize=(6.5, 3.2))
    names = list(ours)
    xs = np.arange(len(names))
    width = 0.4 if paper else 0.6
    bars = ax.bar(xs - (width / 2 if paper else 0), [ours[n] for n in names], width=width, label="ours")
    ax.bar_label(bars, fmt="%.1f", fontsize=7)
    if paper:
        have = [i for i, n in enumerate(names) if n in paper]
        ax.bar(xs[have] + width / 2, [paper[names[i]] for i in have], width=width, fill=False,
               edgecolor="gray", hatch="//", label="paper (VOC 2012)")
    ax.set_xticks(xs, names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("mIoU (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def plot_attention_shares(diagnostics: Mapping[str, Mapping], size: float = 3.6):
    """The attention diagnostic (:func:`transcam_nb.diagnostics.attention_diagnostic`) of one or
    more models side by side: per block, the share of an object query's attention that stays on
    its own object (left) and of a background query's that stays on background (right), one
    line per model, the uniform-attention baseline dashed. ``diagnostics = {name: result}``.
    Returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(2 * size, 0.8 * size), sharex=True)
    panels = [("obj_to_own", "object → own object"), ("bg_to_bg", "background → background")]
    for ax, (key, title) in zip(axes, panels):
        for i, (name, d) in enumerate(diagnostics.items()):
            vals = np.asarray(d[key], dtype=float)
            ax.plot(np.arange(1, vals.size + 1), vals, marker="o", ms=3, label=name)
            if i == 0:
                ax.axhline(d[f"{key}_uniform"], color="gray", ls="--", lw=1, label="uniform attention")
        ax.set_xlabel("block")
        ax.set_ylabel("share of the attention row")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_head_weights(weights, ax=None, title: str | None = None):
    """A heat map of per-block, per-head weights (``[blocks, heads]``, e.g. the learned
    aggregation of :mod:`transcam_nb.aggregation`): blocks down (1 = shallowest), heads across,
    each cell labelled with its weight in percent."""
    w = 100 * _np(weights)
    ax = _ax(ax, figsize=(0.6 * w.shape[1] + 2.2, 0.3 * w.shape[0] + 1.2))
    im = ax.imshow(w, cmap="viridis", aspect="auto")
    ax.set_xticks(range(w.shape[1]), [str(h + 1) for h in range(w.shape[1])])
    ax.set_yticks(range(w.shape[0]), [str(b + 1) for b in range(w.shape[0])])
    ax.set_xlabel("head")
    ax.set_ylabel("block")
    for (b, h), v in np.ndenumerate(w):
        ax.text(h, b, f"{v:.1f}", ha="center", va="center", fontsize=7,
                color="white" if v < 0.6 * w.max() else "black")
    ax.figure.colorbar(im, ax=ax, fraction=0.05, label="weight (%)")
    if title:
        ax.set_title(title, fontsize=10)
    return ax
