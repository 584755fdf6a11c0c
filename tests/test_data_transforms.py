"""Training augmentations (docs/reference.md §4) and inference normalisation: alignment of image and
mask, padding values, reproducibility (also across DataLoader workers)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from transcam_nb.data import transforms as T
from transcam_nb.data.voc import VOCDataset

# well separated colours, one per mask value (hand-picked)
COLOURS = np.array([[20, 20, 20], [230, 30, 30], [30, 230, 30], [30, 30, 230], [230, 230, 30], [230, 30, 230]], np.uint8)


def _blocks(h=60, w=100, seed=0):
    """A mask of large rectangles (values 0..5) and an image painting value v with COLOURS[v]."""
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), np.uint8)
    for v in range(1, 6):
        y, x = rng.integers(0, h - 15), rng.integers(0, w - 20)
        m[y : y + rng.integers(12, 30), x : x + rng.integers(15, 40)] = v
    m[:, :8] = 1  # an asymmetric stripe so a flip is visible
    return Image.fromarray(COLOURS[m]), m


def test_normalize_matches_formula():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    out = T.normalize(img)
    assert out.shape == (3, 4, 5) and out.dtype == np.float32
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for c in range(3):
        for y in range(4):
            for x in range(5):
                expected = np.float32((int(img[y, x, c]) / 255.0 - mean[c]) / std[c])  # Python floats = float64
                assert out[c, y, x] == expected
    assert np.array_equal(T.denormalize(out), img)
    assert np.array_equal(T.denormalize(torch.from_numpy(out)), img)
    with pytest.raises(ValueError):
        T.normalize(np.zeros((4, 5), np.uint8))


def test_resize_long_keeps_aspect():
    im = Image.new("RGB", (500, 375))
    assert T.resize_long(im, 320).size == (320, 240)
    assert T.resize_long(im.transpose(Image.TRANSPOSE), 320).size == (240, 320)
    assert T.resize_long(Image.new("RGB", (333, 100)), 100).size == (100, 30)


@pytest.mark.parametrize("seed", range(8))
def test_image_and_mask_stay_aligned(seed):
    img, m = _blocks(seed=seed)
    t = T.TrainTransform(resize_long=(40, 140), crop=96, jitter=None, seed=seed)
    x, y = t(img, m)
    assert x.shape == (3, 96, 96) and y.shape == (96, 96) and y.dtype == torch.int64
    x, y = x.numpy(), y.numpy()
    pad = y == 255
    # padding: exactly zero (= mean colour) in the image where the mask is 255, nowhere else
    assert np.array_equal(np.all(x == 0, axis=0), pad)
    rgb = T.denormalize(x).astype(int)
    d = ((rgb[:, :, None, :] - COLOURS[None, None].astype(int)) ** 2).sum(-1)
    nearest = d.argmin(-1)
    valid = ~pad
    agree = (nearest[valid] == y[valid]).mean()
    assert agree > 0.95, agree  # disagreement only on resampled edges


def test_flip_and_resize_range_seen():
    img, m = _blocks()
    t = T.TrainTransform(resize_long=(50, 150), crop=None, jitter=None, seed=0)
    flips, longs = set(), []
    for i in range(40):
        x, y = t(img, m, rng=t.rng_for(i))
        h, w = y.shape
        longs.append(max(h, w))
        assert abs(w / h - 100 / 60) < 0.05
        flips.add(bool(y[h // 2, 1] != 1))  # the left stripe moves to the right when flipped
        assert x.shape[1:] == y.shape
    assert flips == {True, False}
    assert 50 <= min(longs) and max(longs) <= 150 and max(longs) - min(longs) > 50


def test_padding_is_mean_colour():
    img = Image.new("RGB", (20, 10), (255, 255, 255))
    x = T.TrainTransform(resize_long=None, crop=32, flip=False, jitter=None, seed=0)(img)
    rgb = T.denormalize(x)
    corner_counts = (np.all(rgb == [124, 116, 104], axis=-1)).sum()  # round(255 * mean)
    assert corner_counts == 32 * 32 - 20 * 10
    assert (np.all(rgb == 255, axis=-1)).sum() == 20 * 10


def test_crop_smaller_than_image():
    img, m = _blocks(h=120, w=200)
    x, y = T.TrainTransform(resize_long=None, crop=(50, 70), jitter=None, seed=0)(img, m)
    assert x.shape == (3, 50, 70) and not (y == 255).any()


def test_geometry_independent_of_jitter():
    img, m = _blocks()
    a = T.TrainTransform(resize_long=(40, 140), crop=96, jitter=None, seed=5)
    b = T.TrainTransform(resize_long=(40, 140), crop=96, jitter=(0.3, 0.3, 0.3, 0.1), seed=5)
    for i in range(6):
        xa, ya = a(img, m, rng=a.rng_for(i, 2))
        xb, yb = b(img, m, rng=b.rng_for(i, 2))
        assert torch.equal(ya, yb)
        assert torch.equal((xb == 0).all(0), yb == 255)  # same placement of the padding
        assert not torch.equal(xa, xb)  # the colours did change


def test_reproducible_from_seed():
    img, m = _blocks()
    t1 = T.TrainTransform(resize_long=(40, 140), crop=64, seed=11)
    t2 = T.TrainTransform(resize_long=(40, 140), crop=64, seed=11)
    for _ in range(3):
        xa, ya = t1(img, m)
        xb, yb = t2(img, m)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    xa, _ = t1(img, m, rng=t1.rng_for(3, 0))
    xb, _ = t2(img, m, rng=t2.rng_for(3, 0))
    xc, _ = t2(img, m, rng=t2.rng_for(3, 1))
    assert torch.equal(xa, xb) and not torch.equal(xa, xc)
    t3 = T.TrainTransform(resize_long=(40, 140), crop=64, seed=12)
    assert not torch.equal(t3(img, m, rng=t3.rng_for(3, 0))[0], xa)


def _devkit(tmp_path, n=8):
    root = tmp_path / "dk"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    ids = []
    for i in range(n):
        img, m = _blocks(h=40, w=56, seed=i)
        img.save(root / "JPEGImages" / f"im{i}.jpg")
        Image.fromarray(m).save(root / "SegmentationClass" / f"im{i}.png")
        ids.append(f"im{i}")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids))
    (root / "classes.txt").write_text("\n".join("abcde"))
    return root


def test_dataloader_workers_reproducible(tmp_path):
    root = _devkit(tmp_path)
    t = T.TrainTransform(resize_long=(32, 72), crop=48, seed=0)
    ds = VOCDataset(root, "train", "seg", transform=t)

    def run(workers, epoch):
        ds.set_epoch(epoch)
        dl = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=workers, worker_init_fn=T.worker_init_fn)
        return [b for b in dl]

    a, b = run(0, 1), run(2, 1)
    assert len(a) == len(b) == 3
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    c = run(0, 2)
    assert not torch.equal(a[0][0], c[0][0])  # another epoch, other augmentations


def test_worker_init_fn_reseeds(tmp_path):
    root = _devkit(tmp_path, n=4)
    t = T.TrainTransform(resize_long=(32, 72), crop=48, seed=0)
    ds = VOCDataset(root, "train", "cls", transform=t)  # no set_epoch: the transform's own generator
    dl = lambda: torch.utils.data.DataLoader(  # noqa: E731
        ds, batch_size=1, num_workers=2, worker_init_fn=T.worker_init_fn, generator=torch.Generator().manual_seed(0)
    )
    a = [x for x, _ in dl()]
    b = [x for x, _ in dl()]
    for xa, xb in zip(a, b):
        assert torch.equal(xa, xb)
    T.worker_init_fn(0)  # outside a worker: must not fail


def test_bad_arguments():
    with pytest.raises(ValueError):
        T.TrainTransform(resize_long=(10, 5))
    with pytest.raises(ValueError):
        T.TrainTransform(jitter=(0.3, 0.3))
    t = T.TrainTransform(crop=16, resize_long=None)
    with pytest.raises(ValueError, match="size"):
        t(Image.new("RGB", (10, 10)), np.zeros((9, 10), np.uint8))
