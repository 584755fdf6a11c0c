"""The headless `cams` / `evaluate` stages: resume after a kill, shards, metric, errors."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transcam_nb.cli import main, parse_shard

REPO = Path(__file__).resolve().parents[1]
N_IMAGES = 8
MODEL_ARGS = ["--model", "transcam_tiny", "--model-arg", "embed_dim=32", "--model-arg", "num_heads=2",
              "--model-arg", "channel_ratio=0.25"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A VOC-layout folder with small images and masks, and a tiny checkpoint."""
    root = tmp_path_factory.mktemp("voc")
    (root / "JPEGImages").mkdir()
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = []
    for i in range(N_IMAGES):
        h, w = (40, 56) if i % 2 else (52, 36)
        y, x = np.mgrid[0:h, 0:w]
        img = (127 + 90 * np.stack([np.sin(x / (4 + i)), np.cos(y / 5.0), np.sin((x + y) / 7.0)], -1)
               + rng.normal(0, 8, (h, w, 3))).clip(0, 255).astype(np.uint8)
        mask = np.zeros((h, w), np.uint8)
        for c in rng.choice(np.arange(1, 21), size=2, replace=False):
            y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
            mask[y0:y0 + h // 2, x0:x0 + w // 2] = c
        mask[0, :] = 255
        iid = f"2000_{i:06d}"
        Image.fromarray(img).save(root / "JPEGImages" / f"{iid}.jpg", quality=95)
        m = Image.fromarray(mask)
        m.save(root / "SegmentationClass" / f"{iid}.png")
        ids.append(iid)
    (root / "ImageSets" / "Segmentation" / "mini.txt").write_text("\n".join(ids) + "\n")
    from transcam_nb.models import create_model

    torch.manual_seed(0)
    model = create_model("transcam_tiny", num_classes=21, embed_dim=32, num_heads=2, channel_ratio=0.25,
                         drop_path_rate=0.0)
    ckpt = root.parent / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    return root, ckpt, ids


def _cams_argv(root, ckpt, out, *extra):
    return ["cams", "--checkpoint", str(ckpt), *MODEL_ARGS, "--data-root", str(root), "--split", "mini",
            "--out", str(out), "--scales", "32,48", "--threads", "1", "--no-progress", *extra]


def _files(out: Path):
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))


def _assert_same_outputs(a: Path, b: Path, ids):
    def outputs(d):  # the CAMs and labels; not the bookkeeping (config.json, each shard's report)
        return [f for f in _files(d) if f != "cams/config.json" and not f.startswith("cams/report")]

    fa = outputs(a)
    assert fa == outputs(b)
    assert len([f for f in fa if f.startswith("cams/transcam/")]) == len(ids)
    for f in fa:
        if f.endswith(".npz"):
            with np.load(a / f) as za, np.load(b / f) as zb:
                assert set(za.files) == set(zb.files)
                for k in za.files:
                    np.testing.assert_array_equal(za[k], zb[k], err_msg=f"{f}:{k}")
        elif f.endswith(".png"):
            np.testing.assert_array_equal(np.asarray(Image.open(a / f)), np.asarray(Image.open(b / f)), err_msg=f)


@pytest.fixture(scope="module")
def reference_run(setup, tmp_path_factory):
    root, ckpt, ids = setup
    out = tmp_path_factory.mktemp("out_ref")
    assert main(_cams_argv(root, ckpt, out)) == 0
    return out


def test_outputs_layout(reference_run, setup):
    root, ckpt, ids = setup
    out = reference_run
    files = _files(out)
    for iid in ids:
        assert f"cams/transcam/{iid}.npz" in files  # the pipeline's cams layout
        assert f"labels_t0.25/{iid}.png" in files and f"labels_t0.60/{iid}.png" in files
    cfg = json.loads((out / "cams" / "config.json").read_text())
    assert cfg["stage"] == "cams" and cfg["spec"]["scales"] == [32, 48] and cfg["spec"]["method"] == "transcam"
    # the CAMs cover the labelled classes at the original size; labels follow Eq. 8
    from transcam_nb.pseudo import label_map, load_cams

    cams, classes = load_cams(out / "cams" / "transcam" / f"{ids[1]}.npz")
    mask = np.asarray(Image.open(root / "SegmentationClass" / f"{ids[1]}.png"))
    assert cams.shape[1:] == mask.shape
    assert set((classes + 1).tolist()) == set(np.unique(mask).tolist()) - {0, 255}
    lab = np.asarray(Image.open(out / "labels_t0.25" / f"{ids[1]}.png"))
    np.testing.assert_array_equal(lab, label_map(cams, classes, 0.25))


def test_killed_run_resumes_to_identical_outputs(setup, reference_run, tmp_path):
    root, ckpt, ids = setup
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "transcam_nb", *_cams_argv(root, ckpt, out, "--sleep", "0.4")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            n = len(list((out / "cams" / "transcam").glob("*.npz"))) if (out / "cams" / "transcam").is_dir() else 0
            if n >= 2 or proc.poll() is not None:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done_before = len(list((out / "cams" / "transcam").glob("*.npz")))
    assert 2 <= done_before < N_IMAGES
    # re-run: finishes the rest, skipping what is done
    assert main(_cams_argv(root, ckpt, out)) == 0
    _assert_same_outputs(out, reference_run, ids)


def test_labels_regenerated_from_cam_file(setup, reference_run, tmp_path):
    """Killed between the CAM file and its PNGs: the re-run rebuilds the PNG from the CAM file."""
    import shutil

    root, ckpt, ids = setup
    out = tmp_path / "out"
    shutil.copytree(reference_run, out)
    (out / "labels_t0.60" / f"{ids[3]}.png").unlink()
    before = (out / "cams" / "transcam" / f"{ids[3]}.npz").stat().st_mtime_ns
    assert main(_cams_argv(root, ckpt, out)) == 0
    assert (out / "cams" / "transcam" / f"{ids[3]}.npz").stat().st_mtime_ns == before
    _assert_same_outputs(out, reference_run, ids)


def test_shards_cover_the_list(setup, reference_run, tmp_path, monkeypatch):
    root, ckpt, ids = setup
    out = tmp_path / "out"
    assert main(_cams_argv(root, ckpt, out, "--shard", "1/3")) == 0
    assert len(list((out / "cams" / "transcam").glob("*.npz"))) == len(ids[1::3])
    # torchrun-style environment selects the shard
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    assert main(_cams_argv(root, ckpt, out)) == 0
    monkeypatch.setenv("RANK", "2")
    assert main(_cams_argv(root, ckpt, out)) == 0
    _assert_same_outputs(out, reference_run, ids)


def test_parse_shard():
    assert parse_shard("2/4", env={}) == (2, 4)
    assert parse_shard(None, env={"WORLD_SIZE": "8", "RANK": "5"}) == (5, 8)
    assert parse_shard(None, env={}) == (0, 1)
    with pytest.raises(SystemExit):
        parse_shard("4/4", env={})
    with pytest.raises(SystemExit):
        parse_shard("x", env={})


def test_changed_config_is_refused(setup, reference_run):
    root, ckpt, ids = setup
    with pytest.raises(SystemExit, match="another configuration"):
        main(_cams_argv(root, ckpt, reference_run, "--method", "attnagg"))


def _independent_miou(cam_dir: Path, mask_dir: Path, ids, tau):
    """evaluation.py's npy-mode metric, written here from scratch on the stored files."""
    P = np.zeros(21)
    T = np.zeros(21)
    TP = np.zeros(21)
    for iid in ids:
        z = np.load(cam_dir / f"{iid}.npz")
        gt = np.asarray(Image.open(mask_dir / f"{iid}.png"))
        score = np.zeros((21, *gt.shape), np.float32)
        score[0] = tau
        for k, c in zip(z["classes"], z["cams"]):
            score[k + 1] = c
        pred = score.argmax(0)
        cal = gt < 255
        for i in range(21):
            P[i] += np.sum((pred == i) & cal)
            T[i] += np.sum((gt == i) & cal)
            TP[i] += np.sum((gt == i) & (pred == i) & cal)
    iou = TP / (T + P - TP + 1e-10)
    return iou.mean()


def test_evaluate_against_independent_metric(setup, reference_run, tmp_path, capsys):
    root, ckpt, ids = setup
    js = tmp_path / "eval.json"
    argv = ["evaluate", "--pred-dir", str(reference_run / "cams" / "transcam"), "--data-root", str(root), "--split", "mini",
            "--fixed-tau", "0.25", "--sweep", "--json", str(js), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "tvmonitor" in printed and "best τ" in printed and "fixed τ = 0.25" in printed
    res = json.loads(js.read_text())
    expected = _independent_miou(reference_run / "cams" / "transcam", root / "SegmentationClass", ids, 0.25)
    assert res["miou_fixed_tau"] == pytest.approx(expected, abs=1e-12)
    assert len(res["curve"]) == 91  # metrics.DEFAULT_THRESHOLDS: 0.00 ... 0.90
    t_best = res["best_tau"]
    assert res["best_miou"] == pytest.approx(_independent_miou(reference_run / "cams" / "transcam", root / "SegmentationClass",
                                                               ids, t_best), abs=1e-12)
    assert res["best_miou"] == pytest.approx(max(res["curve"].values()))
    # the label PNGs written by `cams` evaluate to the same number
    js2 = tmp_path / "eval_png.json"
    assert main(["evaluate", "--pred-dir", str(reference_run / "labels_t0.25"), "--gt-dir",
                 str(root / "SegmentationClass"), "--list", str(root / "ImageSets/Segmentation/mini.txt"),
                 "--json", str(js2), "--no-progress"]) == 0
    assert json.loads(js2.read_text())["miou"] == pytest.approx(expected, abs=1e-12)


def test_evaluate_missing_predictions(setup, reference_run, tmp_path):
    import shutil

    root, ckpt, ids = setup
    pred = tmp_path / "cams"
    shutil.copytree(reference_run / "cams" / "transcam", pred)
    (pred / f"{ids[0]}.npz").unlink()
    argv = ["evaluate", "--pred-dir", str(pred), "--data-root", str(root), "--split", "mini", "--no-progress"]
    with pytest.raises(SystemExit, match="1 of 8 images have no prediction"):
        main(argv)
    assert main(argv + ["--allow-missing"]) == 0
