"""transcam_nb.refine: paper Eq. 2-5, 9-11 on hand-made tensors, non-square grids, golden data."""
import numpy as np
import pytest
import torch

from conftest import golden_path, shared_path
from transcam_nb.refine import (
    METHODS,
    attention_map,
    attention_rollout,
    head_mean,
    refine_cam,
    resolve_blocks,
)


def _softmax_rows(x):
    return torch.softmax(x, dim=-1)


def _rand_attn(L, B, N, heads=None, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    shape = (L, B, N, N) if heads is None else (L, B, heads, N, N)
    return _softmax_rows(torch.randn(*shape, generator=g, dtype=dtype) * 2)


# --------------------------------------------------------------------------- hand-made cases
@pytest.mark.parametrize("hw", [(2, 3), (3, 3), (1, 4), (4, 2)])
@pytest.mark.parametrize("method", ["transcam", "attnagg"])
def test_identity_attention_leaves_cam_unchanged(hw, method):
    h, w = hw
    cam = torch.randn(2, 5, h, w)
    N = 1 + h * w
    attn = torch.eye(N).expand(2, N, N).clone()
    out = refine_cam(cam, attn, method)
    torch.testing.assert_close(out, cam)
    # class token already dropped: same answer
    out2 = refine_cam(cam, attn[:, 1:, 1:], method)
    torch.testing.assert_close(out2, cam)


@pytest.mark.parametrize("method", ["transcam", "attnagg"])
def test_uniform_attention_spreads_evenly(method):
    h, w = 3, 4
    cam = torch.randn(1, 3, h, w, dtype=torch.float64)
    N = 1 + h * w
    attn = torch.full((1, N, N), 1.0 / N, dtype=torch.float64)
    out = refine_cam(cam, attn, method)
    # every location gets the same value: sum of the class scores / N
    expected = cam.sum(dim=(2, 3), keepdim=True) / N
    torch.testing.assert_close(out, expected.expand_as(out))


def _loops_transcam(cam, A, transpose=False):
    """refined[b,c,i] = sum_j A[b,i,j] cam[b,c,j] written with explicit loops (numpy)."""
    cam = np.asarray(cam, dtype=np.float64)
    A = np.asarray(A, dtype=np.float64)
    B, C, h, w = cam.shape
    flat = cam.reshape(B, C, h * w)
    out = np.zeros_like(flat)
    for b in range(B):
        for c in range(C):
            for i in range(h * w):
                s = 0.0
                for j in range(h * w):
                    a = A[b, j, i] if transpose else A[b, i, j]
                    s += a * flat[b, c, j]
                out[b, c, i] = s
    return out.reshape(B, C, h, w)


@pytest.mark.parametrize("hw", [(2, 3), (3, 2), (2, 2)])
def test_transcam_and_attnagg_against_loops(hw):
    h, w = hw
    B, C, N = 2, 3, 1 + h * w
    cam = torch.randn(B, C, h, w, dtype=torch.float64)
    A = _rand_attn(1, B, N, seed=3)[0]  # [B,N,N] with class token
    Ap = A[:, 1:, 1:].numpy()
    torch.testing.assert_close(refine_cam(cam, A, "transcam"), torch.from_numpy(_loops_transcam(cam, Ap)))
    torch.testing.assert_close(refine_cam(cam, A, "attnagg"), torch.from_numpy(_loops_transcam(cam, Ap, True)))
    # the two differ for a non-symmetric A (the orientation matters)
    assert not torch.allclose(refine_cam(cam, A, "transcam"), refine_cam(cam, A, "attnagg"))


def test_transcam_hand_computed_2x1():
    # grid 1x2, class token + 2 patches; location 0 attends mostly to location 1
    A = torch.tensor([[[0.2, 0.4, 0.4],
                       [0.1, 0.1, 0.8],
                       [0.3, 0.6, 0.1]]], dtype=torch.float64)
    cam = torch.tensor([[[[1.0, 10.0]]]], dtype=torch.float64)  # [1,1,1,2]
    out = refine_cam(cam, A, "transcam")
    # loc0: 0.1*1 + 0.8*10 = 8.1 ; loc1: 0.6*1 + 0.1*10 = 1.6
    torch.testing.assert_close(out, torch.tensor([[[[8.1, 1.6]]]], dtype=torch.float64))
    out = refine_cam(cam, A, "attnagg")
    # transposed: loc0: 0.1*1 + 0.6*10 = 6.1 ; loc1: 0.8*1 + 0.1*10 = 1.8
    torch.testing.assert_close(out, torch.tensor([[[[6.1, 1.8]]]], dtype=torch.float64))
    out = refine_cam(cam, A, "clsattn")
    # class-token row (0.4, 0.4) times the CAM
    torch.testing.assert_close(out, torch.tensor([[[[0.4, 4.0]]]], dtype=torch.float64))


def test_clsattn_against_hand_computation_nonsquare():
    h, w = 2, 3
    B, C, N = 2, 4, 1 + h * w
    cam = torch.randn(B, C, h, w, dtype=torch.float64)
    A = _rand_attn(1, B, N, seed=5)[0]
    out = refine_cam(cam, A, "clsattn").numpy()
    for b in range(B):
        for c in range(C):
            for y in range(h):
                for x in range(w):
                    expected = A[b, 0, 1 + y * w + x].item() * cam[b, c, y, x].item()
                    assert out[b, c, y, x] == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_clsattn_needs_class_token():
    cam = torch.randn(1, 2, 2, 2)
    with pytest.raises(ValueError, match="class-token"):
        refine_cam(cam, torch.rand(1, 4, 4), "clsattn")


def test_none_returns_baseline_cam():
    cam = torch.randn(1, 3, 2, 5)
    assert refine_cam(cam, None, "none") is cam


def test_bad_inputs_raise_clear_errors():
    cam = torch.randn(1, 2, 2, 3)
    with pytest.raises(ValueError, match="N=5"):
        refine_cam(cam, torch.rand(1, 5, 5))
    with pytest.raises(ValueError, match="unknown refinement method"):
        refine_cam(cam, torch.rand(1, 7, 7), "gradcam")
    with pytest.raises(ValueError, match="batch size"):
        refine_cam(cam, torch.rand(2, 7, 7))
    with pytest.raises(ValueError, match="needs the attention"):
        refine_cam(cam, None, "transcam")
    with pytest.raises(ValueError, match="per-block"):
        refine_cam(cam, torch.rand(1, 7, 7), "rollout")


# --------------------------------------------------------------------------- blocks, Eq. 2-4
def test_resolve_blocks_presets():
    assert resolve_blocks(None) == list(range(12))
    assert resolve_blocks("AA") == list(range(12))
    assert resolve_blocks("AS") == list(range(6))
    assert resolve_blocks("AD") == list(range(6, 12))
    assert resolve_blocks([11, 0, 0]) == [0, 11]
    assert resolve_blocks(-1) == [11]
    assert resolve_blocks("0,3,11") == [0, 3, 11]
    assert resolve_blocks("6-8,11") == [6, 7, 8, 11]
    assert resolve_blocks("AS", depth=4) == [0, 1]
    assert resolve_blocks("last8") == list(range(4, 12))
    assert resolve_blocks("last8", depth=6) == list(range(6))
    with pytest.raises(ValueError, match="out of range"):
        resolve_blocks([12])
    with pytest.raises(ValueError, match="not understood"):
        resolve_blocks("deepest")


def test_attention_map_sum_mean_blocks_and_heads():
    L, B, H, N = 12, 2, 3, 7
    per_head = _rand_attn(L, B, N, heads=H, seed=1)
    hm = head_mean(per_head)
    # Eq. 2: mean over heads, by hand
    torch.testing.assert_close(hm[4, 1], sum(per_head[4, 1, k] for k in range(H)) / H)
    for blocks, idx in [("AA", range(12)), ("AS", range(6)), ("AD", range(6, 12)), ([2, 9], [2, 9])]:
        by_hand = sum(hm[i] for i in idx)
        s = attention_map(hm, blocks, drop_cls_token=False)
        torch.testing.assert_close(s, by_hand)
        m = attention_map(hm, blocks, reduce="mean", drop_cls_token=False)
        torch.testing.assert_close(m, by_hand / len(list(idx)))
        # Eq. 4: drop class-token row and column
        torch.testing.assert_close(attention_map(hm, blocks), by_hand[:, 1:, 1:])
        # per-head 5-D input and a list of per-block tensors give the same
        torch.testing.assert_close(attention_map(per_head, blocks), by_hand[:, 1:, 1:])
        torch.testing.assert_close(attention_map(list(per_head), blocks), by_hand[:, 1:, 1:])
    # full rows of the sum over all blocks sum to 12 (softmax rows)
    torch.testing.assert_close(attention_map(hm, drop_cls_token=False).sum(-1), torch.full((B, N), 12.0, dtype=hm.dtype))


def test_sum_and_mean_give_same_maps_after_normalisation():
    h, w = 3, 2
    cam = torch.randn(1, 2, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cam[:, :, 0, 0] = 5.0  # every class has a positive part, so the max is > 0
    hm = _rand_attn(12, 1, 1 + h * w, seed=7)
    a = refine_cam(cam, hm, "transcam", reduce="sum").clamp_min(0)
    b = refine_cam(cam, hm, "transcam", reduce="mean").clamp_min(0)
    norm = lambda x: x / x.amax(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(norm(a), norm(b))
    torch.testing.assert_close(a, 12 * b)


def test_refine_with_per_block_input_equals_aggregated():
    h, w = 2, 3
    cam = torch.randn(2, 4, h, w, dtype=torch.float64)
    hm = _rand_attn(12, 2, 1 + h * w, seed=9)
    for method in ("transcam", "clsattn", "attnagg"):
        for blocks in ("AA", "AS", [5]):
            agg = attention_map(hm, blocks, drop_cls_token=False)
            torch.testing.assert_close(refine_cam(cam, hm, method, blocks=blocks), refine_cam(cam, agg, method))


# --------------------------------------------------------------------------- rollout
def _rollout_by_hand(hm, blocks, residual=0.5):
    hm = hm.numpy()
    L, B, N, _ = hm.shape
    out = []
    for b in range(B):
        R = np.eye(N)
        for l in blocks:
            a = (1 - residual) * hm[l, b] + residual * np.eye(N)
            for i in range(N):
                a[i] = a[i] / a[i].sum()
            R = a @ R
        out.append(R)
    return torch.from_numpy(np.stack(out))


def test_attention_rollout_against_hand_product():
    h, w = 2, 3
    hm = _rand_attn(12, 2, 1 + h * w, seed=11)
    for blocks in (list(range(12)), [0, 4, 7]):
        expected = _rollout_by_hand(hm, blocks)
        torch.testing.assert_close(attention_rollout(hm, blocks, drop_cls_token=False), expected)
        cam = torch.randn(2, 3, h, w, dtype=torch.float64)
        torch.testing.assert_close(
            refine_cam(cam, hm, "rollout", blocks=blocks),
            torch.from_numpy(_loops_transcam(cam, expected[:, 1:, 1:].numpy())),
        )
    # residual 1: identity everywhere -> CAM unchanged; single block, residual 0 -> transcam with that block
    cam = torch.randn(2, 3, h, w, dtype=torch.float64)
    torch.testing.assert_close(refine_cam(cam, hm, "rollout", residual=1.0), cam)
    torch.testing.assert_close(
        refine_cam(cam, hm, "rollout", blocks=[3], residual=0.0), refine_cam(cam, hm, "transcam", blocks=[3])
    )


# --------------------------------------------------------------------------- dtype / device
def test_numpy_in_numpy_out_and_float32_under_autocast():
    h, w = 2, 4
    cam = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
    hm = _rand_attn(12, 1, 1 + h * w, seed=2, dtype=torch.float32)
    agg = attention_map(hm, drop_cls_token=False)
    out_np = refine_cam(cam, agg.numpy(), "transcam")
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float32
    ref = refine_cam(torch.from_numpy(cam), agg, "transcam")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_ac = refine_cam(torch.from_numpy(cam), agg, "transcam")
    assert out_ac.dtype == torch.float32
    torch.testing.assert_close(out_ac, ref)
    np.testing.assert_allclose(out_np, ref.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
@pytest.mark.parametrize("method", METHODS)
def test_cuda_matches_cpu(method):
    h, w = 3, 5
    cam = torch.randn(2, 4, h, w)
    hm = _rand_attn(12, 2, 1 + h * w, dtype=torch.float32)
    ref = refine_cam(cam, hm, method)
    out = refine_cam(cam.cuda(), hm.cuda(), method)
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- golden data
GOLDEN_FILES = [
    "golden_random128.npz", "golden_photo128.npz", "golden_cond_random128.npz", "golden_cond_photo128.npz",
]


@pytest.mark.parametrize("fname", GOLDEN_FILES)
def test_golden_refinement_from_authors_attention(fname):
    """transcam / clsattn / attnagg from the authors' per-block attention and raw CAM.

    Tolerance from golden/README.md: max|ours - ref| <= 1e-4 * max|ref| per array.
    """
    g = np.load(golden_path(fname))
    hm = torch.from_numpy(g["attn_headmean"])  # [12, B, N, N]
    cam = torch.from_numpy(g["convcam"])  # [B, 21, h, w]
    for method in ("transcam", "clsattn", "attnagg"):
        ref = g[method]
        tol = 1e-4 * np.abs(ref).max()
        for attn in (hm, list(hm), attention_map(hm, drop_cls_token=False)):
            out = refine_cam(cam, attn, method).numpy()
            assert out.shape == ref.shape
            err = np.abs(out - ref).max()
            assert err <= tol, f"{fname}/{method}: max err {err:.3g} > {tol:.3g}"


def test_golden_detects_the_wrong_orientation():
    """The golden comparison can fail: A^T instead of A (attnagg for transcam) is far off (cond)."""
    g = np.load(golden_path("golden_cond_random128.npz"))
    hm = torch.from_numpy(g["attn_headmean"])
    wrong = refine_cam(torch.from_numpy(g["convcam"]), hm, "attnagg").numpy()
    ref = g["transcam"]
    assert np.abs(wrong - ref).max() > 1e-2 * np.abs(ref).max()


# ----------------------------------------------------------------------------- CLIP-ES-style affinity
def test_cam_box_mask_hand_made():
    from transcam_nb.refine import cam_box_mask

    c = torch.zeros(1, 2, 4, 5)
    c[0, 0, 0, 0] = c[0, 0, 1, 1] = 0.9  # diagonal neighbours: one component, box rows 0-1, cols 0-1
    c[0, 0, 3, 4] = 0.5  # a second component: its own 1x1 box
    c[0, 0, 2, 2] = 0.39  # below the threshold
    m = cam_box_mask(c, 0.4)
    expect = torch.zeros(4, 5)
    expect[0:2, 0:2] = 1
    expect[3, 4] = 1
    torch.testing.assert_close(m[0, 0], expect)
    assert m[0, 1].sum() == 0  # nothing above: no key allowed


def test_affinity_sinkhorn_hand_computed_1x2():
    from transcam_nb.refine import affinity_refine

    a = torch.zeros(1, 1, 3, 3)
    a[0, 0, 1:, 1:] = torch.tensor([[3.0, 1.0], [1.0, 1.0]])
    cam = torch.tensor([2.0, -1.0]).reshape(1, 1, 1, 2)
    # one round: columns [4, 2] -> [[.75, .5], [.25, .5]]; rows [1.25, .75] -> [[.6, .4], [1/3, 2/3]];
    # symmetrised off-diagonal (0.4 + 1/3) / 2 = 11/30; raw CAM, no box: [1.2 - 11/30, 22/30 - 2/3]
    r = affinity_refine(cam, a, blocks=[0], relu_cam=False, box_mask=False, sinkhorn=True, rounds=1)
    torch.testing.assert_close(r.reshape(2), torch.tensor([1.2 - 11 / 30, 22 / 30 - 2 / 3]))


def test_affinity_uniform_attention_with_relu_and_box():
    from transcam_nb.refine import affinity_refine

    attn = torch.full((2, 1, 5, 5), 0.2)  # 2 blocks, uniform over the class token + 4 patches
    cam = torch.tensor([[2.0, -2.0], [1.0, 0.0]]).reshape(1, 1, 2, 2)
    # ReLU + max-norm: [1, 0, .5, 0]; box of {>= .4} = column 0; Sinkhorn of uniform = 1/4 everywhere
    r = affinity_refine(cam, attn)
    torch.testing.assert_close(r, torch.full((1, 1, 2, 2), (1 + 0.5) / 4))
    # numpy in, numpy out
    assert isinstance(affinity_refine(cam.numpy(), attn.numpy()), np.ndarray)


def test_affinity_with_every_ingredient_off_is_eq5_mean():
    from transcam_nb.refine import affinity_refine

    g = torch.Generator().manual_seed(0)
    attn = torch.rand(4, 2, 10, 10, generator=g).softmax(-1)
    cam = torch.randn(2, 3, 3, 3, generator=g)
    r = affinity_refine(cam, attn, blocks=[1, 3], relu_cam=False, box_mask=False, sinkhorn=False)
    torch.testing.assert_close(r, refine_cam(cam, attn, "transcam", blocks=[1, 3], reduce="mean"))
    # default blocks: the last 8 (here all 4)
    r8 = affinity_refine(cam, attn, relu_cam=False, box_mask=False, sinkhorn=False)
    torch.testing.assert_close(r8, refine_cam(cam, attn, "transcam", blocks="AA", reduce="mean"))


def test_affinity_variants_are_registered_with_their_ablation():
    """The CLIP-ES-style variant is in the one variants table; its ingredient ablation is
    selectable by name, and each entry runs the switches it names."""
    from transcam_nb.refine import ABLATION_VARIANTS, VARIANTS, get_refinement, select_variants

    assert VARIANTS["Affinity (CLIP-ES-style)"] == ("affinity", "last8")
    assert set(select_variants(["affinity", *ABLATION_VARIANTS])) == {"Affinity (CLIP-ES-style)", *ABLATION_VARIANTS}
    torch.manual_seed(0)
    cam = torch.randn(2, 3, 4, 5)
    attn = torch.softmax(torch.randn(12, 2, 21, 21), -1)

    class _Att:
        def per_block(self):
            return attn

    from transcam_nb.refine import affinity_refine

    for name, (method, blocks) in ABLATION_VARIANTS.items():
        fn = get_refinement(method).fn
        b = resolve_blocks(blocks, 12)
        switches = {"affinity_relu": dict(box_mask=False, sinkhorn=False),
                    "affinity_box": dict(relu_cam=False, sinkhorn=False),
                    "affinity_sinkhorn": dict(box_mask=False)}[method]
        torch.testing.assert_close(fn(cam, _Att(), b), affinity_refine(cam, attn, blocks=b, **switches), msg=name)
