"""transcam_nb.aggregation: Eq. 5 with learned block and head weights. Hand cases (one block,
one head, uniform = the paper's AA), the explicit formula, batching, the features of the fit,
the fit itself on a synthetic problem, and the variant through the multi-scale CAM."""
import numpy as np
import pytest
import torch

from transcam_nb.aggregation import (
    aggregation_features,
    block_weights,
    fit_aggregation,
    fit_weights,
    head_attention,
    learned_variant,
    refine_learned,
    uniform_weights,
    weighted_attention,
)
from transcam_nb.refine import (
    REFINEMENTS,
    head_mean,
    refine_cam,
    refine_cam_sdpa,
)

L, H, D = 4, 3, 8


def _qk(B=2, h=3, w=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    n = 1 + h * w
    return [(torch.randn(B, H, n, D, generator=g, dtype=dtype), torch.randn(B, H, n, D, generator=g, dtype=dtype),
             D ** -0.5) for _ in range(L)]


def _cam(B=2, C=5, h=3, w=4, seed=1, dtype=torch.float64):
    return torch.randn(B, C, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _close(a, b, tol=1e-5):
    torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol)


# ------------------------------------------------------------------------------- hand cases
@pytest.mark.parametrize("block", [0, 2, 3])
def test_weights_on_one_block_reproduce_that_blocks_refinement(block):
    qk, cam = _qk(), _cam()
    w = block_weights(L, H, [block])
    out = refine_learned(cam, qk, w)
    _close(out, refine_cam_sdpa(cam, [qk[block]], "transcam"))
    # and the explicit Eq. 5 with that block's head-mean map
    a = head_mean(head_attention(qk))  # [L, B, N, N]
    _close(out, refine_cam(cam, a[block], "transcam"))


def test_one_hot_weight_reproduces_one_head():
    qk, cam = _qk(), _cam()
    w = torch.zeros(L, H)
    w[1, 2] = 1.0
    a = head_attention(qk)[1, :, 2]  # block 1, head 2: [B, N, N]
    _close(refine_learned(cam, qk, w), refine_cam(cam, a, "transcam"))


def test_uniform_weights_are_the_mean_form_of_aa():
    qk, cam = _qk(), _cam()
    out = refine_learned(cam, qk, uniform_weights(L, H))
    _close(out, refine_cam_sdpa(cam, qk, "transcam", reduce="mean"))
    _close(out * L, refine_cam_sdpa(cam, qk, "transcam", reduce="sum"))  # the authors' sum: L times
    a = head_mean(head_attention(qk))
    _close(out * L, refine_cam(cam, a, "transcam", blocks="AA"))
    # the AS / AD subsets in the weighted form
    _close(refine_learned(cam, qk, block_weights(L, H, "AD")) * (L // 2),
           refine_cam(cam, a, "transcam", blocks="AD"))


def test_fused_equals_the_explicit_weighted_map():
    qk, cam = _qk(seed=5), _cam(C=11)  # C > D: two value groups
    w = torch.rand(L, H, generator=torch.Generator().manual_seed(2))
    w = w / w.sum()
    aw = weighted_attention(head_attention(qk), w)
    _close(refine_learned(cam, qk, w), refine_cam(cam, aw, "transcam"))


def test_batched_equals_unbatched():
    qk, cam = _qk(B=3), _cam(B=3)
    w = torch.softmax(torch.randn(L * H, generator=torch.Generator().manual_seed(4)), 0).view(L, H)
    full = refine_learned(cam, qk, w)
    feats = aggregation_features(cam, qk)
    for b in range(3):
        qb = [(q[b:b + 1], k[b:b + 1], s) for q, k, s in qk]
        _close(full[b:b + 1], refine_learned(cam[b:b + 1], qb, w))
        _close(feats[b:b + 1], aggregation_features(cam[b:b + 1], qb))


def test_features_are_the_pooled_refinement():
    qk, cam = _qk(), _cam()
    w = torch.softmax(torch.randn(L * H, generator=torch.Generator().manual_seed(7)), 0).view(L, H)
    pooled = refine_learned(cam, qk, w).mean(dim=(2, 3))  # [B, C]
    _close(torch.einsum("blhc,lh->bc", aggregation_features(cam, qk), w), pooled)


def test_bad_weights_are_refused():
    qk, cam = _qk(), _cam()
    with pytest.raises(ValueError, match=r"\[blocks, heads\] = \[4, 3\]"):
        refine_learned(cam, qk, torch.ones(3, 3))
    with pytest.raises(ValueError, match="non-negative"):
        refine_learned(cam, qk, -uniform_weights(L, H))
    with pytest.raises(ValueError, match="features must be"):
        fit_weights(torch.zeros(5, L, H, 3), torch.zeros(4, 3))


# ------------------------------------------------------------------------------- the fit
def _synthetic_problem(n=64, K=4, seed=0):
    """Head (2, 1) scores the present classes high, every other head is noise."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, K)) < 0.4).astype(np.float32)
    f = rng.normal(0, 1.0, (n, L, H, K)).astype(np.float32)
    f[:, 2, 1] = 4 * (2 * y - 1) + rng.normal(0, 0.5, (n, K))
    return torch.from_numpy(f), torch.from_numpy(y)


def test_fit_improves_the_objective_and_stays_on_the_simplex():
    f, y = _synthetic_problem()
    w, hist = fit_weights(f, y, steps=60, lr=0.2)
    assert w.shape == (L, H)
    assert (w >= 0).all() and abs(float(w.sum()) - 1) < 1e-5
    assert hist["loss"][-1] < hist["loss"][0] - 0.1
    assert hist["map_end"] > hist["map_start"]
    assert int(w.argmax()) == 2 * H + 1 and float(w[2, 1]) > 0.5
    # zero steps: the uniform start, the paper's AA
    w0, h0 = fit_weights(f, y, steps=0)
    _close(w0, uniform_weights(L, H))
    assert len(h0["loss"]) == 1 and h0["loss"][0] == pytest.approx(hist["loss"][0])


# ------------------------------------------------------------------------------- with a network
@pytest.fixture(scope="module")
def tiny_model():
    from transcam_nb.models import create_model

    torch.manual_seed(0)
    m = create_model("transcam_tiny", num_classes=4, embed_dim=32, num_heads=2, channel_ratio=0.25,
                     depth=3, drop_path_rate=0.0)
    return m.eval()


def _items(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8), (rng.random(3) < 0.5).astype(np.float32))
            for _ in range(n)]


def test_fit_aggregation_on_a_network(tiny_model):
    w, hist = fit_aggregation(tiny_model, _items(), scale=64, steps=5, lr=0.1)
    assert w.shape == (3, 2) and (w >= 0).all() and abs(float(w.sum()) - 1) < 1e-5
    assert hist["num_images"] == 4 and len(hist["loss"]) == 6
    with pytest.raises(ValueError, match="needs image labels"):
        fit_aggregation(tiny_model, [(_items(1)[0][0], None)], scale=64, steps=1)


def test_learned_variant_in_the_multiscale_cam(tiny_model):
    from transcam_nb.cam import multiscale_sum, multiscale_variants

    img, lab = _items(1, seed=3)[0]
    lab[:] = 1
    uniform = learned_variant(uniform_weights(3, 2), "uniform")
    ad = learned_variant(block_weights(3, 2, "AD"), "ad-weights")
    method = uniform["uniform"][0]
    assert method.startswith("learned-") and method in REFINEMENTS and ad["ad-weights"][0] != method
    assert learned_variant(uniform_weights(3, 2), "again")["again"][0] == method  # same weights, same name
    kw = dict(scales=(48, 64), flip=True)
    for (m, _), ref_blocks in ((uniform["uniform"], "AA"), (ad["ad-weights"], "AD")):
        got, _ = multiscale_sum(tiny_model, img, lab, method=m, **kw)
        want, _ = multiscale_sum(tiny_model, img, lab, method="transcam", blocks=ref_blocks, reduce="mean", **kw)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    res = multiscale_variants(tiny_model, img, lab, variants={**uniform, "TransCAM (AA)": ("transcam", "AA")}, **kw)
    assert res["uniform"][0].shape == res["TransCAM (AA)"][0].shape == (3, 40, 56)
