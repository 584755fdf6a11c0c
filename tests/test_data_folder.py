"""Users' own data: images + CSV/JSON labels (+ optional masks), same interface as VOCDataset."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared_path
from transcam_nb.data import voc
from transcam_nb.data.folder import FolderDataset, read_label_file
from transcam_nb.data.transforms import TrainTransform

NAMES = ("cat", "dog", "bird")


@pytest.fixture
def folder(tmp_path):
    img = tmp_path / "images"
    img.mkdir()
    (img / "sub").mkdir()
    rng = np.random.default_rng(0)
    for name in ("one.jpg", "two.png", "sub/three.jpg"):
        Image.fromarray(rng.integers(0, 255, (12, 20, 3), dtype=np.uint8)).save(img / name)
    masks = tmp_path / "masks"
    masks.mkdir()
    for stem, v in (("one", 1), ("two", 2), ("three", 3)):
        m = np.zeros((12, 20), np.uint8)
        m[3:7, 4:9] = v
        Image.fromarray(m).save(masks / f"{stem}.png")
    return tmp_path


def _vec(*idx, k=3):
    v = np.zeros(k, np.float32)
    v[list(idx)] = 1
    return v


def test_csv_label_column(folder):
    p = folder / "labels.csv"
    p.write_text("image,labels\none.jpg,cat dog\ntwo,bird\nsub/three.jpg,cat;bird\n")
    ds = FolderDataset(folder / "images", p, class_names=NAMES)
    assert ds.ids == ["one", "two", "three"] and ds.num_classes == 3 and ds.class_names == NAMES
    assert np.array_equal(ds.labels(), np.stack([_vec(0, 1), _vec(2), _vec(0, 2)]))
    s = ds[2]
    assert s.image.mode == "RGB" and s.orig_size == (12, 20) and s.id == "three" and s.mask is None
    # without class_names: sorted names used in the file
    ds2 = FolderDataset(folder / "images", p)
    assert ds2.class_names == ("bird", "cat", "dog")


def test_csv_one_hot_columns(folder):
    p = folder / "labels.csv"
    p.write_text("filename,cat,dog,bird\none.jpg,1,0,0\ntwo.png,0,1,1\nsub/three.jpg,0,0,0\n")
    ds = FolderDataset(folder / "images", p)
    assert ds.class_names == NAMES
    assert np.array_equal(ds.labels(), np.stack([_vec(0), _vec(1, 2), _vec()]))
    p.write_text("filename,cat,dog,bird\none.jpg,1,0,maybe\n")
    with pytest.raises(ValueError, match="line 2.*bird.*maybe"):
        FolderDataset(folder / "images", p)


def test_json_labels(folder):
    p = folder / "labels.json"
    p.write_text(json.dumps({"one": ["dog"], "two.png": [0, 2], "sub/three.jpg": []}))
    ds = FolderDataset(folder / "images", p, class_names=NAMES)
    assert np.array_equal(ds.labels(), np.stack([_vec(1), _vec(0, 2), _vec()]))
    p.write_text(json.dumps({"class_names": list(NAMES), "labels": {"one": ["bird"], "two": [1]}}))
    ds = FolderDataset(folder / "images", p)
    assert ds.class_names == NAMES and np.array_equal(ds.labels(), np.stack([_vec(2), _vec(1)]))
    p.write_text(json.dumps({"one": [0]}))
    with pytest.raises(ValueError, match="class_names"):
        FolderDataset(folder / "images", p)


def test_masks_and_modes(folder):
    p = folder / "labels.csv"
    p.write_text("image,labels\none.jpg,cat\ntwo.png,dog\nsub/three.jpg,bird\n")
    seg = FolderDataset(folder / "images", p, mask_dir=folder / "masks", class_names=NAMES, mode="seg")
    s = seg[1]
    assert s.mask.shape == (12, 20) and set(np.unique(s.mask)) == {0, 2}
    inf = FolderDataset(folder / "images", p, mask_dir=folder / "masks", class_names=NAMES, mode="infer")
    s = inf[0]
    assert isinstance(s.image, np.ndarray) and s.image.shape == (12, 20, 3) and s.mask is not None
    by_mask = FolderDataset(folder / "images", None, mask_dir=folder / "masks", class_names=NAMES, label_source="mask")
    assert sorted(by_mask.ids) == ["one", "three", "two"]
    for i in range(3):
        assert np.array_equal(by_mask.label(i), _vec({"one": 0, "two": 1, "three": 2}[by_mask.ids[i]]))
    t = TrainTransform(resize_long=(16, 24), crop=16, seed=0)
    cls = FolderDataset(folder / "images", p, class_names=NAMES, transform=t)
    x, y = next(iter(torch.utils.data.DataLoader(cls, batch_size=3)))
    assert x.shape == (3, 3, 16, 16) and y.shape == (3, 3)
    seg_t = FolderDataset(folder / "images", p, mask_dir=folder / "masks", class_names=NAMES, mode="seg", transform=t)
    xi, mi = seg_t[0]
    assert xi.shape == (3, 16, 16) and mi.shape == (16, 16)


def test_errors(folder):
    p = folder / "labels.csv"
    p.write_text("image,labels\none.jpg,cat\nmissing.jpg,dog\n")
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        FolderDataset(folder / "images", p, class_names=NAMES)
    p.write_text("image,labels\none.jpg,cow\n")
    with pytest.raises(ValueError, match=r"labels\.csv.*cow"):
        FolderDataset(folder / "images", p, class_names=NAMES)
    p.write_text("image,labels\none.jpg,cat\n")
    with pytest.raises(ValueError, match="mask_dir"):
        FolderDataset(folder / "images", p, class_names=NAMES, mode="seg")
    with pytest.raises(FileNotFoundError, match="nolabels"):
        FolderDataset(folder / "images", folder / "nolabels.csv")
    with pytest.raises(FileNotFoundError, match="noimages"):
        FolderDataset(folder / "noimages", p)
    (folder / "masks" / "one.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"one\.png"):
        FolderDataset(folder / "images", p, mask_dir=folder / "masks", class_names=NAMES, mode="seg")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(folder / "masks" / "one.png")
    ds = FolderDataset(folder / "images", p, mask_dir=folder / "masks", class_names=NAMES, mode="seg")
    with pytest.raises(ValueError, match=r"one\.png.*one\.jpg"):
        ds[0]
    (folder / "images" / "one.jpg").write_bytes(b"garbage")
    ds = FolderDataset(folder / "images", p, class_names=NAMES)
    with pytest.raises(ValueError, match=r"one\.jpg"):
        ds[0]
    (folder / "bad.csv").write_text("image\none.jpg\n")
    with pytest.raises(ValueError, match="no 'labels' column"):
        read_label_file(folder / "bad.csv")


def test_coco_photos_as_folder(tmp_path):
    """Real COCO photos with labels written from their polygons (COCO → VOC map)."""
    from coco_fixture import COCO_TO_VOC, expected_labels, rasterise, read_polygons

    coco = shared_path("data", "coco128_seg")
    ids = (coco / "sample.txt").read_text().split()[:24]
    rows, masks = ["image,labels"], tmp_path / "masks"
    masks.mkdir()
    expected = {}
    for iid in ids:
        polys = read_polygons(coco / "labels" / "train2017" / f"{iid}.txt")
        names = sorted({voc.VOC_CLASSES[COCO_TO_VOC[c] - 1] for c, _ in polys if c in COCO_TO_VOC})
        rows.append(f"{iid}.jpg,{' '.join(names)}")
        expected[iid] = expected_labels(polys)
        with Image.open(coco / "images" / "train2017" / f"{iid}.jpg") as im:
            w, h = im.size
        Image.fromarray(rasterise(polys, w, h)).save(masks / f"{iid}.png")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    ds = FolderDataset(coco / "images" / "train2017", tmp_path / "labels.csv", mask_dir=masks, class_names=voc.VOC_CLASSES, mode="seg")
    assert len(ds) == 24
    for i in range(0, 24, 4):
        s = ds[i]
        assert np.array_equal(s.label, expected[s.id])
        assert np.array_equal(voc.image_labels(s.mask), s.label)
        assert s.mask.shape == s.orig_size
