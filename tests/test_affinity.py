"""PSA (transcam_nb.postprocess.affinity): affinity labels, pairs, loss, AffinityNet, training
with resume, transition matrix and random walk — against hand-made cases and brute force."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import shared_path
from transcam_nb.postprocess import (
    AFFINITY_PRESETS,
    AffinityDataset,
    AffinityNet,
    ResNet38d,
    affinity_labels,
    affinity_loss,
    dense_affinity,
    extract_pair_labels,
    get_affinity_preset,
    load_affinity_checkpoint,
    pair_affinity,
    pair_indices,
    pair_offsets,
    random_walk,
    train_affinity,
    transition_matrix,
)


# ---------------------------------------------------------------------------------- labels
def test_affinity_labels_on_handmade_maps():
    la = np.array([[0, 0, 3, 3], [0, 7, 0, 0]], np.uint8)
    ha = np.array([[0, 5, 3, 0], [0, 7, 7, 0]], np.uint8)
    # fg from la; bg only where both are bg; la bg + ha fg → ignore
    expected = np.array([[0, 255, 3, 3], [0, 7, 255, 0]], np.uint8)
    out = affinity_labels(la, ha)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint8
    t = affinity_labels(torch.from_numpy(la), torch.from_numpy(ha))
    assert isinstance(t, torch.Tensor)
    np.testing.assert_array_equal(t.numpy(), expected)
    with pytest.raises(ValueError, match="same shape"):
        affinity_labels(la, ha[:, :3])
    with pytest.raises(TypeError, match="integer"):
        affinity_labels(la.astype(np.float32), ha)


# ---------------------------------------------------------------------------------- pairs
def test_pair_offsets_half_disc():
    offs = pair_offsets(5)
    assert len(offs) == 34  # 4 + 9 + 9 + 7 + 5
    assert len(set(offs)) == 34
    for dy, dx in offs:
        assert dy * dy + dx * dx < 25
        assert dy > 0 or (dy == 0 and dx > 0)  # one of each ±offset pair
        assert (-dy, -dx) not in offs
    # every nonzero offset within the radius is covered by itself or its negation
    for dy in range(-4, 5):
        for dx in range(-4, 5):
            if (dy, dx) != (0, 0) and dy * dy + dx * dx < 25:
                assert ((dy, dx) in offs) != ((-dy, -dx) in offs)


@pytest.mark.parametrize("h,w,r", [(9, 12, 5), (7, 11, 3), (5, 9, 5)])
def test_pair_indices_match_brute_force(h, w, r):
    ind_from, ind_to = pair_indices(h, w, r)
    got = {(int(f), int(t)) for k in range(ind_to.shape[0]) for f, t in zip(ind_from, ind_to[k])}
    # brute force from the description: "from" = rows 0..h-r, cols r-1..w-r (cropped by r-1 at
    # the bottom, left and right); "to" = from + (dy, dx) with dy > 0 or (dy = 0, dx > 0) and
    # dx² + dy² < r²
    want = set()
    for y in range(0, h - r + 1):
        for x in range(r - 1, w - r + 1):
            for y2 in range(h):
                for x2 in range(w):
                    dy, dx = y2 - y, x2 - x
                    if (dy > 0 or (dy == 0 and dx > 0)) and dy * dy + dx * dx < r * r:
                        want.add((y * w + x, y2 * w + x2))
    assert got == want
    assert ind_to.shape == (len(pair_offsets(r)), (h - r + 1) * (w - 2 * r + 2))
    with pytest.raises(ValueError, match="too small"):
        pair_indices(r - 1, w, r)


def test_extract_pair_labels_match_brute_force():
    rng = np.random.default_rng(1)
    lab = rng.choice(np.array([0, 0, 1, 2, 255], np.uint8), size=(2, 7, 10))
    bg, fg, neg = extract_pair_labels(torch.from_numpy(lab), radius=3)
    ind_from, ind_to = pair_indices(7, 10, 3)
    for b in range(2):
        flat = lab[b].reshape(-1)
        for k in range(ind_to.shape[0]):
            for j, (f, t) in enumerate(zip(ind_from.tolist(), ind_to[k].tolist())):
                a, c = int(flat[f]), int(flat[t])
                assert bg[b, k, j] == float(a == 0 and c == 0)
                assert fg[b, k, j] == float(a == c and a not in (0, 255))
                assert neg[b, k, j] == float(a != c and a != 255 and c != 255)
    # an unbatched map gives the same as its batch entry
    bg0, _, _ = extract_pair_labels(lab[0], radius=3)
    assert torch.equal(bg0, bg[0])


def test_pair_and_dense_affinity_match_gather():
    torch.manual_seed(0)
    feats = torch.randn(1, 6, 6, 11)
    aff = pair_affinity(feats, 5)[0]
    ind_from, ind_to = pair_indices(6, 11, 5)
    flat = feats[0].reshape(6, -1)
    for k in range(ind_to.shape[0]):
        ref = torch.exp(-(flat[:, ind_from] - flat[:, ind_to[k]]).abs().mean(0))
        torch.testing.assert_close(aff[k], ref)
    A = dense_affinity(feats, 5)
    n = 66
    assert A.shape == (n, n)
    torch.testing.assert_close(A, A.T)
    torch.testing.assert_close(A.diagonal(), torch.ones(n))
    mask = torch.zeros(n, n, dtype=torch.bool)
    for k in range(ind_to.shape[0]):
        mask[ind_from, ind_to[k]] = True
        torch.testing.assert_close(A[ind_from, ind_to[k]], aff[k])
    mask = mask | mask.T | torch.eye(n, dtype=torch.bool)
    assert (A[~mask] == 0).all()
    assert (A[mask] > 0).all()


# ---------------------------------------------------------------------------------- loss
def test_affinity_loss_on_handmade_values():
    aff = torch.tensor([[0.9, 0.5, 0.2, 0.7]])
    bg = torch.tensor([[1.0, 0, 0, 0]])
    fg = torch.tensor([[0, 1.0, 0, 0]])
    neg = torch.tensor([[0, 0, 1.0, 1.0]])
    total, parts = affinity_loss(aff, bg, fg, neg)
    e = 1e-5
    b = -math.log(0.9 + e)
    f = -math.log(0.5 + e)
    n = (-math.log(1 + e - 0.2) - math.log(1 + e - 0.7)) / 2
    assert parts["bg"].item() == pytest.approx(b / (1 + e), rel=1e-5)
    assert parts["fg"].item() == pytest.approx(f / (1 + e), rel=1e-5)
    assert parts["neg"].item() == pytest.approx(n * 2 / (2 + e), rel=1e-5)
    assert total.item() == pytest.approx(b / 4 + f / 4 + n / 2, rel=1e-4)
    # an empty set contributes nothing
    total2, parts2 = affinity_loss(aff, bg, torch.zeros_like(fg), neg)
    assert parts2["fg"].item() == 0
    assert total2.item() == pytest.approx(b / 4 + n / 2, rel=1e-4)
    with pytest.raises(ValueError, match="share one shape"):
        affinity_loss(aff, bg[:, :3], fg, neg)


# ---------------------------------------------------------------------------------- transition
def _toy_aff(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, n, generator=g, dtype=torch.float64) * 0.9
    a = (a + a.T) / 2
    a.fill_diagonal_(1.0)
    return a


def test_transition_matrix_is_column_stochastic_and_squares():
    a = _toy_aff()
    for logt in (0, 1, 3):
        t = transition_matrix(a, beta=3, logt=logt)
        torch.testing.assert_close(t.sum(0), torch.ones(12, dtype=torch.float64))
        assert (t >= 0).all()
    # logt squarings = T1 to the power 2^logt, T1 computed here independently
    a3 = a**3
    t1 = a3 / a3.sum(0, keepdim=True)
    power = torch.eye(12, dtype=torch.float64)
    for _ in range(8):
        power = power @ t1
    torch.testing.assert_close(transition_matrix(a, beta=3, logt=3), power)
    torch.testing.assert_close(transition_matrix(a, beta=3, logt=0), t1)


def test_larger_beta_sharpens():
    a = _toy_aff()

    def col_entropy(t):
        return -(t * t.clamp_min(1e-300).log()).sum(0)

    prev_ent, prev_diag = None, None
    for beta in (1, 2, 4, 8, 14):
        t = transition_matrix(a, beta=beta, logt=0)
        ent, diag = col_entropy(t), t.diagonal()
        if prev_ent is not None:
            assert (ent < prev_ent).all()  # every column more concentrated
            assert (diag > prev_diag).all()  # more mass stays on the diagonal (affinity 1)
        prev_ent, prev_diag = ent, diag
    # with many steps, a connected chain mixes towards its stationary distribution
    t_many = transition_matrix(a, beta=1, logt=10)
    assert (t_many.max(1).values - t_many.min(1).values).max() < 1e-6


# ---------------------------------------------------------------------------------- random walk
def _two_block_affinity(h, w):
    cols = torch.arange(h * w) % w
    left = cols < w // 2
    return (left[:, None] == left[None, :]).float()


def test_random_walk_keeps_labels_inside_blocks():
    H, W = 30, 60  # padded to 32 x 64, a 4 x 8 grid at 1/8
    cams = np.zeros((2, H, W), np.float32)
    cams[0, :, :16] = 0.9  # class 3, left block only
    cams[1, :, 40:] = 0.9  # class 9, right block only
    aff = _two_block_affinity(4, 8)
    lab = random_walk(cams, [3, 9], aff, bg=0.42, beta=14, logt=7)
    assert lab.shape == (H, W) and lab.dtype == np.uint8
    assert set(np.unique(lab[:, :32])) <= {0, 4}
    assert set(np.unique(lab[:, 32:])) <= {0, 10}
    # the walk spreads each class over its whole block (block mean > 0.42), boundary band aside
    assert (lab[:, :24] == 4).all()
    assert (lab[:, 40:] == 10).all()
    # without the block structure every cell gets the same walked scores: one label everywhere
    lab_all = random_walk(cams, [3, 9], torch.ones(32, 32), bg=0.42)
    assert len(np.unique(lab_all)) == 1


def test_random_walk_with_identity_affinity_is_pooled_argmax():
    rng = np.random.default_rng(3)
    H, W = 21, 43
    cams = rng.random((2, H, W)).astype(np.float32)
    lab = random_walk(cams, [0, 5], torch.eye(3 * 6), num_classes=6, bg=0.5)
    full = np.zeros((7, 24, 48), np.float32)
    full[0, :H, :W] = 0.5
    full[1, :H, :W] = cams[0]
    full[6, :H, :W] = cams[1]
    pooled = full.reshape(7, 3, 8, 6, 8).mean(axis=(2, 4))
    up = F.interpolate(torch.from_numpy(pooled)[None], size=(24, 48), mode="bilinear", align_corners=False)[0]
    np.testing.assert_array_equal(lab, up.argmax(0).numpy()[:H, :W])
    with pytest.raises(ValueError, match="needs"):
        random_walk(cams, [0, 5], torch.eye(10), num_classes=6)


@pytest.mark.parametrize("image_id", ["2007_001763", "2011_000003", "2011_000025", "2011_003066"])
def test_random_walk_with_mask_affinity_improves_voc_seeds(image_id):
    """Real VOC image (half size): a peaky CAM-like seed (the object mask sampled every 24 px,
    bilinearly upsampled, squared) walked over an oracle affinity built from the official mask
    (features = one-hot labels at 1/8, so aff = 1 inside a label and e^-3 across) covers the
    objects better than the same seed without the walk (identity affinity)."""
    root = shared_path("data", "voc2012_sample", "VOCdevkit", "VOC2012")
    gt = np.array(Image.open(root / "SegmentationClass" / f"{image_id}.png"))[::2, ::2]
    H, W = gt.shape
    present = [int(c) - 1 for c in np.unique(gt) if c not in (0, 255)]
    cams = []
    for c in present:
        small = (gt == c + 1).astype(np.float32)[::24, ::24]
        cams.append(np.array(Image.fromarray(small).resize((W, H), Image.BILINEAR)) ** 2)
    cams = np.stack(cams).astype(np.float32)
    g = np.zeros((H + (-H % 8), W + (-W % 8)), np.int64)
    g[:H, :W] = np.where(gt == 255, 0, gt)
    feats = F.one_hot(torch.from_numpy(g[4::8, 4::8]), 21).permute(2, 0, 1).float() * 21 * 1.5
    aff = dense_affinity(feats, 5)
    walked = random_walk(cams, present, aff)
    seed = random_walk(cams, present, torch.eye(aff.shape[0]))
    valid = gt != 255
    acc_seed = (seed[valid] == gt[valid]).mean()
    acc_walk = (walked[valid] == gt[valid]).mean()
    assert acc_walk > acc_seed + 0.02, (acc_seed, acc_walk)  # measured +2.4 to +13 points


# ---------------------------------------------------------------------------------- network
@pytest.fixture(scope="module")
def net18():
    torch.manual_seed(0)
    return AffinityNet("resnet18", output_stride=8)


def test_affinity_net_shapes_and_freezing(net18):
    x = torch.randn(2, 3, 64, 96)
    f = net18(x)
    assert f.shape == (2, 448, 8, 12)
    aff = net18.pair_affinity(x)
    assert aff.shape == (2, 34, (8 - 4) * (12 - 8))
    assert (aff > 0).all() and (aff <= 1).all()
    # frozen: stem + layer1, and every BatchNorm (kept in eval mode while training)
    names = {n for n, p in net18.named_parameters() if not p.requires_grad}
    assert "backbone.conv1.weight" in names and "backbone.layer1.0.conv1.weight" in names
    assert "backbone.layer2.0.conv1.weight" not in names
    assert all(not p.requires_grad for n, p in net18.named_parameters() if ".bn" in n)
    net18.train()
    assert all(not m.training for m in net18.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert net18.f9.training
    groups = {g["name"]: g for g in net18.param_groups(0.01, 5e-4)}
    assert groups["new_weight"]["lr"] == pytest.approx(0.1) and len(groups["new_weight"]["params"]) == 4
    assert groups["backbone_weight"]["lr"] == pytest.approx(0.01)
    assert groups["backbone_weight"]["weight_decay"] == 5e-4
    with pytest.raises(ValueError, match="multiples of 8"):
        net18(torch.randn(1, 3, 60, 96))


def test_pretrained_path_is_loaded(tmp_path, net18):
    sd = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in net18.backbone.state_dict().items()}
    p = tmp_path / "r18.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, p)
    m = AffinityNet("resnet18", pretrained_path=p)
    assert (m.backbone.layer3[0].conv1.weight == 0.5).all()
    bad = tmp_path / "bad.pth"
    torch.save({"x": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="none of its"):
        AffinityNet("resnet18", pretrained_path=bad)
    with pytest.raises(FileNotFoundError):
        AffinityNet("resnet18", pretrained_path=tmp_path / "missing.pth")


def test_resnet38d_option():
    torch.manual_seed(0)
    m = AffinityNet("resnet38")
    assert m.feature_channels == (512, 1024, 4096)
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    assert "backbone.conv1a.weight" in frozen and "backbone.b2_2.conv_branch2b1.weight" in frozen
    assert "backbone.b3.conv_branch2a.weight" not in frozen
    m.eval()
    with torch.no_grad():
        f = m(torch.randn(1, 3, 32, 48))
    assert f.shape == (1, 448, 4, 6)
    assert isinstance(m.backbone, ResNet38d)


# ---------------------------------------------------------------------------------- training
def test_presets():
    p = AFFINITY_PRESETS["paper"]
    assert (p.lr, p.weight_decay, p.batch_size, p.epochs, p.crop_size, p.radius) == (0.01, 5e-4, 8, 8, 448, 5)
    assert p.momentum == 0.0 and p.poly_power == 0.9  # the reference's PolyOptimizer quirk
    assert p.color_jitter == (0.3, 0.3, 0.3, 0.1)
    assert (p.beta, p.logt, p.bg) == (14, 7, 0.42)
    assert get_affinity_preset("paper", momentum=0.9).momentum == 0.9
    with pytest.raises(TypeError, match="unknown"):
        get_affinity_preset("paper", moment=0.9)


def _toy_items(n=4, seed=0):
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        h, w = (80, 120) if i % 2 else (70, 90)  # smaller than the crop in one direction
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        la = np.zeros((h, w), np.uint8)
        ha = np.zeros((h, w), np.uint8)
        la[10:40, 20:60] = 5
        ha[5:50, 10:70] = 5
        items.append((img, la, ha))
    return items


def test_affinity_dataset_items():
    ds = AffinityDataset(_toy_items(2), crop_size=96, seed=1)
    x, lab = ds[0]
    assert x.shape == (3, 96, 96) and x.dtype == torch.float32
    assert lab.shape == (12, 12) and lab.dtype == torch.uint8
    assert set(lab.unique().tolist()) <= {0, 5, 255}
    x2, lab2 = ds[0]
    assert torch.equal(x, x2) and torch.equal(lab, lab2)  # same epoch, same item → same draw
    # 70 < 96 rows: the zero padding is background in both maps, so label 0 there
    assert (lab == 0).sum() > 0
    with pytest.raises(ValueError, match="multiple of 8"):
        AffinityDataset(_toy_items(1), crop_size=100)


def test_two_step_training_is_finite_and_resumes(tmp_path):
    cfg = get_affinity_preset("tiny", batch_size=2, epochs=1, crop_size=96, save_every=1, device="cpu")
    ds = AffinityDataset(_toy_items(4), crop_size=96, seed=0)

    def fresh():
        torch.manual_seed(0)
        return AffinityNet("resnet18")

    full = train_affinity(fresh(), ds, cfg, out_dir=tmp_path / "a", progress=False)
    assert full["step"] == full["max_step"] == 2
    assert all(math.isfinite(r["loss"]) for r in full["history"])
    assert full["final"] is not None and full["final"].is_file()
    # poly schedule: lr at step k (0-based) = lr · (1 - k/max_step)^0.9
    assert full["history"][0]["lr"] == pytest.approx(0.01)
    assert full["history"][1]["lr"] == pytest.approx(0.01 * 0.5**0.9)

    part = train_affinity(fresh(), ds, cfg, out_dir=tmp_path / "b", progress=False, stop_after=1)
    assert part["step"] == 1 and part["final"] is None
    resumed_model = fresh()
    rest = train_affinity(resumed_model, ds, cfg, out_dir=tmp_path / "b", progress=False)
    assert rest["step"] == 2 and len(rest["history"]) == 2
    for a, b in zip(full["history"], rest["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    m_full = fresh()
    load_affinity_checkpoint(m_full, full["final"])
    for (n, p), q in zip(m_full.state_dict().items(), resumed_model.state_dict().values()):
        torch.testing.assert_close(p, q, msg=n)
    # nothing left behind but the two checkpoints
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["affinity_last.pt", "affinity_net.pt"]


def test_random_walk_with_a_model(net18):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (45, 77, 3), dtype=np.uint8)
    cams = rng.random((1, 45, 77)).astype(np.float32)
    lab = random_walk(cams, [7], net18, image=img)
    assert lab.shape == (45, 77) and set(np.unique(lab)) <= {0, 8}
    with pytest.raises(ValueError, match="needs the image"):
        random_walk(cams, [7], net18)


def test_resume_with_changed_settings_is_refused(tmp_path):
    """AffinityNet refuses a checkpoint made with other settings (as the classifier and DeepLab
    do); settings that do not change what is trained (num_workers, save_every) may change."""
    cfg = get_affinity_preset("tiny", batch_size=2, epochs=1, crop_size=96, save_every=1, device="cpu")
    ds = AffinityDataset(_toy_items(4), crop_size=96, seed=0)
    torch.manual_seed(0)
    train_affinity(AffinityNet("resnet18"), ds, cfg, out_dir=tmp_path, progress=False, stop_after=1)
    with pytest.raises(ValueError, match=r"cannot resume .*lr: 0.01 -> 0.02"):
        train_affinity(AffinityNet("resnet18"), ds, cfg.replace(lr=0.02), out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="dataset_size"):
        train_affinity(AffinityNet("resnet18"), AffinityDataset(_toy_items(6), crop_size=96), cfg,
                       out_dir=tmp_path, progress=False)
    out = train_affinity(AffinityNet("resnet18"), ds, cfg.replace(save_every=5), out_dir=tmp_path, progress=False)
    assert out["step"] == 2 and out["final"] is not None


def test_paper_preset_refuses_an_untrained_backbone(tmp_path):
    from transcam_nb.models.factory import MissingInitError

    cfg = get_affinity_preset("paper", backbone="resnet18", batch_size=2, epochs=1, crop_size=96, num_workers=0,
                              device="cpu")
    ds = AffinityDataset(_toy_items(2), crop_size=96, seed=0)
    with pytest.raises(MissingInitError, match=r"pretrained_path.*affinity_weights.*from_scratch=True"):
        train_affinity(AffinityNet("resnet18"), ds, cfg, out_dir=tmp_path / "a", progress=False)
    assert not (tmp_path / "a" / "affinity_last.pt").exists()
    out = train_affinity(AffinityNet("resnet18"), ds, cfg, out_dir=tmp_path / "a", progress=False,
                         from_scratch=True)
    assert out["step"] == 1
