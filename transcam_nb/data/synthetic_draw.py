"""Drawing the embedded benchmark: one image, its class mask, its instance mask and its
object records, deterministically from ``(seed, split, index)``.

The design (why the class is a small emblem, why the bodies are shared and ambiguous, the
decoys, the nuisance) is described in :mod:`transcam_nb.data.synthetic`, which is the public
entrance: it re-exports :func:`render`, :func:`part_pattern`, :data:`PART_PATTERNS`,
:data:`SPLITS` and :data:`GENERATOR_VERSION`, and writes the drawn images as a VOC devkit.
Bump :data:`GENERATOR_VERSION` whenever anything here changes what is drawn: it is part of
the benchmark's spec and of its cache folder name.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["GENERATOR_VERSION", "PART_PATTERNS", "SPLITS", "render", "part_pattern"]

GENERATOR_VERSION = 3

#: Emblem names = class names, in class order (K = num_classes takes the first K).
PART_PATTERNS: tuple[str, ...] = (
    "checker", "bullseye", "plus", "saltire", "hstripes", "vstripes", "triangle", "dots",
    "diamond", "frame",
)

SPLITS = {"train": 0, "val": 1, "test": 2}


# --------------------------------------------------------------------------------------
# drawing primitives
# --------------------------------------------------------------------------------------
def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], np.float32)


_INTERP: dict = {}


def _interp_taps(size: int, n: int):
    """Indices and weights (size×4) of a cubic B-spline through n control points spread over
    size px (clamped at the ends)."""
    key = (size, n)
    if key not in _INTERP:
        t = (np.arange(size, dtype=np.float64) + 0.5) / size * (n - 1)
        base = np.floor(t).astype(np.int64)
        idx = base[:, None] + np.arange(-1, 3)[None]
        d = np.abs(t[:, None] - idx)
        w = np.where(d < 1, 2 / 3 - d**2 + d**3 / 2, np.where(d < 2, (2 - d) ** 3 / 6, 0.0))
        w /= w.sum(1, keepdims=True)
        _INTERP[key] = (np.clip(idx, 0, n - 1), w.astype(np.float32))
    return _INTERP[key]


def _smooth_noise(rng: np.random.Generator, size: int, cell: float) -> np.ndarray:
    """A smooth random field on size×size with zero mean and unit std: normal noise on a grid
    of one node per ``cell`` px, interpolated by a separable cubic B-spline (4 taps a side,
    no BLAS call, so no thread start-up cost)."""
    n = max(3, int(math.ceil(size / cell)) + 1)
    idx, w = _interp_taps(size, n)
    g = rng.standard_normal((n, n), dtype=np.float32)
    rows = np.ascontiguousarray((w[:, 0, None] * g[idx[:, 0]] + w[:, 1, None] * g[idx[:, 1]]
                                 + w[:, 2, None] * g[idx[:, 2]] + w[:, 3, None] * g[idx[:, 3]]).T)  # n×size
    # second pass on the transposed rows (row gathers are contiguous); the field is isotropic,
    # so its orientation does not matter
    field = (w[:, 0, None] * rows[idx[:, 0]] + w[:, 1, None] * rows[idx[:, 1]]
             + w[:, 2, None] * rows[idx[:, 2]] + w[:, 3, None] * rows[idx[:, 3]])  # size×size
    field -= field.mean()
    return field / (field.std() + 1e-6)


def _texture(rng: np.random.Generator, win, size: int, kinds=("stripes", "checks", "blotch")):
    """A coherent texture field in about [-1, 1] over the window ``win = (y0, y1, x0, x1)`` of
    a size×size image: one kind, one period, one orientation."""
    y0, y1, x0, x1 = win
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "plain":
        return np.zeros((y1 - y0, x1 - x0), np.float32)
    if kind == "blotch":
        field = _smooth_noise(rng, size, float(rng.uniform(5, 12)))[y0:y1, x0:x1]
        return np.clip(field * 0.5, -1, 1)
    yy, xx = _grid(size)
    yy, xx = yy[y0:y1, x0:x1], xx[y0:y1, x0:x1]
    period = float(rng.uniform(5.0, 12.0))
    ang = float(rng.uniform(0, math.pi))
    ph = float(rng.uniform(0, 2 * math.pi))
    k = 2 * math.pi / period
    u = xx * (k * math.cos(ang)) + yy * (k * math.sin(ang))
    if kind == "stripes":
        return np.sin(u + ph)
    v = yy * (k * math.cos(ang)) - xx * (k * math.sin(ang))
    return np.sin(u + ph) * np.sin(v)


def part_pattern(k: int, size: int, angle: float = 0.0, supersample: int = 3) -> np.ndarray:
    """The emblem of class ``k`` rendered on a size×size tile: float32 in [0, 1]
    (1 = light figure, 0 = dark ground), anti-aliased by supersampling, rotated by ``angle``
    radians. Every pattern is symmetric under a horizontal flip."""
    n = size * supersample
    c = (np.arange(n, dtype=np.float32) + 0.5) / n * 2 - 1  # [-1, 1]
    v, u = np.meshgrid(c, c, indexing="ij")  # v: down, u: right
    ca, sa = math.cos(angle), math.sin(angle)
    u, v = u * ca + v * sa, -u * sa + v * ca
    name = PART_PATTERNS[k]
    if name == "checker":
        cu = np.clip(np.floor((u + 1) * 1.5), 0, 2)
        cv = np.clip(np.floor((v + 1) * 1.5), 0, 2)
        m = ((cu + cv) % 2) == 0
    elif name == "bullseye":
        r = np.sqrt(u * u + v * v)
        m = (r < 0.3) | ((r > 0.58) & (r < 0.9))
    elif name == "plus":
        m = (np.abs(u) < 0.27) | (np.abs(v) < 0.27)
    elif name == "saltire":
        m = (np.abs(u - v) < 0.38) | (np.abs(u + v) < 0.38)
    elif name == "hstripes":
        m = (np.floor((v + 1) * 2.5) % 2) == 0
    elif name == "vstripes":
        m = (np.abs(np.floor(np.abs(u) * 2.5 + 0.5)) % 2) == 0  # 5 bands, symmetric about u = 0
    elif name == "triangle":
        m = (v > -0.8) & (v < 0.8) & (np.abs(u) < (v + 0.8) * 0.56)
    elif name == "dots":
        m = (np.abs(u) - 0.48) ** 2 + (np.abs(v) - 0.48) ** 2 < 0.33**2
    elif name == "diamond":
        m = np.abs(u) + np.abs(v) < 0.72
    elif name == "frame":
        a = np.maximum(np.abs(u), np.abs(v))
        m = (a > 0.55) | (a < 0.2)
    else:  # pragma: no cover
        raise ValueError(name)
    m = m.astype(np.float32).reshape(size, supersample, size, supersample).mean(axis=(1, 3))
    return m


class _Blob:
    """An irregular blob: ellipse (radius R, aspect, angle) with a Fourier-wobbled rim."""

    def __init__(self, rng: np.random.Generator, cx: float, cy: float, R: float, aspect=(0.4, 0.75)):
        self.cx, self.cy, self.R = float(cx), float(cy), float(R)
        self.aspect = float(rng.uniform(*aspect))
        self.angle = float(rng.uniform(0, math.pi))
        self.harm = [(k, float(rng.uniform(-0.07, 0.07)), float(rng.uniform(0, 2 * math.pi))) for k in (2, 3, 4)]

    def radius_at(self, theta):
        """Rim radius (px) in direction ``theta`` (image frame)."""
        t = theta - self.angle
        base = 1.0 / np.sqrt(np.cos(t) ** 2 + (np.sin(t) / self.aspect) ** 2)
        wob = 1.0
        for k, a, p in self.harm:
            wob = wob + a * np.cos(k * t + p)
        return self.R * base * wob

    def window(self, size: int):
        ext = self.R * 1.25 + 2
        y0, y1 = max(0, int(self.cy - ext)), min(size, int(self.cy + ext) + 2)
        x0, x1 = max(0, int(self.cx - ext)), min(size, int(self.cx + ext) + 2)
        return y0, y1, x0, x1

    def alpha(self, size: int):
        """(window, alpha in [0, 1]) with a one-pixel anti-aliased rim."""
        y0, y1, x0, x1 = self.window(size)
        if y1 <= y0 or x1 <= x0:
            return (0, 0, 0, 0), np.zeros((0, 0), np.float32)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dy, dx = yy + 0.5 - self.cy, xx + 0.5 - self.cx
        rho = np.sqrt(dx * dx + dy * dy)
        rim = self.radius_at(np.arctan2(dy, dx))
        return (y0, y1, x0, x1), np.clip(rim - rho + 0.5, 0.0, 1.0).astype(np.float32)

    def full_area(self) -> float:
        th = np.linspace(0, 2 * math.pi, 256, endpoint=False)
        return float(0.5 * np.mean(self.radius_at(th) ** 2) * 2 * math.pi)


def _full(size: int, win, a: np.ndarray) -> np.ndarray:
    out = np.zeros((size, size), np.float32)
    y0, y1, x0, x1 = win
    out[y0:y1, x0:x1] = a
    return out


def _pick_colour(rng, avoid: Sequence[np.ndarray], sat=(0.25, 0.65), val=(0.35, 0.85), min_dist=0.22):
    """A random HSV colour at least ``min_dist`` (RGB distance) from every colour in ``avoid``
    (the farthest of 24 tries otherwise)."""
    best, best_d = None, -1.0
    av = [tuple(float(x) for x in a) for a in avoid]
    for _ in range(24):
        c = _hsv_to_rgb(float(rng.uniform()), float(rng.uniform(*sat)), float(rng.uniform(*val)))
        r, g, b = float(c[0]), float(c[1]), float(c[2])
        d = min((math.sqrt((r - a[0]) ** 2 + (g - a[1]) ** 2 + (b - a[2]) ** 2) for a in av), default=9.0)
        if d >= min_dist:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def _paint(img: np.ndarray, win, alpha: np.ndarray, colour_field: np.ndarray) -> None:
    y0, y1, x0, x1 = win
    a = alpha[..., None]
    img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - a) + colour_field * a


# --------------------------------------------------------------------------------------
# one image
# --------------------------------------------------------------------------------------
def _count_objects(rng) -> int:
    return int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2]))


_RADIUS = {1: (0.30, 0.46), 2: (0.25, 0.38), 3: (0.21, 0.31)}  # major semi-axis / image side


_GRIDS: dict = {}


def _grid(S: int):
    if S not in _GRIDS:
        yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
        yy.flags.writeable = False
        xx.flags.writeable = False
        _GRIDS[S] = (yy, xx)
    return _GRIDS[S]


def _draw_background(rng, S: int):
    yy, xx = _grid(S)
    n_reg = int(rng.integers(3, 7))
    seeds = rng.uniform(0, S, size=(n_reg, 2)).astype(np.float32)
    py = yy + _smooth_noise(rng, S, S / 3) * (S * 0.05)  # warped coordinates: wavy borders
    px = xx + _smooth_noise(rng, S, S / 3) * (S * 0.05)
    best = (py - seeds[0, 0]) ** 2 + (px - seeds[0, 1]) ** 2
    region = np.zeros((S, S), np.intp)
    for r in range(1, n_reg):  # Voronoi cells by a running minimum
        d = (py - seeds[r, 0]) ** 2 + (px - seeds[r, 1]) ** 2
        region[d < best] = r
        np.minimum(best, d, out=best)
    colours, contrast = [], np.zeros(n_reg, np.float32)
    tex = np.zeros((S, S), np.float32)
    for r in range(n_reg):
        colours.append(_pick_colour(rng, colours, sat=(0.08, 0.5), val=(0.25, 0.85), min_dist=0.12))
        kind = ("plain", "blotch", "blotch", "stripes")[int(rng.integers(4))]
        contrast[r] = float(rng.uniform(0.04, 0.14))
        if kind != "plain":
            np.copyto(tex, _texture(rng, (0, S, 0, S), S, kinds=(kind,)), where=region == r)
    table = np.stack(colours).astype(np.float32)
    img = table[region] * (1 + contrast[region] * tex)[..., None]
    # clutter: small shapes, thin lines, a few solid high-contrast blobs (no internal structure)
    for _ in range(int(rng.integers(6, 13))):
        c = _hsv_to_rgb(float(rng.uniform()), float(rng.uniform(0.05, 0.5)), float(rng.uniform(0.2, 0.9)))
        cy, cx, r = float(rng.uniform(0, S)), float(rng.uniform(0, S)), float(rng.uniform(1.5, 5.0))
        y0, y1, x0, x1 = max(0, int(cy - r - 1)), min(S, int(cy + r + 2)), max(0, int(cx - r - 1)), min(S, int(cx + r + 2))
        if y1 <= y0 or x1 <= x0:
            continue
        wy, wx = yy[y0:y1, x0:x1] + 0.5 - cy, xx[y0:y1, x0:x1] + 0.5 - cx
        if rng.random() < 0.5:
            a = np.clip(r - np.sqrt(wy * wy + wx * wx) + 0.5, 0, 1)
        else:
            a = np.clip(r - np.maximum(np.abs(wy), np.abs(wx)) + 0.5, 0, 1)
        _paint(img, (y0, y1, x0, x1), a * float(rng.uniform(0.6, 0.95)), c)
    for _ in range(int(rng.integers(0, 4))):
        c = _hsv_to_rgb(float(rng.uniform()), float(rng.uniform(0.0, 0.4)), float(rng.uniform(0.1, 0.9)))
        p0 = rng.uniform(0, S, 2)
        ang, length = float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.1, 0.3) * S)
        p1 = p0 + length * np.array([math.sin(ang), math.cos(ang)])
        width = float(rng.uniform(0.6, 1.4))
        y0, y1 = max(0, int(min(p0[0], p1[0]) - 3)), min(S, int(max(p0[0], p1[0]) + 4))
        x0, x1 = max(0, int(min(p0[1], p1[1]) - 3)), min(S, int(max(p0[1], p1[1]) + 4))
        if y1 <= y0 or x1 <= x0:
            continue
        wy, wx = yy[y0:y1, x0:x1] + 0.5 - p0[0], xx[y0:y1, x0:x1] + 0.5 - p0[1]
        dvec = p1 - p0
        t = np.clip((wy * dvec[0] + wx * dvec[1]) / float(dvec @ dvec), 0, 1)
        dist = np.sqrt((wy - t * dvec[0]) ** 2 + (wx - t * dvec[1]) ** 2)
        _paint(img, (y0, y1, x0, x1), np.clip(width - dist + 0.5, 0, 1) * 0.85, c)
    for _ in range(int(rng.integers(0, 3))):
        c = np.full(3, float(rng.choice([0.06, 0.95])), np.float32)
        cy, cx = float(rng.uniform(0, S)), float(rng.uniform(0, S))
        r = float(rng.uniform(0.035, 0.06) * S)
        y0, y1, x0, x1 = max(0, int(cy - r - 1)), min(S, int(cy + r + 2)), max(0, int(cx - r - 1)), min(S, int(cx + r + 2))
        if y1 <= y0 or x1 <= x0:
            continue
        wy, wx = yy[y0:y1, x0:x1] + 0.5 - cy, xx[y0:y1, x0:x1] + 0.5 - cx
        if rng.random() < 0.5:
            a = np.clip(r - np.sqrt(wy * wy + wx * wx) + 0.5, 0, 1)
        else:
            a = np.clip(r - np.maximum(np.abs(wy), np.abs(wx)) + 0.5, 0, 1)
        _paint(img, (y0, y1, x0, x1), a, c)
    return img, colours, yy, xx


def _body_colour_field(rng, colour, yy, xx, S, win):
    tex = _texture(rng, win, S)
    contrast = float(rng.uniform(0.08, 0.2))
    return colour[None, None] * (1 + contrast * tex[..., None])


def _place_part(rng, blob: _Blob, p: int, S: int):
    """Top-left (y, x) of a p×p tile fully inside the blob (2 px margin) and the image, placed
    towards one end of the major axis (as a head at one end of a body): 0.45–0.75 of the way
    to the rim, falling back to 0.2–0.5 and then to the centre when it does not fit."""
    half = p / 2.0
    corners = np.array([(-half, -half), (-half, half), (half, -half), (half, half)], np.float32)
    end = math.pi * float(rng.integers(2))
    for attempt in range(41):
        if attempt < 25:
            frac = float(rng.uniform(0.45, 0.75))
        elif attempt < 40:
            frac = float(rng.uniform(0.2, 0.5))
        else:
            frac = 0.0
        psi = blob.angle + end + float(rng.uniform(-0.25, 0.25))
        dist = frac * float(blob.radius_at(psi))
        cy, cx = blob.cy + dist * math.sin(psi), blob.cx + dist * math.cos(psi)
        ty, tx = int(round(cy - half)), int(round(cx - half))
        if ty < 1 or tx < 1 or ty + p > S - 1 or tx + p > S - 1:
            continue
        ccy, ccx = ty + half, tx + half
        pts = corners + np.array([ccy, ccx], np.float32)
        dy, dx = pts[:, 0] - blob.cy, pts[:, 1] - blob.cx
        if np.all(np.sqrt(dy * dy + dx * dx) + 2.0 <= blob.radius_at(np.arctan2(dy, dx))):
            return ty, tx
    return None


def render(seed: int = 0, split: str = "train", index: int = 0, image_size: int = 160, num_classes: int = 8):
    """Draw one benchmark image. Returns ``(image uint8 H×W×3, class mask uint8 H×W,
    instance mask uint8 H×W, info dict)``; the same arguments always give the same result.
    ``info["objects"]`` lists, per object in drawing order: ``instance`` (value in the
    instance mask), ``class_index`` (0-based), ``class_name``, ``center`` (x, y), ``radius``,
    ``part_box`` (x0, y0, x1, y1; end-exclusive), ``part_size``, ``area`` (visible px),
    ``part_area`` (visible emblem px), ``full_area`` (unoccluded px inside the image)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    S = int(image_size)
    rng = np.random.default_rng([int(seed), SPLITS[split], int(index)])
    img, bg_colours, yy, xx = _draw_background(rng, S)
    scale = S / 160.0
    p_lo, p_hi = max(8, int(round(14 * scale))), max(10, int(round(24 * scale)))

    n_obj = _count_objects(rng)
    rlo, rhi = _RADIUS[n_obj]

    # decoy bodies (background in the masks), drawn from the objects' size distribution
    n_decoys = int(rng.random() < 0.5)
    obj_colours: list[np.ndarray] = []
    for _ in range(n_decoys):
        R = float(rng.uniform(rlo, rhi)) * S
        blob = _Blob(rng, rng.uniform(0.1 * S, 0.9 * S), rng.uniform(0.1 * S, 0.9 * S), R)
        colour = _pick_colour(rng, bg_colours)
        win, a = blob.alpha(S)
        if a.size:
            _paint(img, win, a, _body_colour_field(rng, colour, yy, xx, S, win))

    # objects
    classes = rng.choice(num_classes, size=n_obj, replace=False)
    sem = np.zeros((S, S), np.uint8)
    inst = np.zeros((S, S), np.uint8)
    placed = []  # dicts with blob, alpha_full, part box
    for j, k in enumerate(classes.tolist()):
        ok = False
        for _attempt in range(30):
            R = float(rng.uniform(rlo, rhi)) * S
            blob = _Blob(rng, rng.uniform(0.12 * S, 0.88 * S), rng.uniform(0.12 * S, 0.88 * S), R)
            win, a = blob.alpha(S)
            if a.size == 0:
                continue
            full = _full(S, win, a) >= 0.5
            if full.sum() < 0.6 * blob.full_area():
                continue
            # the emblem scales with its object (as a head with its body), within [p_lo, p_hi]
            p = int(np.clip(round(blob.R * float(rng.uniform(0.3, 0.4))), p_lo, p_hi))
            p = min(p, int(1.1 * blob.R * blob.aspect))  # a tile must fit in narrow bodies
            pos = _place_part(rng, blob, p, S)
            if pos is None or p < p_lo * 0.75:
                continue
            # earlier objects: keep >= 45 % of area and >= 90 % of the emblem visible
            bad = False
            for q in placed:
                vis = q["visible"] & ~full
                py, px, pp = q["part"]
                if vis.sum() < 0.45 * q["visible0"] or vis[py : py + pp, px : px + pp].mean() < 0.9:
                    bad = True
                    break
            if bad:
                continue
            ok = True
            break
        if not ok:
            if j == 0:  # always keep one object: drop the overlap rules for the first one
                R = float(rlo) * S
                blob = _Blob(rng, S / 2, S / 2, R)
                win, a = blob.alpha(S)
                full = _full(S, win, a) >= 0.5
                p = p_lo
                pos = _place_part(rng, blob, p, S) or (int(S / 2 - p / 2), int(S / 2 - p / 2))
            else:
                classes = classes[:j]
                break
        for q in placed:
            q["visible"] &= ~full
        colour = _pick_colour(rng, bg_colours + obj_colours)
        obj_colours.append(colour)
        _paint(img, win, a, _body_colour_field(rng, colour, yy, xx, S, win))
        # emblem: the class pattern, its figure in the class's own saturated hue on a dark shade
        # of the body colour (version 3; version 2 used only body shades, which a tiny
        # Conformer could not learn within the book's CPU budget: loss stayed at chance)
        py, px = pos
        ang = float(rng.uniform(-0.21, 0.21))
        pat = part_pattern(k, p, ang)
        dark = colour * float(rng.uniform(0.25, 0.4))
        light = _hsv_to_rgb(k / num_classes, 0.9, float(rng.uniform(0.85, 1.0)))
        img[py : py + p, px : px + p] = dark[None, None] * (1 - pat[..., None]) + light[None, None] * pat[..., None]
        placed.append(dict(k=k, blob=blob, visible=full.copy(), visible0=float(full.sum()), part=(py, px, p)))

    for j, q in enumerate(placed):
        sem[q["visible"]] = q["k"] + 1
        inst[q["visible"]] = j + 1

    # global shading and noise
    gy, gx = rng.uniform(-0.25, 0.25, 2)
    amp, per, ph = float(rng.uniform(0, 0.08)), float(rng.uniform(0.5, 1.5) * S), float(rng.uniform(0, 2 * math.pi))
    shade = 1 + gy * (yy / S - 0.5) + gx * (xx / S - 0.5) + amp * np.sin((xx + yy) * (2 * math.pi / per) + ph)
    img = img * shade[..., None]
    img += (rng.standard_normal((S, S), dtype=np.float32) * float(rng.uniform(0.01, 0.03)))[..., None]
    img8 = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)

    objects = []
    for j, q in enumerate(placed):
        py, px, p = q["part"]
        vis = q["visible"]
        objects.append(
            dict(
                instance=j + 1,
                class_index=int(q["k"]),
                class_name=PART_PATTERNS[q["k"]],
                center=[round(q["blob"].cx, 2), round(q["blob"].cy, 2)],
                radius=round(q["blob"].R, 2),
                part_box=[int(px), int(py), int(px + p), int(py + p)],
                part_size=int(p),
                area=int(vis.sum()),
                part_area=int(vis[py : py + p, px : px + p].sum()),
                full_area=int(q["visible0"]),
            )
        )
    info = dict(split=split, index=int(index), size=[S, S], decoys=n_decoys, objects=objects)
    return img8, sem, inst, info
