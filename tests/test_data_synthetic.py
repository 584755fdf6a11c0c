"""The embedded benchmark: determinism, devkit layout, masks vs labels vs instances, the design
properties its design promises, the cache (ensure), coverage helpers."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from transcam_nb.data import synthetic as syn
from transcam_nb.data.voc import VOCDataset, image_labels, load_mask

SIZES = dict(image_size=160, n_train=16, n_val=4, n_test=4)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return syn.generate(tmp_path_factory.mktemp("syn") / "bench", seed=0, workers=0, progress=False, **SIZES)


def _ids(root, split):
    return (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


def test_layout(bench):
    for d in ("JPEGImages", "SegmentationClass", "SegmentationObject"):
        assert len(list((bench / d).iterdir())) == 24, d
    assert len(_ids(bench, "train")) == 16 and len(_ids(bench, "val")) == 4 and len(_ids(bench, "test")) == 4
    assert _ids(bench, "train_aug") == _ids(bench, "train")
    assert not set(_ids(bench, "train")) & set(_ids(bench, "val"))
    names = (bench / "classes.txt").read_text().split()
    assert len(names) == 8 >= 6 and len(set(names)) == 8
    spec = json.loads((bench / "spec.json").read_text())
    assert spec == syn.spec(0, **SIZES)
    with Image.open(bench / "SegmentationClass" / "train_000000.png") as m:
        assert m.mode == "P" and m.size == (160, 160)
    with Image.open(bench / "JPEGImages" / "train_000000.jpg") as im:
        assert im.mode == "RGB" and im.size == (160, 160)
    assert not [p for p in bench.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_masks_agree_with_labels_and_instances(bench):
    labels = json.loads((bench / "cls_labels.json").read_text())
    inst = syn.load_instances(bench)
    assert set(labels) == set(inst) and len(labels) == 24
    n_objects = []
    for iid, cls in labels.items():
        sem = load_mask(bench / "SegmentationClass" / f"{iid}.png")
        obj = load_mask(bench / "SegmentationObject" / f"{iid}.png")
        assert np.flatnonzero(image_labels(sem, 8)).tolist() == cls
        assert set(np.unique(sem)) <= set(range(9))  # nothing ignored
        objs = inst[iid]["objects"]
        n_objects.append(len(objs))
        assert len({o["class_index"] for o in objs}) == len(objs)  # different classes
        assert np.array_equal(sem > 0, obj > 0)
        for o in objs:
            m = obj == o["instance"]
            assert m.sum() == o["area"] > 0
            assert np.all(sem[m] == o["class_index"] + 1)
            x0, y0, x1, y1 = o["part_box"]
            assert x1 - x0 == y1 - y0 == o["part_size"]
            # the emblem is labelled as its object (fully labelled objects), and mostly visible
            assert m[y0:y1, x0:x1].sum() == o["part_area"] >= 0.9 * o["part_size"] ** 2
    assert min(n_objects) >= 1 and max(n_objects) <= 3


def test_voc_dataset_reads_benchmark(bench):
    labels = json.loads((bench / "cls_labels.json").read_text())
    ds = VOCDataset(bench, "train", "cls")
    assert ds.num_classes == 8 and ds.class_names == tuple(syn.PART_PATTERNS[:8])
    for i in range(len(ds)):
        assert np.flatnonzero(ds.label(i)).tolist() == labels[ds.ids[i]]
    seg = VOCDataset(bench, "test", "seg")
    s = seg[0]
    assert s.mask.shape == (160, 160) and s.image.size == (160, 160)
    # the label file route gives the same labels as the masks
    ds2 = VOCDataset(bench, "val", "cls", cls_labels=bench / "cls_labels.json", label_source="file")
    ds3 = VOCDataset(bench, "val", "cls")
    assert np.array_equal(ds2.labels(), ds3.labels())


def test_deterministic_and_per_image_seeds(bench, tmp_path):
    again = syn.generate(tmp_path / "again", seed=0, workers=2, progress=False, image_size=160, n_train=40, n_val=0, n_test=4)
    for iid in _ids(bench, "train") + _ids(bench, "test"):  # image i depends only on (seed, split, i)
        for d, ext in (("JPEGImages", "jpg"), ("SegmentationClass", "png"), ("SegmentationObject", "png")):
            a = np.asarray(Image.open(bench / d / f"{iid}.{ext}"))
            b = np.asarray(Image.open(again / d / f"{iid}.{ext}"))
            assert np.array_equal(a, b), (iid, d)
    other = syn.generate(tmp_path / "other", seed=1, workers=0, progress=False, image_size=160, n_train=4, n_val=0, n_test=0)
    diff = [
        not np.array_equal(load_mask(bench / "SegmentationClass" / f"train_00000{i}.png"), load_mask(other / "SegmentationClass" / f"train_00000{i}.png"))
        for i in range(4)
    ]
    assert all(diff)
    img1, sem1, _, info1 = syn.render(0, "val", 3)
    img2, sem2, _, info2 = syn.render(0, "val", 3)
    assert np.array_equal(img1, img2) and np.array_equal(sem1, sem2) and info1 == info2


def test_emblem_identifies_class(bench):
    """Design check: the class can be read from the emblem tile of the saved JPEG, by nearest
    template (normalised correlation with each class's pattern)."""
    inst = syn.load_instances(bench)
    right = total = 0
    for iid, info in inst.items():
        img = np.asarray(Image.open(bench / "JPEGImages" / f"{iid}.jpg").convert("L"), np.float64)
        for o in info["objects"]:
            if o["part_area"] < o["part_size"] ** 2:
                continue
            x0, y0, x1, y1 = o["part_box"]
            tile = img[y0:y1, x0:x1]
            tile = (tile - tile.mean()) / (tile.std() + 1e-9)
            scores = []
            for k in range(8):
                t = syn.part_pattern(k, o["part_size"])
                t = (t - t.mean()) / (t.std() + 1e-9)
                scores.append((tile * t).mean())
            right += int(np.argmax(scores) == o["class_index"])
            total += 1
    assert total >= 20 and right / total >= 0.9, (right, total)


def test_design_statistics():
    """The benchmark poses the partial-activation problem: small emblems (a few tokens, a small
    fraction of the object), objects of varied scale, some overlap, decoys, all classes used."""
    infos = [syn.render(0, "train", i)[3] for i in range(60)]
    objs = [o for inf in infos for o in inf["objects"]]
    part_frac = np.array([o["part_area"] / o["area"] for o in objs])
    sizes = np.array([o["part_size"] for o in objs])
    areas = np.array([o["area"] for o in objs]) / 160**2
    assert 14 <= sizes.min() and sizes.max() <= 24  # 1-2 tokens a side at patch 16
    assert 0.04 < np.median(part_frac) < 0.15 and part_frac.max() < 0.35
    assert areas.max() / areas.min() > 3  # scale variation
    assert any(o["area"] < o["full_area"] for o in objs)  # some overlap
    assert 0.2 < np.mean([inf["decoys"] > 0 for inf in infos]) < 0.8
    assert len({o["class_index"] for o in objs}) == 8
    assert {len(inf["objects"]) for inf in infos} == {1, 2, 3}
    # the emblem sits towards one end of the body (a head at one end), not at its centre
    off = [
        np.hypot((o["part_box"][0] + o["part_box"][2]) / 2 - o["center"][0], (o["part_box"][1] + o["part_box"][3]) / 2 - o["center"][1])
        / o["radius"]
        for o in objs
    ]
    assert np.median(off) > 0.4, np.median(off)


def test_emblem_patterns_distinct_and_flip_symmetric():
    pats = [syn.part_pattern(k, 20) for k in range(len(syn.PART_PATTERNS))]
    for k, p in enumerate(pats):
        assert p.shape == (20, 20) and 0 <= p.min() and p.max() <= 1
        assert np.abs(p - p[:, ::-1]).max() < 1e-6, syn.PART_PATTERNS[k]  # hflip does not change the class
        for j in range(k):
            assert np.abs(p - pats[j]).mean() > 0.15, (syn.PART_PATTERNS[k], syn.PART_PATTERNS[j])


def test_instances_and_coverage(bench):
    iid = _ids(bench, "train")[0]
    objs = syn.instance_masks(bench, iid)
    K = 8
    perfect = np.zeros((K, 160, 160), np.float32)
    part_only = np.zeros_like(perfect)
    for o in objs:
        perfect[o["class_index"]][o["mask"]] = 1
        part_only[o["class_index"]][o["part_mask"]] = 1
    for o, c in zip(objs, syn.object_coverage(perfect, objs)):
        assert c["coverage"] == 1.0 and c["part_coverage"] == 1.0 and c["body_coverage"] == 1.0
    for o, c in zip(objs, syn.object_coverage(part_only, objs)):
        assert c["part_coverage"] == 1.0 and c["body_coverage"] == 0.0
        assert c["coverage"] == pytest.approx(o["part_area"] / o["area"]) == pytest.approx(c["part_fraction"])
    stats = syn.summarize(bench, "train")
    assert stats["images"] == 16 and 1 <= stats["objects_per_image"] <= 3
    syn.check_consistency(bench)


def test_ensure_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSCAM_DATA_DIR", str(tmp_path / "cache"))
    assert syn.default_root() == tmp_path / "cache"
    small = dict(image_size=96, n_train=3, n_val=1, n_test=1)
    p = syn.ensure(seed=0, workers=0, progress=False, **small)
    assert p.parent == tmp_path / "cache" and syn.spec_hash(syn.spec(0, **small)) in p.name
    assert (p / ".complete").is_file()
    calls = []
    monkeypatch.setattr(syn, "generate", lambda *a, **k: calls.append(1))
    assert syn.ensure(seed=0, workers=0, progress=False, **small) == p and not calls  # cached
    q = syn.ensure(seed=1, workers=0, progress=False, **small)  # another spec: another folder
    assert q != p and calls == [1]
    monkeypatch.undo()
    # an incomplete folder (no marker) is regenerated in place
    (p / ".complete").unlink()
    (p / "junk.txt").write_text("x")
    assert syn.ensure(p.parent, seed=0, workers=0, progress=False, **small) == p
    assert (p / ".complete").is_file() and not (p / "junk.txt").exists()
    assert sorted(x.name for x in p.parent.iterdir() if x.name.startswith(".")) == []


def test_generate_refuses_non_empty_and_bad_spec(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="full"):
        syn.generate(tmp_path / "full", n_train=1, n_val=0, n_test=0, progress=False)
    with pytest.raises(TypeError, match="n_trian"):
        syn.spec(n_trian=3)
    with pytest.raises(ValueError, match="num_classes"):
        syn.spec(num_classes=11)
    with pytest.raises(ValueError, match="image_size"):
        syn.spec(image_size=32)
    assert os.listdir(tmp_path / "full") == ["x"]
