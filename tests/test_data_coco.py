"""COCO loader (transcam_nb.data.coco): RLE / polygon rasterisation, and an instances JSON written
from the test COCO subset (real photos, YOLO polygons) with crowd regions in both RLE forms.

The expected values come from the YOLO label files and from an independent rasteriser
(tests/coco_fixture.py), never from the loader itself."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from coco_fixture import CROWD_BOX, IDS, KITE, rasterise, write_instances
from coco_fixture import crowd_mask as _crowd_mask
from coco_fixture import runs as _runs
from transcam_nb.data import COCODataset, Sample, image_labels
from transcam_nb.data.coco import (
    COCO_CLASSES,
    annotation_path,
    polygon_mask,
    rasterise_instances,
    rle_decode,
    rle_encode,
    rle_from_string,
    rle_to_string,
)

@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    return root, write_instances(root)


# ---------------------------------------------------------------------------------- RLE, polygons
def test_compressed_rle_hand_example():
    # 100 -> "T3" (two 5-bit groups), 20 and 30 have bit 0x10 set -> a zero group follows,
    # the 4th count is stored as its difference to the 2nd (25 - 20 = 5 -> "5")
    assert rle_to_string([100, 20, 30, 25]) == "T3d0n05"
    assert rle_from_string("T3d0n05") == [100, 20, 30, 25]
    # a negative difference (10 - 30 = -20) round-trips
    assert rle_from_string(rle_to_string([3, 30, 4, 10, 7])) == [3, 30, 4, 10, 7]


def test_rle_decode_is_column_major():
    m = rle_decode({"size": [2, 3], "counts": [1, 2, 3]})  # 0 | 1 1 | 0 0 0, walking columns
    assert m.tolist() == [[False, True, False], [True, False, False]]
    with pytest.raises(ValueError, match="sum to 5"):
        rle_decode({"size": [2, 3], "counts": [1, 2, 2]})


@pytest.mark.parametrize("compressed", [True, False])
def test_rle_round_trip(compressed):
    rng = np.random.default_rng(0)
    for shape in [(7, 5), (1, 1), (40, 33)]:
        m = rng.random(shape) < 0.4
        m[0, 0] = shape == (40, 33)  # once starting with a run of ones
        enc = rle_encode(m, compressed=compressed)
        assert isinstance(enc["counts"], str if compressed else list)
        if not compressed:
            assert enc["counts"] == _runs(m)
        np.testing.assert_array_equal(rle_decode(enc), m)


def test_polygon_mask_rectangle():
    m = polygon_mask([[2, 1, 6, 1, 6, 4, 2, 4]], 8, 10)  # x 2..6, y 1..4
    ys, xs = np.nonzero(m)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (1, 4, 2, 6)
    assert polygon_mask([[1, 1, 2, 2]], 4, 4).sum() == 0  # fewer than 3 points: skipped


def test_painting_order_small_on_big_crowd_below():
    def box(x0, y0, x1, y1):
        return [[x0, y0, x1, y0, x1, y1, x0, y1]]

    crowd = np.zeros((20, 20), bool)
    crowd[:, 15:] = True
    inst = [(2, False, box(4, 4, 6, 6)),  # small, listed first
            (1, False, box(0, 0, 16, 16)),  # big, overlaps the crowd columns 15..16
            (5, True, {"size": [20, 20], "counts": _runs(crowd)})]
    m = rasterise_instances(inst, 20, 20)
    assert (m[4:7, 4:7] == 2).all()  # the small object stays visible
    assert m[0, 0] == 1 and m[10, 10] == 1
    assert (m[0:17, 15:17] == 1).all()  # an annotated instance keeps its class inside a crowd region
    assert (m[17:, 15:] == 255).all() and (m[:, 17:] == 255).all()
    assert m[19, 0] == 0


# ---------------------------------------------------------------------------------- the fixture
def test_labels_match_masks(coco):
    root, info = coco
    ds = COCODataset(root, "train2017", mode="seg")
    assert ds.num_classes == 80 and ds.class_names == COCO_CLASSES
    assert ds.ids == [i for i in IDS if info[i][0]]  # the unannotated image is left out
    for k, iid in enumerate(ds.ids):
        s = ds[k]
        polys, (h, w) = info[iid]
        expected = np.zeros(80, np.float32)
        expected[[c for c, _ in polys]] = 1
        if iid in CROWD_BOX:
            expected[KITE] = 1
        np.testing.assert_array_equal(s.label, expected, err_msg=iid)
        assert s.mask.shape == (h, w) and s.mask.dtype == np.uint8
        from_mask = image_labels(s.mask, 80)  # raises on values outside 0..80, 255
        crowd_only = np.zeros(80, np.float32)
        if iid in CROWD_BOX:
            crowd_only[KITE] = 1
        np.testing.assert_array_equal(from_mask, expected - crowd_only, err_msg=iid)
        # object pixels agree with an independent rasteriser of the same polygons
        things = rasterise(polys, w, h) != 0
        ours = (s.mask != 0) & (s.mask != 255) if iid in CROWD_BOX else s.mask != 0
        crowd = _crowd_mask(h, w, iid) if iid in CROWD_BOX else np.zeros((h, w), bool)
        agree = (things == ours)[~crowd].mean()
        assert agree > 0.995, (iid, agree)


def test_crowd_regions_are_ignored(coco):
    root, info = coco
    ds = COCODataset(root, "train2017", mode="seg")
    for iid, (_, _, form) in CROWD_BOX.items():
        s = ds[ds.ids.index(iid)]
        polys, (h, w) = info[iid]
        crowd = _crowd_mask(h, w, iid)
        things = rasterise(polys, w, h) != 0
        free = crowd & ~things
        assert free.sum() > 500, form
        assert (s.mask[free] == 255).all(), form
        assert (s.mask[~crowd] != 255).all(), form
        # individually annotated objects inside the crowd box keep their class
        inside = crowd & things
        if inside.any():
            assert ((s.mask[inside] != 255).mean()) > 0.95, form


def test_modes_mirror_voc(coco):
    root, _ = coco
    cls = COCODataset(root, "train2017", mode="cls")
    s = cls[0]
    assert isinstance(s, Sample) and s.mask is None and isinstance(s.image, Image.Image)
    assert s.orig_size == (s.image.size[1], s.image.size[0])
    assert cls.labels().shape == (len(cls), 80)

    def t(img, mask=None):
        x = torch.from_numpy(np.asarray(img.resize((32, 24)), np.float32)).permute(2, 0, 1)
        return x if mask is None else (x, torch.from_numpy(mask[:24, :32].astype(np.int64)))

    x, y = COCODataset(root, "train2017", mode="cls", transform=t)[1]
    assert x.shape == (3, 24, 32) and y.dtype == torch.float32 and y.shape == (80,)
    x, m = COCODataset(root, "train2017", mode="seg", transform=t)[1]
    assert x.shape == (3, 24, 32) and m.shape == (24, 32)
    inf = COCODataset(root, "train2017", mode="infer")[2]
    assert isinstance(inf.image, np.ndarray) and inf.image.dtype == np.uint8 and inf.image.ndim == 3
    assert inf.mask is not None and inf.mask.shape == inf.image.shape[:2] == inf.orig_size
    assert inf.id == COCODataset(root, "train2017")[2].id
    with pytest.raises(ValueError, match="mode"):
        COCODataset(root, "train2017", mode="det")


def test_empty_images_kept_on_request(coco):
    root, _ = coco
    ds = COCODataset(root, "train2017", mode="infer", skip_empty=False)
    assert ds.ids == IDS
    s = ds[IDS.index("000000000250")]
    assert s.label.sum() == 0 and (s.mask == 0).all()


def test_2014_and_2017_file_names(tmp_path):
    ids = IDS[:3]
    write_instances(tmp_path, year=2017, ids=ids)
    write_instances(tmp_path, year=2014, ids=ids)
    d14 = COCODataset(tmp_path, "train2014")
    d17 = COCODataset(tmp_path, "train2017")
    assert d14.ids == [f"COCO_train2014_{i}" for i in ids] and d17.ids == ids
    assert d14.image_path(0).name == "COCO_train2014_000000000030.jpg"
    np.testing.assert_array_equal(d14.labels(), d17.labels())
    assert COCODataset(tmp_path, "train").split == "train2014"  # 2014 first when both exist
    assert COCODataset(tmp_path, "train", year=2017).split == "train2017"
    (tmp_path / "annotations" / "instances_train2014.json").unlink()
    assert COCODataset(tmp_path, "train").split == "train2017"
    # images under root/images/<split>/ (the layout of some downloads) are found too
    (tmp_path / "images").mkdir()
    os.rename(tmp_path / "train2017", tmp_path / "images" / "train2017")
    assert COCODataset(tmp_path, "train2017").image_dir == tmp_path / "images" / "train2017"


# ---------------------------------------------------------------------------------- bad input
def test_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        COCODataset(tmp_path / "nope", "val2014")
    with pytest.raises(FileNotFoundError, match=r"instances_val2014\.json.*found in .*none"):
        COCODataset(tmp_path, "val2014")
    write_instances(tmp_path, ids=IDS[:2])
    with pytest.raises(FileNotFoundError, match=r"instances_val2014\.json or .*instances_val2017\.json"):
        annotation_path(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="instances_train2017.json"):  # lists what exists
        COCODataset(tmp_path, "val2017")
    # a missing image
    (tmp_path / "train2017" / f"{IDS[1]}.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=f"{IDS[1]}.jpg"):
        COCODataset(tmp_path, "train2017")
    # a missing image folder
    shutil.rmtree(tmp_path / "train2017")
    with pytest.raises(FileNotFoundError, match="image folder .*train2017"):
        COCODataset(tmp_path, "train2017")


def test_errors_on_bad_json(tmp_path):
    write_instances(tmp_path, ids=IDS[:2])
    path = tmp_path / "annotations" / "instances_train2017.json"
    good = json.loads(path.read_text())
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        COCODataset(tmp_path, "train2017")
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match=r"lacks .*annotations"):
        COCODataset(tmp_path, "train2017")
    bad = dict(good, annotations=good["annotations"] + [dict(good["annotations"][0], category_id=12)])
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="category_id 12"):
        COCODataset(tmp_path, "train2017")
    # the JSON says another size than the image file has
    bad = dict(good, images=[dict(good["images"][0], height=17)] + good["images"][1:])
    path.write_text(json.dumps(bad))
    ds = COCODataset(tmp_path, "train2017", mode="seg")
    with pytest.raises(ValueError, match=r"instances_train2017\.json says .*x17"):
        ds[0]


def test_malformed_polygon_names_the_annotation(tmp_path):
    write_instances(tmp_path, ids=IDS[:1])
    path = tmp_path / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["segmentation"] = [[1, 2, "x", 4, 5, 6]]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"annotation 1 has a malformed polygon"):
        COCODataset(tmp_path, "train2017")
    data["annotations"][0]["segmentation"] = [[1, 2, 3, 4, 5, 6, 7]]  # odd number of coordinates
    path.write_text(json.dumps(data))
    ds = COCODataset(tmp_path, "train2017", mode="seg")
    with pytest.raises(ValueError, match=r"000000000030.*odd number of coordinates"):
        ds[0]
