"""transcam_nb.cam: multi-scale inference on a tiny random model (shapes, options, equivalences).

The reference equivalence is tested in test_golden_pipeline.py; here an independent
re-implementation of the authors' loop (one image per forward, all 12 attention maps kept
and stacked, numpy fusion) checks the streaming, batched implementation on a non-square image,
plus the options the authors did not have.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from transcam_nb.cam import multiscale_cam, multiscale_sum, normalize_cam, preprocess, scaled_size


@pytest.fixture(scope="module")
def tiny_model():
    from transcam_nb.models import create_model

    torch.manual_seed(0)
    m = create_model("transcam_tiny", num_classes=6, embed_dim=32, num_heads=2, channel_ratio=0.25,
                     drop_path_rate=0.0)
    # calibrate the BatchNorms on one random batch (as the golden 'cond' weights): with raw
    # initialisation, eval-mode BN does not normalise and the maps are nearly constant
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None
    m.train()
    with torch.no_grad():
        m(torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    return m.eval()


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    # a non-square photo-like image (smooth + noise)
    y, x = np.mgrid[0:45, 0:70]
    base = np.stack([np.sin(x / 9.0), np.cos(y / 7.0), np.sin((x + y) / 11.0)], -1)
    img = (127 + 100 * base + rng.normal(0, 10, base.shape)).clip(0, 255).astype(np.uint8)
    return img


def authors_style_pipeline(model, img, labels, scales):
    """infer_TransCAM as documented in docs/reference.md §3, written independently in numpy."""
    H, W = img.shape[:2]
    cam_list = []
    for s in scales:
        x = preprocess(img, (s, s))
        for flipped in (False, True):
            xi = np.flip(x, -1).copy() if flipped else x
            with torch.no_grad():
                out = model(torch.from_numpy(xi)[None], return_attn=True)
            A = out.attn.sum(0)[:, 1:, 1:]  # keep-all: [12,B,N,N] stacked, summed over blocks
            c = out.cam  # [1, C, h, w]
            B, C, h, w = c.shape
            refined = torch.einsum("bij,bcj->bci", A, c.reshape(B, C, h * w)).reshape(B, C, h, w)
            up = F.interpolate(refined[:, 1:], (H, W), mode="bilinear", align_corners=False)[0].numpy()
            up = up * labels.reshape(-1, 1, 1)
            if flipped:
                up = np.flip(up, -1)
            cam_list.append(up)
    sum_cam = np.sum(cam_list, axis=0)
    keys = np.flatnonzero(labels > 1e-5)
    raw_sum = sum_cam[keys].copy()
    sum_cam[sum_cam < 0] = 0
    cmax = np.max(sum_cam, (1, 2), keepdims=True)
    cmin = np.min(sum_cam, (1, 2), keepdims=True)
    sum_cam[sum_cam < cmin + 1e-5] = 0
    norm = (sum_cam - cmin - 1e-5) / (cmax - cmin + 1e-5)
    return norm[keys], keys, raw_sum


def test_matches_authors_style_keep_all_pipeline(tiny_model, image):
    labels = np.array([0, 1, 0, 1, 1], np.float32)
    ref, keys, ref_sum = authors_style_pipeline(tiny_model, image, labels, (32, 64))
    for batch_flips in (True, False):
        sum_cam, classes = multiscale_sum(tiny_model, image, labels, scales=(32, 64), batch_flips=batch_flips)
        np.testing.assert_array_equal(classes, keys)
        assert sum_cam.shape == (3, 45, 70)
        # the random model is ill-conditioned (maps nearly constant in space), so the
        # normalised maps magnify rounding; compare the sums, then the normalisation exactly
        assert np.abs(sum_cam.numpy() - ref_sum).max() <= 1e-5 * np.abs(ref_sum).max()
    np.testing.assert_array_equal(normalize_cam(ref_sum), ref)
    cams, classes = multiscale_cam(tiny_model, image, labels, scales=(32, 64))
    assert cams.shape == (3, 45, 70) and cams.dtype == np.float32
    np.testing.assert_array_equal(cams, normalize_cam(multiscale_sum(tiny_model, image, labels, scales=(32, 64))[0]).numpy())


def test_normalize_cam_by_hand():
    s = np.array([[[-1.0, 0.0, 2.0, 4.0]], [[-3.0, -2.0, -1.0, -0.5]]], np.float32)
    out = normalize_cam(s)
    d = np.float32(4.0) - np.float32(0.0) + np.float32(1e-5)
    expected0 = np.array([-1e-5, -1e-5, 2 - 1e-5, 4 - 1e-5], np.float32) / d
    np.testing.assert_allclose(out[0, 0], expected0, rtol=1e-6)
    assert np.all(out[1] == -1.0)  # degenerate: <= 0 everywhere
    assert out.dtype == np.float32
    t = normalize_cam(torch.from_numpy(s))
    np.testing.assert_array_equal(t.numpy(), out)


def test_scaled_size():
    assert scaled_size((375, 500), 256) == (256, 256)
    assert scaled_size((375, 500), 256, square=False) == (192, 256)
    assert scaled_size((375, 500), 1.0, square=False) == (368, 496)  # 23.4 and 31.25 patches
    assert scaled_size((375, 500), 0.5, square=False) == (192, 256)
    assert scaled_size((20, 500), 0.5, square=False) == (16, 256)  # at least one patch
    with pytest.raises(ValueError, match="multiple of the patch size"):
        scaled_size((10, 10), 100)


@pytest.mark.parametrize("method", ["transcam", "clsattn", "attnagg", "rollout", "none"])
def test_methods_and_aspect_preserving(tiny_model, image, method):
    labels = np.array([0, 0, 1, 0, 1], np.float32)
    cams, classes = multiscale_cam(tiny_model, image, labels, scales=(48, 1.0), square=False, method=method)
    assert cams.shape == (2, 45, 70) and classes.tolist() == [2, 4]
    assert np.isfinite(cams).all() and cams.max() <= 1.0 + 1e-6


def test_streaming_equals_keep_all_for_blocks(tiny_model, image):
    """Per-block attention kept (return_attn) + attention_map == the model's running sum."""
    from transcam_nb.refine import attention_map, refine_cam

    x = torch.from_numpy(preprocess(image, (32, 48)))[None]
    with torch.no_grad():
        full = tiny_model(x, return_attn=True)
        for blocks in ([0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11], [3]):
            stream = tiny_model(x, attn_blocks=blocks)
            torch.testing.assert_close(stream.attn_sum, attention_map(full.attn, blocks, drop_cls_token=False))
            a = refine_cam(stream.cam, stream.attn_sum)
            b = refine_cam(full.cam, full.attn, blocks=blocks)
            assert (a - b).abs().max() <= 1e-5 * b.abs().max()  # summation order only
    # and via multiscale_cam
    labels = np.ones(5, np.float32)
    a, _ = multiscale_cam(tiny_model, image, labels, scales=(32,), blocks="AD")
    b, _ = multiscale_cam(tiny_model, image, labels, scales=(32,), blocks=list(range(6, 12)))
    np.testing.assert_array_equal(a, b)
    c, _ = multiscale_cam(tiny_model, image, labels, scales=(32,), blocks="AS")
    assert not np.allclose(a, c)


def test_labels_none_empty_and_errors(tiny_model, image):
    cams, classes = multiscale_cam(tiny_model, image, None, scales=(32,), flip=False)
    assert classes.tolist() == [0, 1, 2, 3, 4]
    cams, classes = multiscale_cam(tiny_model, image, np.zeros(5), scales=(32,))
    assert cams.shape == (0, 45, 70) and classes.size == 0
    with pytest.raises(ValueError, match="5 foreground classes"):
        multiscale_cam(tiny_model, image, np.zeros(20), scales=(32,))
    with pytest.raises(ValueError, match="uint8"):
        multiscale_cam(tiny_model, image.astype(np.float32), np.ones(5), scales=(32,))
    with pytest.raises(ValueError, match="unknown method"):
        multiscale_cam(tiny_model, image, np.ones(5), scales=(32,), method="gradcam")


def test_pil_input_and_bf16_autocast(tiny_model, image):
    from PIL import Image

    labels = np.array([1, 0, 0, 0, 1], np.float32)
    a, _ = multiscale_cam(tiny_model, image, labels, scales=(32,))
    b, _ = multiscale_cam(tiny_model, Image.fromarray(image), labels, scales=(32,))
    np.testing.assert_array_equal(a, b)
    c, _ = multiscale_cam(tiny_model, image, labels, scales=(32,), precision="bf16")
    assert c.dtype == np.float32 and c.shape == a.shape
    s32, _ = multiscale_sum(tiny_model, image, labels, scales=(32,))
    s16, _ = multiscale_sum(tiny_model, image, labels, scales=(32,), precision="bf16")
    assert s16.dtype == torch.float32 and torch.isfinite(s16).all()
    # this random model amplifies bf16 rounding (tight bounds: test_golden_pipeline, cond model)
    assert (s16 - s32).abs().max() <= 0.25 * s32.abs().max()


# --------------------------------------------------------------------------- Eq. 5 without N×N
@pytest.mark.parametrize("blocks", ["AA", "AS", "AD", [3, 9]])
@pytest.mark.parametrize("hw", [(32, 48), (48, 32), (16, 80)])
def test_sdpa_refinement_equals_explicit(tiny_model, blocks, hw):
    """Σ_l mean_h SDPA(Q, K, [0; CAM])[1:] == A* · CAM (transcam) and the class-token row (clsattn)."""
    from transcam_nb.refine import refine_cam, refine_cam_sdpa, resolve_blocks

    blk = resolve_blocks(blocks, 12)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, *hw, generator=g)
    with torch.no_grad():
        out = tiny_model(x, return_attn=True, keep_qk=blk)
    assert sorted(out.qk) == blk and out.qk[blk[0]].q.shape == (2, 2, 1 + hw[0] * hw[1] // 256, 16)
    for method in ("transcam", "clsattn"):
        for reduce in ("sum", "mean"):
            ref = refine_cam(out.cam, out.attn, method, blocks=blk, reduce=reduce)
            got = refine_cam_sdpa(out.cam, out.qk, method, reduce=reduce)
            assert got.dtype == torch.float32 and got.shape == ref.shape
            assert (got - ref).abs().max() <= 1e-5 * ref.abs().max(), (method, reduce)


def test_keep_qk_adds_no_attention_matrix(tiny_model):
    with torch.no_grad():
        out = tiny_model(torch.randn(1, 3, 32, 64), keep_qk=[0, 5])
    assert out.attn is None and out.attn_sum is None and sorted(out.qk) == [0, 5]
    with pytest.raises(ValueError, match="keep_qk"):
        tiny_model(torch.randn(1, 3, 32, 32), keep_qk=[12])


@pytest.mark.parametrize("method,blocks", [("transcam", "AA"), ("transcam", "AS"), ("transcam", "AD"),
                                           ("clsattn", "AA")])
def test_multiscale_sdpa_equals_explicit(tiny_model, image, method, blocks):
    labels = np.array([1, 0, 1, 0, 1], np.float32)
    kw = dict(scales=(32, 1.0), square=False, method=method, blocks=blocks)
    a, _ = multiscale_sum(tiny_model, image, labels, attention="explicit", **kw)
    b, _ = multiscale_sum(tiny_model, image, labels, attention="sdpa", **kw)
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()
    with pytest.raises(ValueError, match="attention must be one of"):
        multiscale_sum(tiny_model, image, labels, attention="flash", **kw)


def test_forward_request_serves_every_variant():
    from transcam_nb.refine import forward_request

    aa, ad = list(range(12)), list(range(6, 12))
    assert forward_request([("none", aa)]) == ({}, None)
    assert forward_request([("transcam", ad)]) == ({"keep_qk": ad}, None)
    assert forward_request([("transcam", ad)], "explicit") == ({"attn_blocks": ad}, ad)
    assert forward_request([("attnagg", aa), ("clsattn", ad)]) == ({"attn_blocks": aa, "keep_qk": ad}, aa)
    kw, s = forward_request([("attnagg", aa), ("transcam", ad)], "explicit")
    assert kw == {"return_attn": True} and s is None  # two block sets: per-block maps
    kw, s = forward_request([("rollout", aa), ("transcam", aa)])
    assert kw == {"return_attn": True, "keep_qk": aa}


def test_precision_option(tiny_model, image):
    labels = np.array([1, 0, 0, 0, 1], np.float32)
    a, _ = multiscale_cam(tiny_model, image, labels, scales=(32,), precision="fp32")
    b, _ = multiscale_cam(tiny_model, image, labels, scales=(32,))
    np.testing.assert_array_equal(a, b)
    c, _ = multiscale_cam(tiny_model, image, labels, scales=(32,), precision="bf16")
    assert c.dtype == np.float32 and c.shape == a.shape and np.isfinite(c).all()
    # the model comes back in its own memory format
    assert tiny_model.conv1.weight.is_contiguous()
    with pytest.raises(ValueError, match="precision='fp16' needs a CUDA device"):
        multiscale_cam(tiny_model, image, labels, scales=(32,), precision="fp16")
    with pytest.raises(ValueError, match="precision='fp8' is not understood"):
        multiscale_cam(tiny_model, image, labels, scales=(32,), precision="fp8")
    with pytest.warns(DeprecationWarning, match="amp_dtype"):
        d, _ = multiscale_cam(tiny_model, image, labels, scales=(32,), amp_dtype=torch.bfloat16)
    np.testing.assert_array_equal(c, d)


def test_precision_policy_words():
    from transcam_nb.config import get_profile
    from transcam_nb.device import precision_setup, resolve_precision

    cpu = torch.device("cpu")
    assert precision_setup("auto", cpu) == (None, False)  # CPU default: fp32 (measured)
    assert precision_setup("fp32", cpu) == (None, False) and precision_setup("off", cpu) == (None, False)
    assert precision_setup("bf16", cpu) == (torch.bfloat16, False)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        precision_setup("fp16", cpu)
    assert resolve_precision(torch.bfloat16) == "bf16" and resolve_precision(None) == "fp32"
    with pytest.warns(DeprecationWarning, match="'amp' setting is now 'precision'"):
        prof = get_profile("tiny").replace(amp="bf16")
    assert prof.precision == "bf16"
