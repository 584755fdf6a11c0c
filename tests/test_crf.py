"""Dense CRF (transcam_nb.postprocess.crf): presets, input checks, missing extension, and that
the CRF really improves a coarse label map of real VOC images against their official masks."""
import builtins
import dataclasses

import numpy as np
import pytest
from PIL import Image

from conftest import shared_path
from transcam_nb.postprocess import crf as crfmod
from transcam_nb.postprocess.crf import (
    CRF_PRESETS,
    crf_labels,
    crf_probs,
    get_crf_preset,
    labels_from_cams,
    make_la_ha_labels,
)

VOC_IDS = ["2007_001763", "2011_000003", "2011_000025", "2011_003066"]


def _voc(i):
    root = shared_path("data", "voc2012_sample", "VOCdevkit", "VOC2012")
    img = np.array(Image.open(root / "JPEGImages" / f"{i}.jpg").convert("RGB"))
    with Image.open(root / "SegmentationClass" / f"{i}.png") as m:
        assert m.mode == "P"  # palette PNG: the indices are the labels
        gt = np.array(m)
    return img, gt


def _coarsen(gt, factor=16):
    """Nearest downsample ×1/factor then nearest upsample: blocky boundaries (void → bg)."""
    small = gt[::factor, ::factor].copy()
    small[small == 255] = 0
    up = np.array(Image.fromarray(small).resize(gt.shape[::-1], Image.NEAREST))
    return up


def _pixel_acc(pred, gt):
    v = gt != 255
    return float((pred[v] == gt[v]).mean())


def _need_crf():
    try:
        crfmod.require_pydensecrf()
    except ImportError as e:
        pytest.skip(str(e))


# ---------------------------------------------------------------------------------- presets
def test_presets_hold_the_reference_values():
    lab, psa, dl = CRF_PRESETS["label"], CRF_PRESETS["psa"], CRF_PRESETS["deeplab"]
    # docs/reference.md §7.3, crf_inference_label
    assert (lab.unary, lab.gt_prob, lab.zero_unsure) == ("labels", 0.7, False)
    assert (lab.gaussian_sxy, lab.gaussian_compat) == (3, 3)
    assert (lab.bilateral_sxy, lab.bilateral_srgb, lab.bilateral_compat, lab.iterations) == (50, 5, 10, 10)
    assert not lab.scale_sxy
    # PSA crf_inference
    assert (psa.unary, psa.gaussian_sxy, psa.gaussian_compat) == ("softmax", 3, 3)
    assert (psa.bilateral_sxy, psa.bilateral_srgb, psa.bilateral_compat, psa.iterations) == (80, 13, 10, 10)
    assert psa.scale_sxy
    # DeepLab test dense_crf
    assert (dl.unary, dl.gaussian_sxy, dl.gaussian_compat) == ("softmax", 3, 3)
    assert (dl.bilateral_sxy, dl.bilateral_srgb, dl.bilateral_compat, dl.iterations) == (32, 13, 10, 1)
    # frozen
    with pytest.raises(dataclasses.FrozenInstanceError):
        lab.iterations = 3
    assert get_crf_preset("label", iterations=2).iterations == 2
    assert CRF_PRESETS["label"].iterations == 10
    with pytest.raises(ValueError, match="unknown CRF preset"):
        get_crf_preset("nope")
    with pytest.raises(TypeError, match="unknown CRF preset field"):
        get_crf_preset("label", sigma=1)


# ---------------------------------------------------------------------------------- errors
def test_missing_extension_gives_install_instructions(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "pydensecrf" or name.startswith("pydensecrf."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ImportError, match="pip install pydensecrf2"):
        crf_labels(img, np.zeros((8, 8), np.uint8), 2)
    with pytest.raises(ImportError, match="pip install pydensecrf2"):
        crf_probs(img, np.full((2, 8, 8), 0.5, np.float32))


def test_inputs_are_validated():
    img = np.zeros((6, 7, 3), np.uint8)
    lab = np.zeros((6, 7), np.uint8)
    with pytest.raises(TypeError, match="uint8"):
        crf_labels(img.astype(np.float32), lab, 2)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        crf_labels(np.zeros((6, 7), np.uint8), lab, 2)
    with pytest.raises(ValueError, match="spatial shape"):
        crf_labels(img, np.zeros((7, 6), np.uint8), 2)
    with pytest.raises(ValueError, match="255"):
        crf_labels(img, np.full((6, 7), 255, np.uint8), 21)
    with pytest.raises(TypeError, match="integer"):
        crf_labels(img, lab.astype(np.float32), 2)
    with pytest.raises(ValueError, match="unary 'labels'"):
        crf_labels(img, lab, 2, preset="deeplab")
    with pytest.raises(ValueError, match="unary 'softmax'"):
        crf_probs(img, np.full((2, 6, 7), 0.5, np.float32), preset="label")
    with pytest.raises(ValueError, match="probabilities"):
        crf_probs(img, np.full((2, 6, 7), 3.0, np.float32))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        crf_probs(img, np.full((2, 7, 6), 0.5, np.float32))


# ---------------------------------------------------------------------------------- real images
@pytest.mark.parametrize("image_id", VOC_IDS)
def test_crf_improves_a_coarsened_voc_mask(image_id):
    _need_crf()
    img, gt = _voc(image_id)
    coarse = _coarsen(gt, 16)
    refined = crf_labels(img, coarse, 21)
    assert refined.shape == gt.shape and refined.dtype == np.uint8
    before, after = _pixel_acc(coarse, gt), _pixel_acc(refined, gt)
    # fewer wrong pixels, by at least 5 % of the coarse map's errors (measured: 9–65 %)
    assert (1 - after) < 0.95 * (1 - before), (image_id, before, after)
    # the CRF only moves labels around: it never invents a class absent from its input
    assert set(np.unique(refined)) <= set(np.unique(coarse))


def test_crf_accepts_non_contiguous_image():
    _need_crf()
    img, gt = _voc(VOC_IDS[0])
    img, gt = img[::4, ::4], gt[::4, ::4]
    coarse = _coarsen(gt, 4)
    a = crf_labels(img, coarse, 21)  # a strided view
    b = crf_labels(np.ascontiguousarray(img), coarse, 21)
    np.testing.assert_array_equal(a, b)


def test_crf_probs_improves_soft_coarse_scores_and_normalises():
    _need_crf()
    img, gt = _voc(VOC_IDS[0])
    img, gt = np.ascontiguousarray(img[::2, ::2]), gt[::2, ::2]
    coarse = _coarsen(gt, 8)
    classes = np.unique(coarse)
    onehot = (coarse[None] == classes[:, None, None]).astype(np.float32)
    probs = 0.6 * onehot + 0.4 / len(classes)  # soft, still a distribution per pixel
    for preset, scale in (("deeplab", 1.0), ("psa", 2.0)):
        q = crf_probs(img, probs, preset=preset, scale_factor=scale)
        assert q.shape == probs.shape and q.dtype == np.float32
        np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-4)
        pred = classes[q.argmax(0)]
        assert _pixel_acc(pred, gt) > _pixel_acc(coarse, gt), preset


# ---------------------------------------------------------------------------------- la / ha
def test_labels_from_cams_matches_a_21_channel_argmax():
    rng = np.random.default_rng(0)
    cams = rng.random((3, 5, 6)).astype(np.float32)
    classes = [14, 2, 7]
    full = np.zeros((21, 5, 6), np.float32)
    full[0] = 0.42
    for k, c in enumerate(classes):
        full[c + 1] = cams[k]
    np.testing.assert_array_equal(labels_from_cams(cams, classes, 0.42), full.argmax(0))


def test_make_la_ha_labels_on_a_handmade_scene():
    _need_crf()
    # left half red, right half blue; one class with CAM 0.5 on the left half, 0.05 on the right
    img = np.zeros((24, 40, 3), np.uint8)
    img[:, :20] = (220, 30, 30)
    img[:, 20:] = (30, 30, 220)
    cam = np.full((1, 24, 40), 0.05, np.float32)
    cam[0, :, :20] = 0.5
    la, ha = make_la_ha_labels(img, cam, [11])
    assert la.dtype == np.uint8 and la.shape == (24, 40)
    assert (la == 0).all()  # 0.5 < 0.60: background everywhere in la
    assert (ha[:, :20] == 12).all() and (ha[:, 20:] == 0).all()  # 0.5 > 0.25: class 11 → label 12


def test_make_la_ha_labels_on_voc_cams_from_the_mask():
    _need_crf()
    img, gt = _voc("2011_000025")
    img, gt = np.ascontiguousarray(img[::2, ::2]), gt[::2, ::2]
    present = [int(c) - 1 for c in np.unique(gt) if c not in (0, 255)]
    # CAM-like maps: the object mask, blurred by a coarse box filter, values in [0, 1]
    cams = []
    for c in present:
        m = (gt == c + 1).astype(np.float32)
        small = m[::8, ::8]
        cams.append(np.array(Image.fromarray(small).resize(gt.shape[::-1], Image.BILINEAR)))
    cams = np.clip(np.stack(cams), 0, 1).astype(np.float32)
    la, ha = make_la_ha_labels(img, cams, present)
    fg_la, fg_ha = (la > 0).sum(), (ha > 0).sum()
    assert 0 < fg_la < fg_ha  # the higher background threshold keeps less foreground
    assert set(np.unique(la)) | set(np.unique(ha)) <= {0} | {c + 1 for c in present}
    assert _pixel_acc(ha, gt) > 0.8
    with pytest.raises(ValueError, match="classes has"):
        make_la_ha_labels(img, cams, present[:-1] if len(present) > 1 else [])
    with pytest.raises(ValueError, match="differs from the image"):
        make_la_ha_labels(img, cams[:, :-1], present)
