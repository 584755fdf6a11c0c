"""transcam_nb.pseudo (Eq. 7-8, files) and transcam_nb.artifacts (atomic writes, cached)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from transcam_nb import artifacts
from transcam_nb.pseudo import (
    foreground_argmax,
    label_map,
    load_cams,
    load_label_png,
    save_cams,
    save_label_png,
    score_tensor,
    voc_palette,
)


# --------------------------------------------------------------------------- Eq. 7-8
def test_label_map_by_hand():
    # two present classes, 0-based 2 (label 3) and 14 (label 15), on a 1x4 image
    cams = np.array([[[0.9, 0.1, 0.5, 0.3]],
                     [[0.2, 0.8, 0.5, 0.1]]], np.float32)
    lab = label_map(cams, [2, 14], tau=0.4)
    # pixel 0: class 2 -> 3; pixel 1: class 14 -> 15; pixel 2: tie between the two -> lower (3);
    # pixel 3: both below tau -> background
    assert lab.tolist() == [[3, 15, 3, 0]]
    assert lab.dtype == np.uint8
    assert label_map(cams, [2, 14], tau=0.95).tolist() == [[0, 0, 0, 0]]


def test_tie_with_tau_goes_to_background_and_absent_classes_lose():
    cams = np.array([[[0.25, 0.26]]], np.float32)
    assert label_map(cams, [5], 0.25).tolist() == [[0, 6]]
    # tiny negative values (the reference's zeroed pixels) and absent classes (score 0) at tau 0
    cams = np.array([[[-1e-5, 0.0, 0.1]]], np.float32)
    assert label_map(cams, [7], 0.0).tolist() == [[0, 0, 8]]


def test_score_tensor_layout_and_no_cam():
    cams = np.ones((1, 2, 3), np.float32)
    s = score_tensor(cams, [19], 0.3)
    assert s.shape == (21, 2, 3) and s.dtype == np.float32
    assert np.all(s[0] == np.float32(0.3)) and np.all(s[20] == 1) and np.all(s[1:20] == 0)
    lab = label_map(np.zeros((0, 2, 3), np.float32), [], 0.25, shape=(2, 3))
    assert lab.shape == (2, 3) and not lab.any()


def test_foreground_argmax_matches_label_map():
    rng = np.random.default_rng(0)
    cams = rng.random((3, 5, 6)).astype(np.float32)
    classes = [1, 4, 19]
    mx, arg = foreground_argmax(cams, classes)
    for tau in (0.0, 0.2, 0.5, 0.9):
        np.testing.assert_array_equal(np.where(mx > np.float32(tau), arg, 0), label_map(cams, classes, tau))


def test_label_map_accepts_torch():
    import torch

    cams = torch.tensor([[[0.1, 0.7]]])
    assert label_map(cams, torch.tensor([0]), 0.5).tolist() == [[0, 1]]


def test_label_map_errors():
    with pytest.raises(ValueError, match="class indices"):
        label_map(np.zeros((1, 2, 2), np.float32), [20], 0.3)
    with pytest.raises(ValueError, match="2 CAMs but 1"):
        label_map(np.zeros((2, 2, 2), np.float32), [1], 0.3)
    with pytest.raises(ValueError, match="duplicates"):
        label_map(np.zeros((2, 2, 2), np.float32), [1, 1], 0.3)


# --------------------------------------------------------------------------- files
def test_voc_palette_known_colours():
    pal = voc_palette()
    col = lambda i: tuple(pal[3 * i: 3 * i + 3])
    assert len(pal) == 768
    assert col(0) == (0, 0, 0)
    assert col(1) == (128, 0, 0)  # aeroplane
    assert col(2) == (0, 128, 0)  # bicycle
    assert col(15) == (192, 128, 128)  # person
    assert col(20) == (0, 64, 128)  # tvmonitor
    assert col(255) == (224, 224, 192)  # ignore / boundary


def test_label_png_roundtrip(tmp_path):
    lab = np.array([[0, 1, 15], [20, 255, 3]], np.uint8)
    p = save_label_png(tmp_path / "sub" / "a.png", lab)
    with Image.open(p) as im:
        assert im.mode == "P"
        assert tuple(im.getpalette()[45:48]) == (192, 128, 128)
    np.testing.assert_array_equal(load_label_png(p), lab)
    np.testing.assert_array_equal(np.asarray(Image.open(p)), lab)
    p2 = save_label_png(tmp_path / "b.png", lab, palette=False)
    assert Image.open(p2).mode == "L"
    np.testing.assert_array_equal(load_label_png(p2), lab)
    assert sorted(os.listdir(tmp_path)) == ["b.png", "sub"]  # no temp files left
    with pytest.raises(ValueError, match="0..255"):
        save_label_png(tmp_path / "c.png", np.array([[300]]))


def test_real_voc_mask_reads_back(shared):
    p = shared("data", "voc2012_sample", "VOCdevkit", "VOC2012", "SegmentationClass", "2007_001763.png")
    m = load_label_png(p)
    assert m.dtype == np.uint8 and m.shape == (375, 500)
    assert set(np.unique(m)) <= set(range(21)) | {255}


def test_cam_npz_roundtrip_and_meta(tmp_path):
    rng = np.random.default_rng(1)
    cams = rng.random((2, 4, 5)).astype(np.float32)
    p = save_cams(tmp_path / "x.npz", cams, [3, 11], meta={"method": "transcam", "scales": [64, 128]})
    c2, k2, meta = load_cams(p, with_meta=True)
    np.testing.assert_array_equal(c2, cams)
    assert k2.tolist() == [3, 11] and k2.dtype == np.int64
    assert meta == {"method": "transcam", "scales": [64, 128]}
    with np.load(p, allow_pickle=False) as z:  # readable without pickles
        assert z["size_hw"].tolist() == [4, 5]
    # float16 storage
    p16 = save_cams(tmp_path / "h.npz", cams, [3, 11], dtype=np.float16)
    c16, _ = load_cams(p16)
    assert c16.dtype == np.float32
    np.testing.assert_allclose(c16, cams, atol=1e-3)
    # empty
    pe = save_cams(tmp_path / "e.npz", np.zeros((0, 4, 5), np.float32), [])
    ce, ke = load_cams(pe)
    assert ce.shape == (0, 4, 5) and ke.size == 0
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]


def test_reads_authors_dict_npy_only_with_opt_in(tmp_path):
    d = {11: np.full((3, 4), 0.5, np.float32), 2: np.zeros((3, 4), np.float32)}
    p = tmp_path / "2007_000032.npy"
    np.save(p, d)  # the authors' out_cam format: a pickled dict
    with pytest.raises(ValueError, match="allow_pickle=True"):
        load_cams(p)
    cams, classes = load_cams(p, allow_pickle=True)
    assert classes.tolist() == [2, 11]
    np.testing.assert_array_equal(cams[1], d[11])


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_cams(tmp_path / "nope.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="lacks"):
        load_cams(tmp_path / "other.npz")
    with pytest.raises(ValueError, match=".npz"):
        save_cams(tmp_path / "x.npy", np.zeros((0, 1, 1)), [])


# --------------------------------------------------------------------------- artifacts
def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with artifacts.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]
    with artifacts.atomic_write(target, "w") as f:
        f.write("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["out.bin"]


def test_cached_computes_once_and_recomputes_on_config_change(tmp_path, capsys):
    calls = []

    def compute():
        calls.append(1)
        return {"x": np.arange(3) * len(calls)}

    p = tmp_path / "a.npz"
    v1 = artifacts.cached(p, {"lr": 1e-3}, compute)
    v2 = artifacts.cached(p, {"lr": 1e-3}, compute)
    assert len(calls) == 1
    np.testing.assert_array_equal(v1["x"], v2["x"])
    man = json.loads((tmp_path / "a.npz.manifest.json").read_text())
    assert man["config"] == {"lr": 0.001} and man["config_hash"] == artifacts.config_hash({"lr": 1e-3})
    v3 = artifacts.cached(p, {"lr": 1e-2}, compute)
    assert len(calls) == 2 and v3["x"].tolist() == [0, 2, 4]
    artifacts.cached(p, {"lr": 1e-2}, compute, force=True)
    assert len(calls) == 3


def test_cached_writer_function_and_folder(tmp_path):
    def write_file(tmp):
        tmp.write_text("hello")

    out = artifacts.cached(tmp_path / "t.txt", {"a": 1}, write_file, verbose=False)
    assert out == tmp_path / "t.txt" and out.read_text() == "hello"

    n = []

    def write_dir(tmp):
        n.append(1)
        (tmp / "part0.txt").write_text("0")

    d = artifacts.cached(tmp_path / "stage", {"b": 2}, write_dir, verbose=False)
    d = artifacts.cached(tmp_path / "stage", {"b": 2}, write_dir, verbose=False)
    assert len(n) == 1 and (d / "part0.txt").read_text() == "0"
    artifacts.cached(tmp_path / "stage", {"b": 3}, write_dir, verbose=False)
    assert len(n) == 2 and (tmp_path / "stage" / "part0.txt").exists()
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]

    # a failed compute leaves no artifact and no manifest
    def boom(tmp):
        raise RuntimeError("fail")

    with pytest.raises(RuntimeError):
        artifacts.cached(tmp_path / "z.npz", {}, boom, verbose=False)
    assert not (tmp_path / "z.npz").exists() and not (tmp_path / "z.npz.manifest.json").exists()
