"""Attention diagnostic, CAM coverage / precision, and the one-pass variant evaluation."""
import numpy as np
import pytest
import torch

from transcam_nb.diagnostics import (VARIANTS, AttentionDiagnostic, CoveragePrecision, attention_shares,
                                     evaluate_refinements, token_membership)


def test_token_membership_hand_made():
    m = np.zeros((32, 32), np.uint8)
    m[:16, :16] = 1  # object 1 fills the top-left token
    m[16:, 16:24] = 2  # object 2 fills half of the bottom-right token
    f = token_membership(m, 2, (2, 2))
    assert f.shape == (3, 4)
    np.testing.assert_allclose(f[0], [0.0, 1.0, 1.0, 0.5])
    np.testing.assert_allclose(f[1], [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(f[2], [0.0, 0.0, 0.0, 0.5])
    np.testing.assert_allclose(f.sum(0), 1.0)
    # a grid that does not divide the image: 30 px onto 3 tokens = 10 px cells
    m = np.zeros((30, 30), np.uint8)
    m[:10, :10] = 1
    f = token_membership(m, 1, (3, 3))
    np.testing.assert_allclose(f[1], [1, 0, 0, 0, 0, 0, 0, 0, 0])


def test_attention_shares_hand_made():
    # 4 patch tokens + class token; token 0 = object 1, tokens 1..3 background
    mem = np.array([[0, 1, 1, 1], [1, 0, 0, 0]], np.float64)
    a = np.zeros((1, 5, 5))
    a[0, :, 0] = 0.2  # every row gives 0.2 to the class token (dropped, then renormalised)
    a[0, 1, 1:] = [0.4, 0.4, 0.0, 0.0]  # object query: half on itself, half on background
    for q in (2, 3, 4):
        a[0, q, 1:] = 0.2  # background queries: uniform over patches
    s = attention_shares(a, mem)
    assert s["obj_n"] == 1 and s["bg_n"] == 3
    np.testing.assert_allclose(s["obj_sum"], [0.5])
    np.testing.assert_allclose(s["bg_sum"], [3 * 0.75])
    assert s["obj_uniform_sum"] == pytest.approx(0.25) and s["bg_uniform_sum"] == pytest.approx(3 * 0.75)
    with pytest.raises(ValueError, match="tokens"):
        attention_shares(np.zeros((1, 7, 7)), mem)


def test_attention_diagnostic_pools_blocks_and_their_sum():
    mem = np.array([[0, 0, 1, 1], [1, 1, 0, 0]], np.float64)  # object = tokens 0, 1
    eye = np.eye(4)
    uni = np.full((4, 4), 0.25)
    attn = np.stack([eye, uni])  # block 0: every token looks at itself; block 1: uniform
    d = AttentionDiagnostic(depth=2).update(attn, mem).result()
    assert d["obj_to_own"] == [1.0, 0.5] and d["bg_to_bg"] == [1.0, 0.5]
    # the block sum: rows (1 + .25, .25, .25, .25) / 2 → own-object share (1.25 + .25) / 2 = 0.75
    assert d["obj_to_own_sum"] == pytest.approx(0.75) and d["bg_to_bg_sum"] == pytest.approx(0.75)
    assert d["obj_to_own_uniform"] == pytest.approx(0.5) and d["images"] == 1


def test_coverage_precision_hand_made():
    gt = np.zeros((20, 20), np.uint8)
    gt[5:15, 5:15] = 3  # one object of class 2 (0-based), 100 px
    obj_mask = gt == 3
    part = np.zeros_like(obj_mask)
    part[5:8, 5:8] = True
    objects = [dict(class_index=2, mask=obj_mask, part_mask=part)]
    cam = np.zeros((1, 20, 20), np.float32)
    cam[0, 5:15, 0:10] = 1.0  # left half of the object (50 px) + 50 px of background
    cp = CoveragePrecision(0.3).update(cam, [2], gt, objects).result()
    assert cp["coverage"] == pytest.approx(0.5) and cp["part_coverage"] == pytest.approx(1.0)
    assert cp["body_coverage"] == pytest.approx((50 - 9) / (100 - 9), abs=1e-4)
    assert cp["precision"] == pytest.approx(0.5) and cp["objects"] == 1


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from transcam_nb.data import synthetic

    root = tmp_path_factory.mktemp("bench")
    return synthetic.generate(root / "b", n_train=0, n_val=2, n_test=0, image_size=64, workers=0, progress=False)


def test_one_pass_evaluation_equals_the_library_pipeline(bench):
    """Each variant of the shared-forward evaluation must equal cam.multiscale_cam's own
    pipeline (one forward per method) followed by metrics.ThresholdSweep."""
    from transcam_nb.cam import multiscale_cam
    from transcam_nb.data.voc import VOCDataset
    from transcam_nb.metrics import ThresholdSweep
    from transcam_nb.models import create_model

    torch.manual_seed(0)
    model = create_model("transcam_tiny", num_classes=9, embed_dim=48, num_heads=3, channel_ratio=0.25, depth=6,
                         drop_path_rate=0.0)
    # calibrate the BatchNorms on one random batch (as test_cam's model): with raw initialisation the
    # maps are nearly flat, and the float rounding of "maps kept" vs "fused attention" forwards flips pixels
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None
    with torch.no_grad():
        model(torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    model.eval()
    taus = [i / 10 for i in range(10)]
    res = evaluate_refinements(model, bench, "val", scales=(64, 96), thresholds=taus, fixed_taus=(0.3,),
                               progress=False)
    assert set(res["variants"]) == set(VARIANTS)
    ds = VOCDataset(bench, "val", mode="infer")
    for name, (method, blocks) in VARIANTS.items():
        sw = ThresholdSweep(taus, num_classes=9)
        for i in range(len(ds)):
            s = ds[i]
            cams, classes = multiscale_cam(model, s.image, s.label, scales=(64, 96), method=method, blocks=blocks)
            sw.update(cams, classes, s.mask)
        r = sw.result()
        got = res["variants"][name]
        assert got["best_miou"] == pytest.approx(r.best_miou, abs=1e-4), name
        assert got["miou_at"]["0.30"] == pytest.approx(r.at(0.3).miou(), abs=1e-4), name
        assert 0 <= got["coverage"] <= 1
        assert np.isnan(got["precision"]) or 0 <= got["precision"] <= 1  # nan: nothing above the threshold
    a = res["attention"]
    assert len(a["obj_to_own"]) == 6 and len(a["bg_to_bg"]) == 6 and a["images"] == 2


def test_unknown_variant_is_an_error(bench):
    from transcam_nb.models import create_model

    model = create_model("transcam_tiny", num_classes=9, embed_dim=48, num_heads=3, channel_ratio=0.25, depth=3)
    with pytest.raises(ValueError, match="unknown variant"):
        evaluate_refinements(model, bench, "val", variants=("cam", "gradcam"), progress=False)
