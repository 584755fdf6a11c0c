"""transcam_nb.metrics: confusion matrix and mIoU against an independent computation, τ sweep, golden."""
import numpy as np
import pytest

from conftest import shared_path
from transcam_nb.config import VOC_CLASSES
from transcam_nb.metrics import DEFAULT_THRESHOLDS, ConfusionMatrix, ThresholdSweep
from transcam_nb.pseudo import label_map


def reference_counts(pairs, C=21):
    """The authors' evaluation.py formula, written independently with per-class boolean masks."""
    P = np.zeros(C, np.int64)
    T = np.zeros(C, np.int64)
    TP = np.zeros(C, np.int64)
    for pred, gt in pairs:
        cal = gt < 255
        mask = (pred == gt) & cal
        for i in range(C):
            P[i] += np.sum((pred == i) & cal)
            T[i] += np.sum((gt == i) & cal)
            TP[i] += np.sum((gt == i) & mask)
    iou = TP / (T + P - TP + 1e-10)
    return TP, P, T, iou, iou.mean()


def _random_pairs(n, seed=0, C=21, shape=(7, 9)):
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        gt = rng.choice([0, 3, 8, 15, 255], size=shape).astype(np.uint8)
        pred = rng.choice([0, 3, 8, 12, 15], size=shape).astype(np.uint8)
        pairs.append((pred, gt))
    return pairs


def test_matches_reference_formula_over_a_dataset():
    pairs = _random_pairs(5)
    cm = ConfusionMatrix()
    for p, g in pairs:
        cm.update(p, g)
    TP, P, T, iou, miou = reference_counts(pairs)
    np.testing.assert_array_equal(cm.tp, TP)
    np.testing.assert_array_equal(cm.pred_count, P)
    np.testing.assert_array_equal(cm.true_count, T)
    np.testing.assert_allclose(cm.iou(), iou, rtol=0, atol=1e-15)
    assert cm.miou() == pytest.approx(miou, abs=1e-15)
    # dataset-level accumulation is not the mean of per-image mIoUs
    per_image = np.mean([ConfusionMatrix().update(p, g).miou() for p, g in pairs])
    assert abs(per_image - miou) > 1e-6


def test_absent_classes_count_as_zero_in_the_mean():
    gt = np.array([[0, 0, 1, 1]], np.uint8)
    pred = np.array([[0, 1, 1, 1]], np.uint8)
    cm = ConfusionMatrix(21).update(pred, gt)
    iou = cm.iou()
    assert iou[0] == pytest.approx(1 / 2)  # TP 1, T 2, P 1
    assert iou[1] == pytest.approx(2 / 3)  # TP 2, T 2, P 3
    assert np.all(iou[2:] == 0)
    assert cm.miou() == pytest.approx((1 / 2 + 2 / 3) / 21)
    assert cm.miou(present_only=True) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_all_ignore_image_changes_nothing():
    pairs = _random_pairs(3, seed=1)
    a = ConfusionMatrix()
    for p, g in pairs:
        a.update(p, g)
    b = ConfusionMatrix()
    for p, g in pairs:
        b.update(p, g)
    b.update(np.full((4, 5), 7, np.uint8), np.full((4, 5), 255, np.uint8))
    np.testing.assert_array_equal(a.mat, b.mat)
    empty = ConfusionMatrix().update(np.zeros((3, 3), np.uint8), np.full((3, 3), 255, np.uint8))
    assert empty.mat.sum() == 0
    assert empty.miou() == 0.0
    assert np.all(empty.iou() == 0)


def test_prediction_outside_range_counts_only_in_T():
    gt = np.array([[1, 1, 2]], np.uint8)
    pred = np.array([[255, 1, 2]], np.uint8)
    cm = ConfusionMatrix(21).update(pred, gt)
    TP, P, T, iou, miou = reference_counts([(pred, gt)])
    np.testing.assert_array_equal(cm.true_count, T)
    np.testing.assert_array_equal(cm.pred_count, P)
    np.testing.assert_allclose(cm.iou(), iou)


def test_merge_equals_single_pass_and_torch_input():
    import torch

    pairs = _random_pairs(4, seed=2)
    full = ConfusionMatrix()
    for p, g in pairs:
        full.update(p, g)
    a, b = ConfusionMatrix(), ConfusionMatrix()
    for p, g in pairs[:2]:
        a.update(torch.from_numpy(p), torch.from_numpy(g))
    for p, g in pairs[2:]:
        b.update(p, g)
    np.testing.assert_array_equal((a + b).mat, full.mat)


def test_errors_are_clear():
    cm = ConfusionMatrix(21)
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match="outside"):
        cm.update(np.zeros((1, 2), np.uint8), np.array([[0, 40]], np.uint8))
    with pytest.raises(TypeError, match="integer"):
        cm.update(np.full((1, 2), 0.5), np.zeros((1, 2), np.uint8))


def test_table_has_voc_names_and_mean_row():
    pairs = _random_pairs(2)
    cm = ConfusionMatrix()
    for p, g in pairs:
        cm.update(p, g)
    df = cm.table()
    assert list(df["class"][:21]) == ["background", *VOC_CLASSES]
    assert df.loc["mIoU", "IoU"] == pytest.approx(cm.miou())
    assert len(df) == 22
    assert df["class"][15] == "person" and df["class"][20] == "tvmonitor"


def _random_cams(rng, shape=(6, 8)):
    K = rng.integers(0, 4)
    classes = np.sort(rng.choice(20, size=K, replace=False))
    cams = rng.random((K, *shape)).astype(np.float32) * 0.7
    return cams, classes


def test_sweep_equals_label_map_at_every_threshold():
    rng = np.random.default_rng(3)
    data = []
    for _ in range(4):
        cams, classes = _random_cams(rng)
        gt = rng.choice([0, 1, 5, 9, 255], size=(6, 8)).astype(np.uint8)
        data.append((cams, classes, gt))
    sweep = ThresholdSweep()
    for cams, classes, gt in data:
        sweep.update(cams, classes, gt)
    res = sweep.result()
    # the one τ grid: 0.00 ... 0.90 (issue: contains the authors' 0 ... 0.59)
    assert len(res.thresholds) == 91 and res.thresholds[0] == 0.0 and res.thresholds[-1] == pytest.approx(0.90)
    assert res.thresholds[59] == pytest.approx(0.59)
    for i in (0, 13, 25, 59, 90):
        tau = DEFAULT_THRESHOLDS[i]
        preds = [(label_map(c, k, tau, shape=g.shape), g) for c, k, g in data]
        _, _, _, _, miou = reference_counts(preds)
        assert res.miou[i] == pytest.approx(miou, abs=1e-15)
    assert res.best_miou == pytest.approx(res.miou.max())
    assert res.best_tau == res.thresholds[int(np.argmax(res.miou))]
    assert res.at(0.25).miou() == pytest.approx(res.miou[25])
    assert list(res.curve().columns) == ["tau", "mIoU"]
    # one summary shape, fractions
    from transcam_nb.metrics import sweep_grid, sweep_summary

    summ = sweep_summary(res, 0.25)
    assert summ["taus"] == [float(t) for t in DEFAULT_THRESHOLDS] and summ["mious"] == list(res.miou)
    assert summ["best_tau"] == res.best_tau and summ["best_miou"] == res.best_miou <= 1.0
    assert summ["fixed_tau"] == 0.25 and summ["fixed_miou"] == res.miou[25]
    assert summ["iou_fixed"] == list(res.at(0.25).iou())
    assert sweep_summary(res)["fixed_miou"] is None
    assert sweep_grid(0.255)[:3] == (0.0, 0.01, 0.02) and 0.255 in sweep_grid(0.255) and len(sweep_grid(0.25)) == 91


def test_sweep_uses_float32_threshold_like_the_reference():
    # float32(0.3) > 0.3 in float64, but equals float32(0.3): the reference's float32 score
    # tensor makes it a tie, and a tie goes to background (channel 0)
    cams = np.full((1, 1, 2), np.float32(0.3))
    gt = np.array([[1, 1]], np.uint8)
    assert label_map(cams, [0], 0.3).tolist() == [[0, 0]]
    sweep = ThresholdSweep([0.29, 0.3])
    sweep.update(cams, [0], gt)
    assert sweep.result().matrices[1].pred_count[0] == 2
    assert sweep.result().matrices[0].pred_count[1] == 2


@pytest.mark.parametrize("weights", ["", "cond_"])
def test_golden_label_maps_and_metric(weights):
    """The pipeline's metric steps on the stored cam_<k>: label maps at τ 0.25/0.60, counts, IoU, mIoU."""
    g = np.load(shared_path("reference", "golden", f"golden_{weights}pipeline.npz"))
    keys = g["cam_keys"]
    cams = np.stack([g[f"cam_{k}"] for k in keys])
    gt = g["gt_mask"]
    sweep = ThresholdSweep([0.25, 0.60])
    sweep.update(cams, keys, gt)
    for i, (tau, tag) in enumerate([(0.25, "t025"), (0.60, "t060")]):
        lab = label_map(cams, keys, tau)
        np.testing.assert_array_equal(lab, g[f"label_map_{tag}"])
        cm = ConfusionMatrix(21).update(lab, gt)
        np.testing.assert_array_equal(cm.tp, g[f"TP_{tag}"])
        np.testing.assert_array_equal(cm.pred_count, g[f"P_{tag}"])
        np.testing.assert_array_equal(cm.true_count, g[f"T_{tag}"])
        np.testing.assert_allclose(cm.iou(), g[f"iou_{tag}"], rtol=0, atol=1e-12)
        assert cm.miou() == pytest.approx(float(g[f"miou_{tag}"]), abs=1e-12)
        np.testing.assert_array_equal(sweep.result().matrices[i].mat, cm.mat)
