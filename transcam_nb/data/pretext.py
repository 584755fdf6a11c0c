"""Formula-driven pretext images: procedural texture scenes, a stand-in for ImageNet.

The paper fine-tunes a Conformer that was pretrained on ImageNet; its premise is that the
attention of such a network behaves like feature affinity (shallow blocks group similar
textures, deep blocks group the parts of one object), so ``A @ CAM`` (Eq. 5) spreads class
evidence over whole objects. The tiny profile cannot download ImageNet weights, and a network
trained from scratch on the WSSS task does not have that attention (docs/tiny-findings.md part 1). So
the tiny profile pretrains its backbone on images drawn from formulas, following
formula-driven supervised learning (Kataoka et al., ACCV 2020, FractalDB; Nakashima et al.,
AAAI 2022). No natural image, no WSSS image and no WSSS mask is involved: every image below
is drawn from a seed by this module.

The pretext: texture scenes
---------------------------
``num_classes`` (default 50) fixed procedural *texture classes*. Class ``c`` is drawn once,
from ``numpy.random.default_rng([CLASS_SEED, c])``: a pattern type (hard stripes, checker,
dots, soft waves, plaid, speckle, zigzag, grid lines), two colours, a period (4-18 px) and an
orientation. Each occurrence jitters colour (±0.05), orientation (±0.3 rad), period (±15 %)
and phase, so a class is a *texture family*, not a template.

A scene (``image_size`` px, default 128) holds 2-4 distinct classes:

* 1-3 **stuff** classes fill the regions of a Voronoi partition with wavy borders (3-6
  regions, each region one of the stuff classes);
* the other classes are **things**: irregular blobs with semi-axes 0.12-0.3 of the image
  side. With probability ``part_prob`` (0.5) a thing carries a **part**: a smaller blob
  (0.3-0.5 of its radius, off-centre) drawn with the class's own *part texture* (a second
  pattern of the class with other colours). The part belongs to the thing: its pixels have
  the thing's class. This is the formula-driven analogue of "an object is made of dissimilar
  parts that share one label".
* global shading and Gaussian pixel noise (σ 0.01-0.03).

Supervision, both computed from the drawing (never from WSSS data):

* the **image label**: a multi-hot vector of the classes covering more than
  ``min_fraction`` (2 %) of the image (what the WSSS stage also sees);
* the **class map**: ``H × W`` int, the class of every pixel. The pretraining stage can use it
  as dense (per-token) supervision, which asks tokens of one region, and both parts of one
  thing, to carry the same class: the affinity the paper attributes to ImageNet pretraining.

Determinism: scene ``i`` of a stream comes from ``default_rng([seed, STREAM_CODE, i])`` and
depends on nothing else (not on batch size, worker count or order). ``PRETEXT_VERSION``
changes whenever the drawing changes; it enters the pretraining config hash, so the shipped
weights are known to be stale when it moves (tests/test_pretrain.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = [
    "PRETEXT_VERSION",
    "PATTERN_TYPES",
    "TextureClass",
    "texture_classes",
    "render_texture",
    "render_scene",
    "scene_labels",
    "PretextStream",
]

#: bump whenever any drawing below changes (it is part of the pretraining config hash)
PRETEXT_VERSION = 1

#: fixed seed of the class table (the classes are the same for every scene seed)
CLASS_SEED = 20201130
STREAM_CODE = 7

PATTERN_TYPES = ("stripes", "checker", "dots", "waves", "plaid", "speckle", "zigzag", "grid")


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], np.float32)


@dataclass(frozen=True)
class TextureClass:
    """One procedural texture: pattern type, two colours, period (px at 128 px), angle (rad)."""

    kind: str
    colour_a: tuple
    colour_b: tuple
    period: float
    angle: float


def _draw_texture(rng: np.random.Generator) -> TextureClass:
    kind = PATTERN_TYPES[int(rng.integers(len(PATTERN_TYPES)))]
    h = float(rng.uniform())
    a = _hsv(h, float(rng.uniform(0.2, 0.9)), float(rng.uniform(0.2, 0.95)))
    # the second colour: another hue or another value, never nearly the same colour
    for _ in range(50):
        b = _hsv(float(rng.uniform()), float(rng.uniform(0.0, 0.9)), float(rng.uniform(0.1, 1.0)))
        if np.linalg.norm(a - b) > 0.35:
            break
    return TextureClass(kind, tuple(float(v) for v in a), tuple(float(v) for v in b),
                        float(rng.uniform(4.0, 18.0)), float(rng.uniform(0, math.pi)))


_CLASS_CACHE: dict = {}


def texture_classes(num_classes: int = 50) -> list[tuple[TextureClass, TextureClass]]:
    """The class table: ``(body texture, part texture)`` for classes ``0 .. num_classes-1``.
    Class ``c`` depends only on ``c`` (adding classes does not change the earlier ones)."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    out = []
    for c in range(num_classes):
        if c not in _CLASS_CACHE:
            rng = np.random.default_rng([CLASS_SEED, c])
            _CLASS_CACHE[c] = (_draw_texture(rng), _draw_texture(rng))
        out.append(_CLASS_CACHE[c])
    return out


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    ny, nx = max(2, int(math.ceil(h / cell)) + 1), max(2, int(math.ceil(w / cell)) + 1)
    small = rng.standard_normal((ny, nx)).astype(np.float32)
    big = np.asarray(Image.fromarray(small, mode="F").resize((w, h), Image.BICUBIC), np.float32)
    return big / (big.std() + 1e-6)


def render_texture(tex: TextureClass, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray,
                   scale: float = 1.0) -> np.ndarray:
    """One occurrence of ``tex`` at pixel coordinates ``yy, xx`` (same shape): float32 RGB
    ``[..., 3]`` in about [0, 1], with per-occurrence jitter (colour ±0.05, angle ±0.3 rad,
    period ±15 %, random phase). ``scale`` multiplies the period (image size / 128)."""
    jit = lambda: rng.uniform(-0.05, 0.05, 3).astype(np.float32)
    ca = np.clip(np.asarray(tex.colour_a, np.float32) + jit(), 0, 1)
    cb = np.clip(np.asarray(tex.colour_b, np.float32) + jit(), 0, 1)
    ang = tex.angle + float(rng.uniform(-0.3, 0.3))
    per = tex.period * scale * float(rng.uniform(0.85, 1.15))
    ph1, ph2 = float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0, 2 * math.pi))
    u = xx * math.cos(ang) + yy * math.sin(ang)
    v = -xx * math.sin(ang) + yy * math.cos(ang)
    k = 2 * math.pi / per
    kind = tex.kind
    if kind == "stripes":
        f = (np.sin(u * k + ph1) > 0).astype(np.float32)
    elif kind == "checker":
        f = ((np.sin(u * k + ph1) * np.sin(v * k + ph2)) > 0).astype(np.float32)
    elif kind == "dots":
        fu = np.mod(u / per + ph1 / (2 * math.pi), 1.0) - 0.5
        fv = np.mod(v / per + ph2 / (2 * math.pi), 1.0) - 0.5
        f = np.clip((0.3 - np.sqrt(fu * fu + fv * fv)) * per + 0.5, 0, 1).astype(np.float32)
    elif kind == "waves":
        f = (0.5 + 0.5 * np.sin(u * k + ph1)).astype(np.float32)
    elif kind == "plaid":
        f = (0.5 * (0.5 + 0.5 * np.sin(u * k + ph1)) + 0.5 * (0.5 + 0.5 * np.sin(v * k * 0.7 + ph2))).astype(np.float32)
    elif kind == "speckle":
        y0, x0 = int(yy.min()), int(xx.min())
        field = _smooth_noise(rng, int(yy.max()) - y0 + 1, int(xx.max()) - x0 + 1, max(2.0, per / 2.5))
        f = (field[(yy - y0).astype(np.int64), (xx - x0).astype(np.int64)] > 0).astype(np.float32)
    elif kind == "zigzag":
        tri = np.abs(np.mod(v / per + ph2 / (2 * math.pi), 1.0) - 0.5) * per
        f = (np.sin((u + tri) * k + ph1) > 0).astype(np.float32)
    elif kind == "grid":
        fu = np.abs(np.mod(u / per + ph1 / (2 * math.pi), 1.0) - 0.5)
        fv = np.abs(np.mod(v / per + ph2 / (2 * math.pi), 1.0) - 0.5)
        f = ((np.maximum(fu, fv) > 0.36)).astype(np.float32)
    else:  # pragma: no cover
        raise ValueError(kind)
    return ca * (1 - f[..., None]) + cb * f[..., None]


def _blob_mask(rng, S: int, cy: float, cx: float, R: float, yy, xx) -> np.ndarray:
    """An irregular blob (ellipse with a wobbled rim) as a bool S×S mask."""
    aspect = float(rng.uniform(0.55, 1.0))
    ang = float(rng.uniform(0, math.pi))
    harm = [(k, float(rng.uniform(-0.08, 0.08)), float(rng.uniform(0, 2 * math.pi))) for k in (2, 3, 5)]
    dy, dx = yy + 0.5 - cy, xx + 0.5 - cx
    th = np.arctan2(dy, dx) - ang
    rim = R / np.sqrt(np.cos(th) ** 2 + (np.sin(th) / aspect) ** 2)
    wob = 1.0
    for k, a, p in harm:
        wob = wob + a * np.cos(k * th + p)
    return np.sqrt(dx * dx + dy * dy) <= rim * wob


_GRID: dict = {}


def _grid(S: int):
    if S not in _GRID:
        yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
        _GRID[S] = (yy, xx)
    return _GRID[S]


def render_scene(seed: int, index: int, image_size: int = 128, num_classes: int = 50,
                 part_prob: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Draw pretext scene ``index`` of stream ``seed``.

    Returns ``(image uint8 S×S×3, class map int16 S×S)``; the class map holds the texture
    class (0-based) of every pixel (a thing's part carries the thing's class). The same
    arguments always give the same result.
    """
    S = int(image_size)
    if S < 32:
        raise ValueError(f"image_size must be at least 32 px, got {image_size}")
    classes_tab = texture_classes(num_classes)
    rng = np.random.default_rng([int(seed), STREAM_CODE, int(index)])
    yy, xx = _grid(S)
    scale = S / 128.0
    n_cls = int(rng.integers(2, 5))  # 2-4 classes
    chosen = rng.choice(num_classes, size=n_cls, replace=False).tolist()
    n_stuff = int(rng.integers(1, min(3, n_cls - 1) + 1))  # 1-3 stuff, at least one thing
    stuff, things = chosen[:n_stuff], chosen[n_stuff:]

    img = np.zeros((S, S, 3), np.float32)
    cmap = np.zeros((S, S), np.int16)
    # stuff: Voronoi regions with wavy borders, each region one stuff class (all classes used)
    n_reg = int(rng.integers(max(3, n_stuff), 7))
    seeds = rng.uniform(0, S, size=(n_reg, 2)).astype(np.float32)
    wy = _smooth_noise(rng, S, S, S / 3) * (S * 0.06)
    wx = _smooth_noise(rng, S, S, S / 3) * (S * 0.06)
    d = (yy[None] + wy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] + wx[None] - seeds[:, 1, None, None]) ** 2
    region = np.argmin(d, axis=0)
    owner = list(range(n_stuff)) + rng.integers(0, n_stuff, size=n_reg - n_stuff).tolist()
    for r in range(n_reg):
        sel = region == r
        if not sel.any():
            continue
        c = stuff[owner[r]]
        img[sel] = render_texture(classes_tab[c][0], rng, yy[sel], xx[sel], scale)
        cmap[sel] = c
    # things: irregular blobs, some with a part of the class's part texture
    for c in things:
        R = float(rng.uniform(0.12, 0.3)) * S
        cy, cx = float(rng.uniform(0.15 * S, 0.85 * S)), float(rng.uniform(0.15 * S, 0.85 * S))
        body = _blob_mask(rng, S, cy, cx, R, yy, xx)
        img[body] = render_texture(classes_tab[c][0], rng, yy[body], xx[body], scale)
        cmap[body] = c
        if rng.random() < part_prob:
            r2 = R * float(rng.uniform(0.3, 0.5))
            psi, dist = float(rng.uniform(0, 2 * math.pi)), R * float(rng.uniform(0.1, 0.4))
            part = _blob_mask(rng, S, cy + dist * math.sin(psi), cx + dist * math.cos(psi), r2, yy, xx) & body
            if part.any():
                img[part] = render_texture(classes_tab[c][1], rng, yy[part], xx[part], scale)
    # global shading and noise
    gy, gx = rng.uniform(-0.25, 0.25, 2)
    img = img * (1 + gy * (yy / S - 0.5) + gx * (xx / S - 0.5))[..., None]
    img = img + rng.standard_normal(img.shape).astype(np.float32) * float(rng.uniform(0.01, 0.03))
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8), cmap


def scene_labels(cmap: np.ndarray, num_classes: int, min_fraction: float = 0.02) -> np.ndarray:
    """Multi-hot float32 label of a class map: classes covering more than ``min_fraction``."""
    frac = np.bincount(np.asarray(cmap, np.int64).ravel(), minlength=num_classes)[:num_classes] / cmap.size
    return (frac > min_fraction).astype(np.float32)


class PretextStream:
    """An endless, indexable stream of pretext scenes (a ``torch`` map-style dataset).

    ``stream[i]`` → ``(image float32 [3, S, S] ImageNet-normalised, (label float32 [K],
    class map int64 [S, S]))``: an ``(input, target)`` pair, as the training loop
    (:func:`transcam_nb.engine.train_loop`) expects. Scene ``i`` is :func:`render_scene` ``(seed, i, ...)``;
    a random horizontal flip (drawn from the same generator) is applied to image and map.
    ``len(stream)`` is ``length`` (default: 10**9, effectively endless: a step-based schedule
    reads scenes ``step·B … step·B + B - 1``).
    """

    def __init__(self, seed: int = 0, image_size: int = 128, num_classes: int = 50, part_prob: float = 0.5,
                 min_fraction: float = 0.02, length: int = 10**9):
        self.seed, self.image_size, self.num_classes = int(seed), int(image_size), int(num_classes)
        self.part_prob, self.min_fraction, self.length = float(part_prob), float(min_fraction), int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        import torch

        from .transforms import normalize

        if not 0 <= i < self.length:
            raise IndexError(i)
        img, cmap = render_scene(self.seed, i, self.image_size, self.num_classes, self.part_prob)
        if np.random.default_rng([self.seed, STREAM_CODE + 1, int(i)]).random() < 0.5:
            img, cmap = img[:, ::-1], cmap[:, ::-1]
        lab = scene_labels(cmap, self.num_classes, self.min_fraction)
        return (torch.from_numpy(normalize(np.ascontiguousarray(img))),
                (torch.from_numpy(lab), torch.from_numpy(np.ascontiguousarray(cmap).astype(np.int64))))

    def batch(self, step: int, batch_size: int, start: int = 0):
        """Scenes ``start + step·B … start + step·B + B - 1`` stacked:
        ``(x [B,3,S,S], y [B,K], cmap [B,S,S])``."""
        import torch

        items = [self[start + step * batch_size + j] for j in range(batch_size)]
        xs = torch.stack([it[0] for it in items])
        ys = torch.stack([it[1][0] for it in items])
        cms = torch.stack([it[1][1] for it in items])
        return xs, ys, cms
