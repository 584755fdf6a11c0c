"""Tests of the DeepLab stage (transcam_nb.segmentation, docs/reference.md §8). Tiny and CPU-only."""
import json
import math
import tarfile

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from conftest import shared_path
from transcam_nb.segmentation import (
    DeepLab,
    evaluate_segmentation,
    export_voc_test,
    get_seg_config,
    joint_augment,
    load_segmentation_model,
    make_submission_archive,
    poly_lr,
    predict,
    predict_logits,
    read_label,
    train_segmentation,
    voc_palette,
)
from transcam_nb.segmentation.train import hsv_jitter

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return DeepLab("resnet18", head="largefov", num_classes=4, freeze_bn=False).eval()


# ----------------------------------------------------------------------------- model
@pytest.mark.parametrize("head", ["largefov", "aspp"])
def test_deeplab_shapes_non_square(head):
    torch.manual_seed(0)
    m = DeepLab("resnet18", head=head, num_classes=21)
    m.train()
    # frozen backbone BN stays in eval mode in train(), head BN trains (docs/reference.md §8)
    assert all(not b.training for b in m.backbone.modules() if isinstance(b, nn.BatchNorm2d))
    assert all(b.training for b in m.head.modules() if isinstance(b, nn.BatchNorm2d))
    for h, w in [(65, 97), (64, 96)]:
        out = m(torch.randn(2, 3, h, w))
        assert out.shape == (2, 21, h, w)
    m.eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 97, 65)).shape == (1, 21, 97, 65)


def test_largefov_head_layout():
    m = DeepLab("resnet18", head="largefov", num_classes=21)
    h = m.head
    assert h.conv1.kernel_size == (3, 3) and h.conv1.dilation == (12, 12) and h.conv1.padding == (12, 12)
    assert h.conv1.in_channels == 512 and h.conv1.out_channels == 512 and h.conv1.bias is None
    assert h.conv2.kernel_size == (1, 1) and h.conv2.bias is None
    assert h.dropout.p == 0.5
    assert h.classifier.out_channels == 21 and h.classifier.bias is not None
    assert h.bn1.momentum == pytest.approx(0.0003)


def test_param_groups_cover_trainable_once_with_multipliers():
    m = DeepLab("resnet18", head="aspp", num_classes=5, freeze_bn=False, freeze_stem=True)
    lr, wd = 0.01, 5e-4
    groups = m.param_groups(lr, wd)
    seen = {}
    for g in groups:
        for p in g["params"]:
            assert id(p) not in seen, "a parameter appears in two groups"
            seen[id(p)] = (g["lr"], g["weight_decay"])
    trainable = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    assert len(seen) == len(trainable)
    for name, p in trainable:
        mult = (1 if name.startswith("backbone.") else 10) * (2 if name.endswith("bias") else 1)
        want_wd = 0.0 if name.endswith("bias") else wd
        assert seen[id(p)] == (pytest.approx(lr * mult), want_wd), name
    # frozen stem conv is not optimised; with frozen BN no backbone BN parameter is either
    assert not m.backbone.conv1.weight.requires_grad and id(m.backbone.conv1.weight) not in seen
    m2 = DeepLab("resnet18", head="largefov", num_classes=5, freeze_bn=True)
    ids2 = {id(p) for g in m2.param_groups(lr, wd) for p in g["params"]}
    assert all(id(p) not in ids2 for b in m2.backbone.modules() if isinstance(b, nn.BatchNorm2d)
               for p in b.parameters())
    torch.optim.SGD(groups, lr=lr, momentum=0.9)  # the extra keys are accepted by SGD


def test_poly_lr_hand_values():
    # hand computed: (1 - itr/(max+1))^0.9
    assert poly_lr(1e-3, 0, 20000) == pytest.approx(1e-3)
    assert poly_lr(1.0, 1, 1) == pytest.approx(0.5 ** 0.9)  # = 0.535886731...
    assert poly_lr(1.0, 1, 1) == pytest.approx(0.5358867312681466)
    assert poly_lr(1e-3, 10000, 20000) == pytest.approx(1e-3 * math.exp(0.9 * math.log(10001 / 20001)))
    assert poly_lr(2.0, 3, 3, power=1.0) == pytest.approx(0.5)  # 2 * (1 - 3/4)


def test_backbone_weights_load_and_errors(tmp_path):
    import timm

    torch.manual_seed(1)
    full = timm.create_model("resnet10t", pretrained=False)
    torch.save({"state_dict": {"module." + k: v for k, v in full.state_dict().items()}}, tmp_path / "r10.pth")
    m = DeepLab("resnet10t", num_classes=3, pretrained_path=tmp_path / "r10.pth")
    ref = full.state_dict()
    for k, v in m.backbone.state_dict().items():
        assert torch.equal(v, ref[k]), k
    bad = timm.create_model("resnet14t", pretrained=False).state_dict()
    torch.save(bad, tmp_path / "r14.pth")
    with pytest.raises(ValueError, match="r14.pth"):
        DeepLab("resnet10t", num_classes=3, pretrained_path=tmp_path / "r14.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        DeepLab("resnet10t", num_classes=3, pretrained_path=tmp_path / "nope.pth")


# ----------------------------------------------------------------------------- augmentation
COLOURS = np.array([[0, 0, 0], [250, 20, 20], [20, 250, 20], [20, 20, 250], [250, 250, 20]], dtype=np.uint8)
IGNORE_COLOUR = np.array([255, 255, 255], dtype=np.uint8)


def _coded_pair(h=40, w=56):
    """An asymmetric label map and an image whose colour encodes the label."""
    lab = np.zeros((h, w), np.uint8)
    lab[4:20, 3:20] = 1
    lab[10:36, 30:52] = 2
    lab[25:38, 5:14] = 3
    lab[0:6, 40:56] = 4
    lab[30:40, 20:26] = 255
    img = np.where(lab[..., None] == 255, IGNORE_COLOUR, COLOURS[np.minimum(lab, 4)])
    return img.astype(np.uint8), lab


@pytest.mark.parametrize("seed", range(6))
def test_joint_augment_keeps_image_and_label_aligned(seed):
    img, lab = _coded_pair()
    rng = np.random.default_rng(seed)
    x, y = joint_augment(img, lab, rng, crop=48, scale=(0.5, 1.5), flip=True, hsv=0)
    assert x.shape == (3, 48, 48) and y.shape == (48, 48) and y.dtype == torch.int64
    rgb = (x.permute(1, 2, 0).numpy() * STD + MEAN) * 255
    yy = y.numpy()
    padded = (x == 0).all(0).numpy()
    assert np.all(yy[padded] == 255), "padding of the image must be ignore in the label"
    valid = yy != 255
    assert valid.sum() > 100
    d = ((rgb[valid][:, None, :] - COLOURS[None].astype(float)) ** 2).sum(-1)
    agree = (d.argmin(1) == yy[valid]).mean()
    assert agree > 0.95, f"image/label agreement only {agree:.3f}"


def test_joint_augment_flip_and_pad_happen():
    img, lab = _coded_pair()
    flips = 0
    for seed in range(12):
        x, y = joint_augment(img, lab, np.random.default_rng(seed), crop=48, scale=(1.0, 1.0), flip=True, hsv=0)
        # scale 1 and crop 48 > height 40: the whole height is kept; a flipped crop has class 4
        # (top-right block in the source) on the left side
        ys = y.numpy()
        cols4 = np.where((ys == 4).any(0))[0]
        if len(cols4) and cols4.mean() < 24:
            flips += 1
        assert (ys == 255).any(1).sum() >= 8  # 8 rows of padding (48 - 40)
    assert 0 < flips < 12


def test_hsv_jitter_hand_cases():
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    assert np.array_equal(hsv_jitter(red, 0, 0, 0), red)
    green = hsv_jitter(red, 60, 0, 0)  # +60 OpenCV hue units = +120 degrees: red -> green
    assert green[0, 0, 1] > 200 and green[0, 0, 0] < 30 and green[0, 0, 2] < 30
    darker = hsv_jitter(red, 0, 0, -10)
    assert abs(int(darker[0, 0, 0]) - 245) <= 1


# ----------------------------------------------------------------------------- training
def _write_dataset(root, n=4, h=40, w=52):
    (root / "JPEGImages").mkdir(parents=True)
    (root / "pseudo").mkdir()
    ids = []
    for i in range(n):
        img, lab = _coded_pair(h, w)
        lab = np.roll(lab, 3 * i, axis=1)
        img = np.roll(img, 3 * i, axis=1)
        iid = f"2099_{i:06d}"
        Image.fromarray(img).save(root / "JPEGImages" / f"{iid}.jpg", quality=95)
        if i % 2:
            im = Image.fromarray(lab)
            im.putpalette(voc_palette().reshape(-1).tolist())  # palette PNG
            im.save(root / "pseudo" / f"{iid}.png")
        else:
            Image.fromarray(lab).save(root / "pseudo" / f"{iid}.png")  # single channel
        ids.append(iid)
    return ids


def test_train_three_iterations_checkpoint_and_resume(tmp_path):
    import timm

    ids = _write_dataset(tmp_path / "voc")
    # resnet10t: the smallest timm ResNet (4.9 M parameters) keeps the checkpoint I/O small
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), tmp_path / "r10.pth")
    cfg = get_seg_config("tiny", backbone="resnet10t", num_classes=5, iters=3, batch=2, crop=32, ckpt_every=2,
                         log_every=1, workers=0, seed=3, pretrained_path=tmp_path / "r10.pth")  # a Path on purpose
    kw = dict(image_root=tmp_path / "voc", pseudo_label_dir=tmp_path / "voc" / "pseudo", ids=ids,
              device="cpu", progress=False)
    # uninterrupted run
    full = train_segmentation(cfg, out_dir=tmp_path / "full", **kw)
    assert full.iteration == 3 and math.isfinite(full.last_loss)
    # interrupted after 2 iterations, then resumed
    part = train_segmentation(cfg, out_dir=tmp_path / "run", max_steps=2, **kw)
    assert part.iteration == 2
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ck["iteration"] == 2 and "optimizer" in ck and "rng" in ck
    assert not (tmp_path / "run" / "model.pt").exists()
    resumed = train_segmentation(cfg, out_dir=tmp_path / "run", **kw)
    assert resumed.iteration == 3
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["iteration"] == 3
    log = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2, 3]
    for r in log:
        assert math.isfinite(r["loss"])
        assert r["lr"] == pytest.approx(cfg.lr * (1 - (r["iteration"] - 1) / 4) ** 0.9)
    # the resumed run equals the uninterrupted one (same batches, same RNG)
    sa, sb = full.model.state_dict(), resumed.model.state_dict()
    for k in sa:
        assert torch.allclose(sa[k].float(), sb[k].float(), atol=1e-5), k
    assert resumed.last_loss == pytest.approx(full.last_loss, rel=1e-4)
    # the final model file rebuilds the network
    m = load_segmentation_model(tmp_path / "run" / "model.pt", device="cpu")
    x = torch.randn(1, 3, 24, 30)
    with torch.no_grad():
        assert torch.allclose(m(x), resumed.model.eval()(x), atol=1e-5)
    # a different schedule cannot silently resume
    with pytest.raises(ValueError, match="lr"):
        train_segmentation(cfg.replace(lr=0.5), out_dir=tmp_path / "run", **kw)


def test_config_validation():
    with pytest.raises(ValueError, match="batch"):
        get_seg_config("tiny", head="aspp", batch=1).validate()
    with pytest.raises(TypeError, match="nonsense"):
        get_seg_config("paper", nonsense=1)
    paper = get_seg_config("paper")  # docs/reference.md §8 values
    assert (paper.lr, paper.momentum, paper.weight_decay, paper.poly_power) == (1e-3, 0.9, 5e-4, 0.9)
    assert (paper.batch, paper.iters, paper.crop, paper.scale, paper.hsv_jitter) == (10, 20000, 448, (0.5, 1.5), 10)
    assert paper.test_scales == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75) and paper.freeze_bn


def test_train_rejects_bad_label_values(tmp_path):
    ids = _write_dataset(tmp_path / "voc", n=1)
    Image.fromarray(np.full((40, 52), 9, np.uint8)).save(tmp_path / "voc" / "pseudo" / f"{ids[0]}.png")
    cfg = get_seg_config("tiny", backbone="resnet10t", num_classes=5, iters=1, batch=2, crop=32, workers=0)
    with pytest.raises(ValueError, match=ids[0]):
        train_segmentation(cfg, tmp_path / "voc", tmp_path / "voc" / "pseudo", ids, tmp_path / "o",
                           device="cpu", progress=False)


# ----------------------------------------------------------------------------- inference
def _manual_probs(model, img, scales, flip):
    H, W = img.shape[:2]
    x = torch.from_numpy(((img / 255.0 - MEAN) / STD).astype(np.float32)).permute(2, 0, 1)[None]
    outs = []
    with torch.no_grad():
        for s in scales:
            xs = F.interpolate(x, size=(round(H * s), round(W * s)), mode="bilinear", align_corners=False)
            variants = [(xs, False), (xs.flip(-1), True)] if flip else [(xs, False)]
            for inp, flipped in variants:
                o = model(inp)
                o = F.interpolate(o, size=(H, W), mode="bilinear", align_corners=True)
                outs.append(o.flip(-1) if flipped else o)
    return torch.softmax(torch.stack(outs).mean(0)[0], 0).numpy()


def test_predict_flip_multiscale_matches_manual_average(small_model):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (33, 45, 3), dtype=np.uint8)
    scales = (0.75, 1.0, 1.25)
    labels, probs = predict(small_model, img, scales=scales, flip=True, return_probs=True)
    want = _manual_probs(small_model, img, scales, True)
    assert probs.shape == (4, 33, 45) and labels.shape == (33, 45)
    np.testing.assert_allclose(probs, want, atol=1e-5)
    assert np.array_equal(labels, want.argmax(0))
    # without flip it is a different (un-averaged) answer
    p_noflip = predict(small_model, img, scales=scales, flip=False, return_probs=True)[1]
    np.testing.assert_allclose(p_noflip, _manual_probs(small_model, img, scales, False), atol=1e-5)
    # flip averaging makes the prediction flip-equivariant
    a = predict_logits(small_model, img, scales=scales, flip=True)
    b = predict_logits(small_model, np.ascontiguousarray(img[:, ::-1]), scales=scales, flip=True)
    assert torch.allclose(a, b.flip(-1), atol=1e-4)


def test_predict_with_crf_if_available(small_model):
    crf = pytest.importorskip("transcam_nb.postprocess.crf")
    try:
        crf.require_pydensecrf()
    except ImportError as e:
        pytest.skip(f"pydensecrf not installed: {e}")
    img = np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    labels, probs = predict(small_model, img, scales=(1.0,), flip=True, crf=True, return_probs=True)
    assert labels.shape == (30, 40) and np.allclose(probs.sum(0), 1, atol=1e-3)


class _ConstModel(nn.Module):
    """Predicts class ``k`` everywhere (for hand-computable metrics)."""

    def __init__(self, num_classes, k=0):
        super().__init__()
        self.num_classes, self.k = num_classes, k
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.zeros(x.shape[0], self.num_classes, *x.shape[-2:])
        out[:, self.k] = 1.0
        return out


def test_evaluate_segmentation_hand_counts(tmp_path):
    pytest.importorskip("transcam_nb.metrics")
    root = tmp_path / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    gt = np.zeros((8, 10), np.uint8)  # 80 px: 40 background, 30 class 1, 10 ignore
    gt[:3] = 1
    gt[3, :] = 255
    gt[4:8, :] = 0
    gt[4, :] = 0
    assert (gt == 0).sum() == 40 and (gt == 1).sum() == 30 and (gt == 255).sum() == 10
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(root / "JPEGImages" / "a.jpg")
    Image.fromarray(gt).save(root / "SegmentationClass" / "a.png")
    cm = evaluate_segmentation(_ConstModel(3, 0), tmp_path, ["a"], scales=(1.0,), flip=True,
                               save_dir=tmp_path / "pred", progress=False)
    # all 70 non-ignored pixels predicted background: IoU_0 = 40 / (40 + 70 - 40), IoU_1 = 0
    np.testing.assert_allclose(cm.iou(), [40 / 70, 0.0, 0.0], atol=1e-9)
    assert cm.miou() == pytest.approx((40 / 70) / 3)
    assert (np.asarray(Image.open(tmp_path / "pred" / "a.png")) == 0).all()
    assert json.loads((tmp_path / "pred" / "metrics.json").read_text())["miou"] == pytest.approx((40 / 70) / 3)


def test_evaluate_on_real_voc_sample():
    pytest.importorskip("transcam_nb.metrics")
    root = shared_path("data", "voc2012_sample", "VOCdevkit", "VOC2012")
    ids = [p.stem for p in sorted((root / "SegmentationClass").glob("*.png"))]
    cm = evaluate_segmentation(_ConstModel(21, 0), root, ids, scales=(0.5,), flip=False, progress=False)
    t = p = tp = 0
    for i in ids:
        g = np.asarray(Image.open(root / "SegmentationClass" / f"{i}.png"))
        valid = g != 255
        p += valid.sum()
        t += (g == 0).sum()
        tp += (g == 0).sum()
    assert cm.iou()[0] == pytest.approx(tp / (t + p - tp))
    assert cm.miou() == pytest.approx(cm.iou()[0] / 21)


# ----------------------------------------------------------------------------- export
def test_voc_palette_hand_values():
    pal = voc_palette()
    assert pal.shape == (256, 3)
    assert pal[0].tolist() == [0, 0, 0]
    assert pal[1].tolist() == [128, 0, 0]
    assert pal[2].tolist() == [0, 128, 0]
    assert pal[3].tolist() == [128, 128, 0]
    assert pal[4].tolist() == [0, 0, 128]
    assert pal[15].tolist() == [192, 128, 128]  # person
    assert pal[255].tolist() == [224, 224, 192]  # void / boundary


def test_voc_palette_matches_real_ground_truth():
    gt_dir = shared_path("data", "voc2012_sample", "VOCdevkit", "VOC2012", "SegmentationClass")
    png = sorted(gt_dir.glob("*.png"))[0]
    with Image.open(png) as im:
        assert im.mode == "P"
        real = np.array(im.getpalette()[: 256 * 3], dtype=np.uint8).reshape(-1, 3)
        idx = np.asarray(im)
    assert np.array_equal(real, voc_palette())
    lab = read_label(png, num_classes=21)
    assert np.array_equal(lab, idx)
    assert set(np.unique(lab).tolist()) <= set(range(21)) | {255}


def test_export_voc_test_layout_and_palette(tmp_path):
    pred = np.zeros((7, 9), np.int64)
    pred[2:5, 3:8] = 15
    pred[0, 0] = 20
    path = export_voc_test(pred, "2008_000001", tmp_path)
    assert path == tmp_path / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls" / "2008_000001.png"
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "P"
        assert np.array_equal(np.asarray(im), pred.astype(np.uint8))
        pal = np.array(im.getpalette()[:63], dtype=np.uint8).reshape(21, 3)
    assert pal[15].tolist() == [192, 128, 128] and pal[1].tolist() == [128, 0, 0]
    comp5 = export_voc_test(pred, "2008_000001", tmp_path, comp="comp5")
    assert comp5.parent.name == "comp5_test_cls"
    arc = make_submission_archive(tmp_path)
    with tarfile.open(arc) as tar:
        assert "results/VOC2012/Segmentation/comp6_test_cls/2008_000001.png" in tar.getnames()
    with pytest.raises(ValueError, match="2008_000002"):
        export_voc_test(np.full((3, 3), 255), "2008_000002", tmp_path)
    with pytest.raises(ValueError):
        export_voc_test(pred, "2008_000001", tmp_path, comp="comp9")


def test_read_label_modes(tmp_path):
    lab = np.array([[0, 1, 15], [255, 20, 0]], np.uint8)
    pal = voc_palette()
    Image.fromarray(pal[lab]).save(tmp_path / "rgb.png")  # colour-coded RGB label
    assert np.array_equal(read_label(tmp_path / "rgb.png"), lab)
    Image.fromarray(lab).save(tmp_path / "l.png")
    assert np.array_equal(read_label(tmp_path / "l.png", num_classes=21), lab)
    odd = pal[lab].copy()
    odd[0, 0] = (1, 2, 3)
    Image.fromarray(odd).save(tmp_path / "odd.png")
    with pytest.raises(ValueError, match="odd.png"):
        read_label(tmp_path / "odd.png")
    with pytest.raises(ValueError, match="l.png"):
        read_label(tmp_path / "l.png", num_classes=5)


def test_paper_preset_refuses_an_untrained_backbone(tmp_path):
    """Frozen BatchNorm (the paper preset) on random weights would freeze meaningless statistics:
    such a run needs pretrained_path, or from_scratch=True on purpose."""
    from transcam_nb.models.factory import MissingInitError

    ids = _write_dataset(tmp_path / "voc", n=2)
    cfg = get_seg_config("paper", backbone="resnet10t", num_classes=5, iters=1, batch=2, crop=32, workers=0,
                         amp=False)
    kw = dict(image_root=tmp_path / "voc", pseudo_label_dir=tmp_path / "voc" / "pseudo", ids=ids, device="cpu",
              progress=False)
    with pytest.raises(MissingInitError, match=r"pretrained_path.*from_scratch=True"):
        train_segmentation(cfg, out_dir=tmp_path / "o", **kw)
    res = train_segmentation(cfg, out_dir=tmp_path / "o", from_scratch=True, **kw)
    assert res.iteration == 1 and res.model_path.is_file()


def test_resize_cubic_is_opencv_inter_cubic_by_hand():
    """Keys' cubic kernel with a = -0.75 (OpenCV's INTER_CUBIC), half-pixel centres, clamped
    borders, rounded and clipped to 0..255: a 2-pixel ramp 0 → 100 doubled gives 0 (−10.5 clipped),
    23 = 100·(W(0.75) + W(1.75)) = 100·(0.26172 − 0.03516), 77, and 111 (the cubic overshoot
    100·(W(0.25) + W(0.75) + W(1.75)) = 110.55); bilinear would give 0, 25, 75, 100."""
    from transcam_nb.segmentation.train import resize_cubic

    img = np.zeros((1, 2, 3), np.uint8)
    img[0, 1] = 100
    out = resize_cubic(img, 1, 4)
    assert out.dtype == np.uint8 and out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist() == [0, 23, 77, 111]
    flat = np.full((5, 7, 3), 200, np.uint8)
    assert (resize_cubic(flat, 9, 3) == 200).all()


def test_conformer_backbone_starts_from_the_shipped_pretraining():
    """DeepLab on the tiny profile's Conformer: its CNN branch's last map (stride 16), the shipped
    formula-driven weights loaded into it, any input size, and the map equal to the classifier's."""
    from transcam_nb.config import TINY_MODEL
    from transcam_nb.models import create_model
    from transcam_nb.models.checkpoints import read_state_dict
    from transcam_nb.weights import resolve_checkpoint

    torch.manual_seed(0)
    m = DeepLab("transcam_tiny", num_classes=5, output_stride=16, backbone_args=TINY_MODEL,
                pretrained_path="package:tiny_pretrained.pt", freeze_bn=False).eval()
    shipped = read_state_dict(resolve_checkpoint("package:tiny_pretrained.pt"))
    net = m.backbone.net
    for k in ("conv1.weight", "conv_trans_12.trans_block.attn.qkv.weight"):
        assert torch.equal(net.state_dict()[k], shipped[k])
    x = torch.randn(1, 3, 120, 100)  # not multiples of 16: resized inside the backbone
    with torch.no_grad():
        assert m(x).shape == (1, 5, 120, 100)
        x16 = torch.randn(2, 3, 64, 96)
        feats = m.backbone(x16)[0]
        assert feats.shape[-2:] == (4, 6) and feats.shape[1] == m.backbone.feature_info.channels()[0]
        clf = create_model("transcam_tiny", num_classes=9, **TINY_MODEL).eval()
        trunk = {k: v for k, v in net.state_dict().items() if "cls_head" not in k}
        assert not clf.load_state_dict(trunk, strict=False).unexpected_keys  # same trunk, its own heads
        torch.testing.assert_close(clf.conv_cls_head(feats), clf(x16).cam)  # the map the CAM reads
    assert not any(p.requires_grad for p in net.conv_cls_head.parameters())
    with pytest.raises(ValueError, match="output stride 16"):
        DeepLab("transcam_tiny", output_stride=8, backbone_args=TINY_MODEL)
    with pytest.raises(ValueError, match="backbone_args are for the package's networks"):
        DeepLab("resnet18", backbone_args=TINY_MODEL)
