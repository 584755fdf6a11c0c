"""VOC devkit loading: palette, labels, lists, train_aug/SBD, label files, datasets, errors.

Real data: ../shared/data/voc2012_sample (4 official VOC masks) and ../shared/data/coco128_seg
(COCO polygons rasterised into VOC-style masks by tests/coco_fixture.py).
"""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared_path
from transcam_nb.data import voc
from transcam_nb.data.transforms import TrainTransform
from transcam_nb.data.voc import VOC_CLASSES, VOCDataset, image_labels, voc_palette


# ------------------------------------------------------------------------------------------
# helpers: a tiny hand-made devkit
# ------------------------------------------------------------------------------------------
def _save_mask(path, arr):
    im = Image.fromarray(np.asarray(arr, np.uint8))
    im.putpalette(voc.VOC_PALETTE)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def make_devkit(tmp_path, ids=("a", "b", "c"), size=(24, 16), lists=None, masks=True):
    """Devkit with RGB JPEGs; mask of id i holds class value i+1 (so labels are known)."""
    root = tmp_path / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for n, i in enumerate(ids):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{i}.jpg")
        if masks:
            m = np.zeros((size[1], size[0]), np.uint8)
            m[2:6, 3:9] = n + 1
            m[0, :] = 255
            _save_mask(root / "SegmentationClass" / f"{i}.png", m)
    lists = lists or {"train": list(ids)}
    for name, lst in lists.items():
        (root / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("\n".join(lst) + "\n")
    return root


# ------------------------------------------------------------------------------------------
# palette and labels
# ------------------------------------------------------------------------------------------
def test_palette_known_colours():
    pal = np.asarray(voc_palette(256)).reshape(-1, 3)
    # colours of the VOC colour map, typed by hand
    known = {
        0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 4: (0, 0, 128),
        7: (128, 128, 128), 8: (64, 0, 0), 15: (192, 128, 128), 20: (0, 64, 128), 255: (224, 224, 192),
    }
    for k, rgb in known.items():
        assert tuple(pal[k]) == rgb, k
    assert len(voc.VOC_PALETTE) == 768
    assert len(VOC_CLASSES) == 20 and VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[-1] == "tvmonitor"


def test_palette_matches_official_masks():
    folder = shared_path("data", "voc2012_sample", "VOCdevkit", "VOC2012", "SegmentationClass")
    for p in sorted(folder.glob("*.png")):
        with Image.open(p) as im:
            assert im.mode == "P"
            assert im.getpalette()[: 21 * 3] == voc.VOC_PALETTE[: 21 * 3], p.name


def test_image_labels_hand_made():
    m = np.zeros((5, 5), np.uint8)
    m[1, 1] = 3
    m[2, 2] = 20
    m[0] = 255
    expected = np.zeros(20, np.float32)
    expected[[2, 19]] = 1
    assert np.array_equal(image_labels(m), expected)
    assert image_labels(np.zeros((3, 3), np.uint8)).sum() == 0
    assert np.array_equal(image_labels(Image.fromarray(m)), expected)
    with pytest.raises(ValueError, match="21"):
        image_labels(np.full((2, 2), 21, np.uint8))
    with pytest.raises(ValueError, match="9"):
        image_labels(np.full((2, 2), 9, np.uint8), num_classes=8)
    with pytest.raises(ValueError, match="2-D"):
        image_labels(np.zeros((2, 2, 3), np.uint8))


# ------------------------------------------------------------------------------------------
# the real VOC sample
# ------------------------------------------------------------------------------------------
VOC_SAMPLE_CLASSES = {  # from voc2012_sample/SOURCES.md
    "2007_001763": {"cat", "dog", "sofa", "tvmonitor"},
    "2011_000003": {"bottle", "person"},
    "2011_000025": {"bus", "car"},
    "2011_003066": {"bottle", "chair", "diningtable", "person"},
}


@pytest.mark.parametrize("sub", [(), ("VOCdevkit", "VOC2012")])
def test_voc_sample_labels_and_modes(sub):
    root = shared_path("data", "voc2012_sample", *sub)
    ds = VOCDataset(root, "sample", "cls")
    assert ds.num_classes == 20 and ds.class_names == VOC_CLASSES
    assert sorted(ds.ids) == sorted(VOC_SAMPLE_CLASSES)
    for i in range(len(ds)):
        s = ds[i]
        assert {VOC_CLASSES[k] for k in np.flatnonzero(s.label)} == VOC_SAMPLE_CLASSES[s.id]
        assert s.label.dtype == np.float32 and s.label.shape == (20,)
        assert s.image.mode == "RGB" and s.orig_size == (s.image.size[1], s.image.size[0])
    seg = VOCDataset(root, "sample", "seg")
    inf = VOCDataset(root, "sample", "infer")
    for i in range(len(seg)):
        a, b = seg[i], inf[i]
        assert a.mask.shape == a.orig_size and a.mask.dtype == np.uint8
        assert set(np.unique(a.mask)) <= set(range(21)) | {255}
        assert isinstance(b.image, np.ndarray) and b.image.dtype == np.uint8 and b.image.shape == a.orig_size + (3,)
        assert np.array_equal(b.mask, a.mask) and b.id == a.id
        assert np.array_equal(b.label, a.label) and b["id"] == a.id


def test_voc_sample_seg_transform_and_loader():
    root = shared_path("data", "voc2012_sample")
    t = TrainTransform(resize_long=(64, 96), crop=64, seed=3)
    ds = VOCDataset(root, "sample", "cls", transform=t)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, shuffle=False, num_workers=0)
    x, y = next(iter(loader))
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32
    assert y.shape == (2, 20) and y.dtype == torch.float32
    seg = VOCDataset(root, "sample", "seg", transform=t)
    img, mask = seg[0]
    assert img.shape == (3, 64, 64) and mask.shape == (64, 64) and mask.dtype == torch.int64


def test_infer_loader_without_collation():
    root = shared_path("data", "voc2012_sample")
    ds = VOCDataset(root, "sample", "infer")
    items = list(torch.utils.data.DataLoader(ds, batch_size=None))
    assert [s.id for s in items] == ds.ids
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=voc.collate_list)))
    assert len(batch) == 2 and isinstance(batch[0], voc.Sample)


# ------------------------------------------------------------------------------------------
# COCO polygons rasterised into VOC masks
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coco_devkit(tmp_path_factory):
    from coco_fixture import build_devkit

    coco = shared_path("data", "coco128_seg")
    return build_devkit(coco, tmp_path_factory.mktemp("coco") / "VOC2012", voc.VOC_PALETTE)


def test_coco_masks_give_polygon_labels(coco_devkit):
    root, expected = coco_devkit
    ds = VOCDataset(root, "coco", "cls")
    assert len(ds) == 96
    n_with = 0
    for i in range(len(ds)):
        lab = ds.label(i)
        assert np.array_equal(lab, expected[ds.ids[i]]), ds.ids[i]
        n_with += lab.any()
    assert n_with == 72  # coco128_seg/SOURCES.md: 72 images hold a VOC-class object
    # per-class image counts from SOURCES.md
    counts = ds.labels().sum(0)
    assert counts[VOC_CLASSES.index("person")] == 45
    assert counts[VOC_CLASSES.index("car")] == 9
    assert counts[VOC_CLASSES.index("tvmonitor")] == 0


def test_coco_seg_items(coco_devkit):
    root, expected = coco_devkit
    ds = VOCDataset(root, "coco", "seg")
    for i in range(0, len(ds), 12):
        s = ds[i]
        assert s.mask.shape == s.orig_size
        assert np.array_equal(image_labels(s.mask), expected[s.id])


# ------------------------------------------------------------------------------------------
# lists, train_aug, SBD
# ------------------------------------------------------------------------------------------
def test_list_formats(tmp_path):
    p = tmp_path / "l.txt"
    p.write_text(
        "# comment\n/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n\n"
        "2008_000001\n/JPEGImages/2011_003066.jpg\nimg.v2\n"
    )
    assert voc.read_id_list(p) == ["2007_000032", "2008_000001", "2011_003066", "img.v2"]


def test_authors_list_as_split(tmp_path):
    root = make_devkit(tmp_path, lists={"train": ["a"]})
    lst = tmp_path / "train_aug_authors.txt"
    lst.write_text("/JPEGImages/b.jpg /SegmentationClassAug/b.png\n/JPEGImages/c.jpg /SegmentationClassAug/c.png\n")
    ds = VOCDataset(root, str(lst), "cls")
    assert ds.ids == ["b", "c"]
    assert np.flatnonzero(ds[1].label).tolist() == [2]


def _write_sbd(tmp_path, masks: dict, train, val):
    from scipy.io import savemat

    ds = tmp_path / "benchmark_RELEASE" / "dataset"
    (ds / "cls").mkdir(parents=True)
    for i, m in masks.items():
        savemat(ds / "cls" / f"{i}.mat", {"GTcls": {"Segmentation": m.astype(np.uint8), "CategoriesPresent": np.array([1])}})
    (ds / "train.txt").write_text("\n".join(train) + "\n")
    (ds / "val.txt").write_text("\n".join(val) + "\n")
    return tmp_path / "benchmark_RELEASE"


def test_train_aug_from_sbd_mat(tmp_path):
    ids = ["a", "b", "c", "d", "e"]
    root = make_devkit(tmp_path, ids=ids, lists={"train": ["a", "b"], "val": ["c"]})
    # SBD masks for d and e (not in VOC SegmentationClass)
    for i in ("d", "e"):
        (root / "SegmentationClass" / f"{i}.png").unlink()
    md = np.zeros((16, 24), np.uint8)
    md[4:8, 4:8] = 12
    me = np.zeros((16, 24), np.uint8)
    me[1:3, 1:3] = 1
    sbd = _write_sbd(tmp_path, {"d": md, "e": me, "b": md, "c": me}, train=["b", "d", "c"], val=["e"])
    # (VOC train ∪ SBD train ∪ SBD val) − VOC val
    assert voc.build_train_aug(root, sbd) == ["a", "b", "d", "e"]
    ds = VOCDataset(root, "train_aug", "seg", sbd_root=sbd)
    assert ds.ids == ["a", "b", "d", "e"]
    s = ds[2]
    assert np.array_equal(s.mask, md) and np.flatnonzero(s.label).tolist() == [11]
    assert np.array_equal(ds[1].mask[2:6, 3:9], np.full((4, 6), 2))  # VOC mask preferred over SBD
    assert np.array_equal(voc.read_sbd_mat(sbd / "dataset" / "cls" / "e.mat"), me)
    # write=True writes the list, which is then read directly
    voc.build_train_aug(root, sbd, write=True)
    assert voc.read_id_list(root / "ImageSets" / "Segmentation" / "train_aug.txt") == ["a", "b", "d", "e"]
    # conversion to PNG
    out = voc.convert_sbd(sbd, tmp_path / "aug", progress=False)
    assert np.array_equal(voc.load_mask(out / "d.png"), md)


def test_train_aug_from_segmentation_class_aug(tmp_path):
    root = make_devkit(tmp_path, ids=["a", "b", "c", "x"], lists={"train": ["a"], "val": ["b"]})
    for i in ("a", "b", "c", "x"):
        _save_mask(root / "SegmentationClassAug" / f"{i}.png", np.ones((16, 24), np.uint8))
    assert voc.build_train_aug(root) == ["a", "c", "x"]
    ds = VOCDataset(root, "train_aug", "cls")
    assert ds.ids == ["a", "c", "x"]
    # an existing train_aug.txt wins
    (root / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("x\n")
    assert VOCDataset(root, "train_aug", "cls").ids == ["x"]


# ------------------------------------------------------------------------------------------
# label sources
# ------------------------------------------------------------------------------------------
def test_cls_labels_npy_needs_opt_in(tmp_path):
    root = make_devkit(tmp_path)
    table = {i: np.eye(20, dtype=np.float32)[k + 10] for k, i in enumerate(["a", "b", "c"])}
    p = tmp_path / "cls_labels.npy"
    np.save(p, table, allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        VOCDataset(root, "train", "cls", cls_labels=p)
    ds = VOCDataset(root, "train", "cls", cls_labels=p, allow_pickle=True)
    assert [int(np.flatnonzero(ds[i].label)[0]) for i in range(3)] == [10, 11, 12]  # file wins over masks
    ds = VOCDataset(root, "train", "cls", cls_labels=p, allow_pickle=True, label_source="mask")
    assert [int(np.flatnonzero(ds[i].label)[0]) for i in range(3)] == [0, 1, 2]
    # a pickle file that is not a dict
    bad = tmp_path / "bad.npy"
    np.save(bad, np.array([pickle.dumps(1)], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="dict"):
        voc.load_cls_labels(bad, allow_pickle=True)


def test_cls_labels_json(tmp_path):
    root = make_devkit(tmp_path)
    p = tmp_path / "labels.json"
    p.write_text(json.dumps({"a": ["cat", "dog"], "b": [0], "c": "person;car"}))
    ds = VOCDataset(root, "train", "cls", cls_labels=p)
    names = lambda v: {VOC_CLASSES[k] for k in np.flatnonzero(v)}  # noqa: E731
    assert names(ds[0].label) == {"cat", "dog"}
    assert names(ds[1].label) == {"aeroplane"}
    assert names(ds[2].label) == {"person", "car"}
    p.write_text(json.dumps({"a": ["kitten"]}))
    with pytest.raises(ValueError, match="kitten"):
        VOCDataset(root, "train", "cls", cls_labels=p)


def test_xml_labels(tmp_path):
    root = make_devkit(tmp_path, masks=False)
    (root / "Annotations").mkdir()
    (root / "Annotations" / "a.xml").write_text(
        "<annotation><object><name>dog</name><difficult>1</difficult></object>"
        "<object><name> person </name><truncated>1</truncated></object>"
        "<object><name>dog</name></object></annotation>"
    )
    for i in ("b", "c"):
        (root / "Annotations" / f"{i}.xml").write_text("<annotation><object><name>horse</name></object></annotation>")
    ds = VOCDataset(root, "train", "cls")
    assert {VOC_CLASSES[k] for k in np.flatnonzero(ds[0].label)} == {"dog", "person"}
    assert np.flatnonzero(ds[1].label).tolist() == [VOC_CLASSES.index("horse")]
    (root / "Annotations" / "b.xml").write_text("<annotation><object>")
    with pytest.raises(ValueError, match="b.xml"):
        ds2 = VOCDataset(root, "train", "cls")
        ds2[1]


def test_class_names_file(tmp_path):
    root = make_devkit(tmp_path)
    (root / "classes.txt").write_text("background\nred\ngreen\nblue\n")
    ds = VOCDataset(root, "train", "cls")
    assert ds.class_names == ("red", "green", "blue") and ds.num_classes == 3
    assert ds[2].label.tolist() == [0, 0, 1]


def test_rgb_colour_mask(tmp_path):
    root = make_devkit(tmp_path, ids=["a"])
    m = np.zeros((16, 24), np.uint8)
    m[3:9, 5:20] = 15
    m[0] = 255
    pal = np.asarray(voc.VOC_PALETTE, np.uint8).reshape(-1, 3)
    Image.fromarray(pal[m]).save(root / "SegmentationClass" / "a.png")
    ds = VOCDataset(root, "train", "seg")
    assert np.array_equal(ds[0].mask, m)


# ------------------------------------------------------------------------------------------
# image modes
# ------------------------------------------------------------------------------------------
def test_image_modes_converted_to_rgb(tmp_path):
    root = make_devkit(tmp_path, ids=["g", "rgba", "p", "cmyk", "g16"])
    h, w = 16, 24
    gray = np.tile(np.arange(w, dtype=np.uint8)[None] * 10, (h, 1))
    Image.fromarray(gray, "L").save(root / "JPEGImages" / "g.jpg", format="PNG")
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 200, 100, 50, 7
    Image.fromarray(rgba, "RGBA").save(root / "JPEGImages" / "rgba.jpg", format="PNG")
    pim = Image.fromarray((np.arange(h * w) % 3).reshape(h, w).astype(np.uint8), "L").convert("P")
    pim.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (768 - 9))
    pim.save(root / "JPEGImages" / "p.jpg", format="PNG")
    Image.new("CMYK", (w, h), (0, 255, 255, 0)).save(root / "JPEGImages" / "cmyk.jpg", quality=95)
    g16 = (np.tile(np.arange(w, dtype=np.uint16)[None], (h, 1)) * 2570).astype(np.uint16)  # 2570 = 257 * 10
    Image.fromarray(g16).save(root / "JPEGImages" / "g16.jpg", format="PNG")
    ds = VOCDataset(root, "train", "infer")
    got = {ds.ids[i]: ds[i].image for i in range(len(ds))}
    for arr in got.values():
        assert arr.shape == (h, w, 3) and arr.dtype == np.uint8
    assert np.array_equal(got["g"], np.repeat(gray[..., None], 3, 2))
    assert np.array_equal(got["rgba"][0, 0], [200, 100, 50])
    expected_p = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]])[(np.arange(h * w) % 3).reshape(h, w)]
    assert np.array_equal(got["p"], expected_p)
    assert np.abs(got["cmyk"].astype(int) - [255, 0, 0]).max() <= 12  # C=0 M=Y=255 K=0 is red
    assert np.array_equal(got["g16"][..., 0], gray)


# ------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------
def test_error_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        VOCDataset(tmp_path / "nowhere", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="JPEGImages"):
        VOCDataset(tmp_path / "empty", "train")


def test_error_missing_list(tmp_path):
    root = make_devkit(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"val\.txt.*train"):
        VOCDataset(root, "val")
    with pytest.raises(FileNotFoundError, match="train_aug"):
        VOCDataset(root, "train_aug")


def test_error_missing_image(tmp_path):
    root = make_devkit(tmp_path)
    (root / "JPEGImages" / "b.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"b\.jpg"):
        VOCDataset(root, "train", "cls")
    ds = VOCDataset(root, "train", "cls", check_files=False)
    with pytest.raises(FileNotFoundError, match=r"b\.jpg"):
        ds[1]


def test_error_missing_mask(tmp_path):
    root = make_devkit(tmp_path)
    (root / "SegmentationClass" / "c.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"c\.png"):
        VOCDataset(root, "train", "seg")
    with pytest.raises(FileNotFoundError, match=r"c\.png"):  # cls labels come from masks here
        VOCDataset(root, "train", "cls")
    ds = VOCDataset(root, "train", "infer")  # inference does not need labels
    assert ds[2].label is None and ds[2].mask is None


def test_error_corrupt_image(tmp_path):
    root = make_devkit(tmp_path)
    (root / "JPEGImages" / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    ds = VOCDataset(root, "train", "cls")
    with pytest.raises(ValueError, match=r"a\.jpg"):
        ds[0]


def test_error_mask_size_mismatch(tmp_path):
    root = make_devkit(tmp_path)
    _save_mask(root / "SegmentationClass" / "b.png", np.zeros((10, 10), np.uint8))
    ds = VOCDataset(root, "train", "seg")
    with pytest.raises(ValueError, match=r"b\.png.*b\.jpg"):
        ds[1]


def test_error_bad_mask_values(tmp_path):
    root = make_devkit(tmp_path)
    _save_mask(root / "SegmentationClass" / "a.png", np.full((16, 24), 77, np.uint8))
    ds = VOCDataset(root, "train", "cls")
    with pytest.raises(ValueError, match=r"a\.png.*77"):
        ds[0]


def test_error_bad_mode_and_index(tmp_path):
    root = make_devkit(tmp_path)
    with pytest.raises(ValueError, match="mode"):
        VOCDataset(root, "train", "segmentation")
    with pytest.raises(IndexError):
        VOCDataset(root, "train")[3]
