"""PAR (transcam_nb.postprocess.par): hand cases, an independent per-pixel implementation of the
paper's formula, batching, shapes, devices, and real VOC images with coarsened masks as seeds."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared_path
from transcam_nb.postprocess import par as parmod
from transcam_nb.postprocess.par import (
    PARConfig,
    par_affinity,
    par_labels,
    par_offsets,
    par_probs,
    par_refine,
)

VOC_IDS = ["2007_001763", "2011_000003", "2011_000025", "2011_003066"]


def _two_regions(h=30, w=44):
    """An image with a dark disc on a light background, and the disc mask."""
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (h / 3) ** 2
    img = np.where(disc[..., None], [20, 40, 200], [230, 220, 30]).astype(np.uint8)
    return img, disc


def _t(img):
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()


# ---------------------------------------------------------------------------------- hand cases
def test_paper_settings_are_the_defaults():
    c = PARConfig()
    assert c.dilations == (1, 2, 4, 8, 12, 24) and c.iterations == 10
    assert (c.w_rgb, c.w_pos, c.w_mix) == (0.3, 0.3, 0.01)
    assert len(par_offsets(c.dilations)) == 48 and (0, 0) not in par_offsets(c.dilations)
    with pytest.raises(ValueError, match="dilations"):
        PARConfig(dilations=(0, 1))
    with pytest.raises(TypeError, match="unknown PAR setting"):
        par_refine(torch.zeros(3, 4, 4), torch.zeros(2, 4, 4), sigma=3)


def test_constant_image_leaves_a_constant_map_unchanged():
    img = torch.full((3, 20, 27), 90.0)
    x = torch.full((4, 20, 27), 0.25)
    torch.testing.assert_close(par_refine(img, x), x)
    # the paper's raw weights sum to 1 + w3: every iteration scales by that
    raw = par_refine(img, x, normalize=False, iterations=3)
    torch.testing.assert_close(raw, x * 1.01 ** 3)


def test_weights_and_probabilities_keep_their_sums():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 17, 23, generator=g) * 255
    a = par_affinity(img)
    assert a.shape == (2, 48, 17, 23) and (a > 0).all()
    torch.testing.assert_close(a.sum(1), torch.ones(2, 17, 23))
    torch.testing.assert_close(par_affinity(img, normalize=False).sum(1), torch.full((2, 17, 23), 1.01))
    p = torch.rand(2, 5, 17, 23, generator=g)
    p = p / p.sum(1, keepdim=True)
    out = par_refine(img, p)
    torch.testing.assert_close(out.sum(1), torch.ones(2, 17, 23))
    assert out.min() >= 0
    # the image's value scale does not matter (colours are measured in local std units)
    torch.testing.assert_close(par_refine(img / 255, p), out, rtol=1e-4, atol=1e-5)


def test_propagation_stays_within_a_uniform_colour_region():
    img, disc = _two_regions()
    x = torch.from_numpy(disc.astype(np.float32))[None]  # score 1 on the disc, 0 outside
    pure = par_refine(_t(img), x, w_mix=0.0)[0].numpy()  # colour kernel only
    assert pure[~disc].max() < 1e-6 and pure[disc].min() > 1 - 1e-6
    mixed = par_refine(_t(img), x)[0].numpy()  # + the colour-blind position kernel (w3 = 0.01)
    assert mixed[~disc].max() < 0.02 and mixed[disc].min() > 0.95
    blind = par_refine(torch.zeros(3, *disc.shape), x)[0].numpy()  # no colour guidance
    # the same propagation without colour spreads the disc's score over the whole image
    assert blind[~disc].mean() > 0.05 and blind[disc].min() < 0.5


def test_labels_snap_to_the_colour_region():
    img, disc = _two_regions()
    seed = np.where(_coarsen(disc.astype(np.uint8), 8), 7, 0).astype(np.uint8)  # a blocky disc
    seed[0, -1] = 255  # ignore pixels are filled in
    out = par_labels(img, seed, 21)
    assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 7}
    acc_seed = ((seed == 7) == disc).mean()
    acc_par = ((out == 7) == disc).mean()
    assert acc_par > acc_seed + 0.05 and acc_par > 0.9
    assert out[0, -1] == 0
    assert (par_labels(img, np.full(disc.shape, 255, np.uint8), 21) == 0).all()
    with pytest.raises(ValueError, match="outside 0..20"):
        par_labels(img, np.full(disc.shape, 30, np.uint8), 21)


def test_an_affine_change_of_the_seeds_keeps_the_argmax():
    img, disc = _two_regions()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, *disc.shape, generator=g)
    a = par_refine(_t(img), x).argmax(0)
    b = par_refine(_t(img), 0.4 * x + 0.2).argmax(0)
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------- the formula
def _naive(img, x, dilations, iterations, w1=0.3, w2=0.3, w3=0.01):
    """Per-pixel loops over the paper's formula (borders replicated), normalised by 1 + w3."""
    c, h, w = img.shape
    offs = [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    dist = np.array([math.hypot(dy, dx) for dy, dx in offs])
    kpos = -(dist / (w2 * dist.std(ddof=1))) ** 2
    pos = np.exp(kpos - kpos.max())
    pos /= pos.sum()
    alpha = np.zeros((h, w, len(offs)))
    for i in range(h):
        for j in range(w):
            nb = np.stack([img[:, min(max(i + dy, 0), h - 1), min(max(j + dx, 0), w - 1)] for dy, dx in offs])
            sd = nb.std(axis=0, ddof=1) + 1e-8
            k = -(((nb - img[:, i, j]) / (w1 * sd)) ** 2).mean(1)
            e = np.exp(k - k.max())
            alpha[i, j] = (e / e.sum() + w3 * pos) / (1 + w3)
    for _ in range(iterations):
        y = np.zeros_like(x)
        for n, (dy, dx) in enumerate(offs):
            rows = np.clip(np.arange(h) + dy, 0, h - 1)
            cols = np.clip(np.arange(w) + dx, 0, w - 1)
            y += alpha[None, :, :, n] * x[:, rows][:, :, cols]
        x = y
    return x


@pytest.mark.parametrize("band", [None, 1])  # 1: bands of 8 rows on CPU
def test_matches_a_per_pixel_implementation_of_the_formula(band, monkeypatch):
    if band is not None:
        monkeypatch.setattr(parmod, "_CPU_BAND_ELEMENTS", band)
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (3, 19, 13)).astype(np.float64)
    img[:, :4, :5] = 50  # a flat patch: zero local spread
    x = rng.random((2, 19, 13))
    want = _naive(img, x, (1, 2, 5), 3)
    got = par_refine(torch.from_numpy(img), torch.from_numpy(x), dilations=(1, 2, 5), iterations=3)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------------------- shapes
def test_batched_equals_unbatched_and_non_square():
    g = torch.Generator().manual_seed(2)
    for h, w in [(23, 41), (41, 23), (10, 13)]:  # 10 x 13: smaller than the largest dilation
        img = torch.rand(3, 3, h, w, generator=g) * 255
        x = torch.rand(3, 4, h, w, generator=g)
        out = par_refine(img, x)
        assert out.shape == (3, 4, h, w)
        for b in range(3):
            torch.testing.assert_close(par_refine(img[b], x[b]), out[b], rtol=1e-6, atol=1e-7)
    # uint8 images and coarse scores (resized to the image first)
    img8 = (torch.rand(2, 3, 32, 48, generator=g) * 255).to(torch.uint8)
    coarse = torch.rand(2, 3, 8, 12, generator=g)
    assert par_refine(img8, coarse).shape == (2, 3, 32, 48)


def test_probs_interface_and_errors():
    img, disc = _two_regions()
    p = np.stack([~disc, disc]).astype(np.float32) * 0.8 + 0.1
    out = par_probs(img, p)
    assert out.shape == p.shape and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(0), 1, atol=1e-5)
    with pytest.raises(ValueError, match="batch sizes"):
        par_refine(torch.zeros(2, 3, 5, 5), torch.zeros(3, 2, 5, 5))
    with pytest.raises(ValueError, match="both be batched"):
        par_refine(torch.zeros(3, 5, 5), torch.zeros(1, 2, 5, 5))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        par_refine(torch.zeros(5, 5), torch.zeros(5, 5))
    with pytest.raises(TypeError, match="torch.Tensor"):
        par_refine(np.zeros((3, 5, 5)), torch.zeros(2, 5, 5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(4)
    img = torch.rand(2, 3, 40, 52, generator=g) * 255
    x = torch.rand(2, 6, 40, 52, generator=g)
    cpu = par_refine(img, x)
    gpu = par_refine(img.cuda(), x.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------- real images
def _voc(i):
    root = shared_path("data", "voc2012_sample", "VOCdevkit", "VOC2012")
    img = np.array(Image.open(root / "JPEGImages" / f"{i}.jpg").convert("RGB"))
    with Image.open(root / "SegmentationClass" / f"{i}.png") as m:
        gt = np.array(m)
    return img, gt


def _coarsen(gt, factor=16):
    small = gt[::factor, ::factor].copy()
    small[small == 255] = 0
    return np.array(Image.fromarray(small).resize(gt.shape[::-1], Image.NEAREST))


def test_par_improves_coarse_masks_of_real_images():
    """At full size (the dilations are in pixels: at half size they reach twice as far relative
    to the objects, and PAR then blurs more than it snaps)."""
    accs = []
    for i in VOC_IDS:
        img, gt = _voc(i)
        seed = _coarsen(gt)
        out = par_labels(img, seed, 21)
        v = gt != 255
        accs.append(((seed[v] == gt[v]).mean(), (out[v] == gt[v]).mean()))
    accs = np.array(accs)
    assert accs[:, 1].mean() > accs[:, 0].mean() + 0.01, accs
    assert (accs[:, 1] > accs[:, 0]).sum() >= 3, accs
