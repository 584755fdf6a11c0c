"""The ``coco`` profile: every pipeline stage on MS COCO through the code paths VOC uses.

Data: an ``instances_train2014.json`` / ``instances_val2014.json`` written from the tests' COCO
subset (tests/coco_fixture.py: real photos at a quarter of their size, YOLO polygons, two crowd
regions in RLE). The run: ``python -m transcam_nb pipeline --profile coco`` with the network and
every stage shrunk by ``--set`` / ``--config`` (a Conformer of width 32, 2 classifier steps, one
AffinityNet epoch, 4 DeepLab iterations) and ``--from-scratch``. The numbers are meaningless; what
is checked is the machinery: 81 classes, crowd regions ignored (255), the label images' values.
"""
import json

import numpy as np
import pytest
from PIL import Image

from coco_fixture import CROWD_BOX, write_instances
from transcam_nb import cli
from transcam_nb.config import get_profile, paths_from_environment

pytest.importorskip("pydensecrf", reason="the CRF stage needs pydensecrf2")

SCALE = 0.25
#: three annotated images (two with a crowd region) and one without annotations, in both splits
IDS = ["000000000030", "000000000049", "000000000061", "000000000250"]
SETS = ["model=transcam_tiny", 'model_overrides={"embed_dim": 32, "num_heads": 2, "channel_ratio": 0.25, "depth": 12}',
        "max_steps=2", "batch_size=2", "crop_size=64", "resize_long=[56,80]", "final_eval=False", "scales=[32,64]",
        "checkpoint_minutes=None", "deterministic=True", "num_workers=0", "threads=1", "device=cpu"]
CONFIG = ["pseudo_limit=null", "val_limit=null",
          'affinity_overrides={"backbone": "resnet18", "crop_size": 64, "radius": 3, "batch_size": 2, "epochs": 1, '
          '"save_every": 2, "num_workers": 0}',
          'seg_overrides={"backbone": "resnet18", "freeze_bn": False, "freeze_stem": False, "iters": 4, "batch": 2, '
          '"crop": 48, "test_scales": [1.0], "test_crf": False, "ckpt_every": 2, "log_every": 1, "workers": 0, '
          '"amp": False}']


def _argv(root, out, *extra):
    argv = ["pipeline", "--profile", "coco", "--data-root", str(root), "--out", str(out), "--classifier", "train",
            "--from-scratch", "--no-progress", *extra]
    for s in SETS:
        argv += ["--set", s]
    for c in CONFIG:
        argv += ["--config", c]
    return argv


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    info = {s: write_instances(root, year=2014, split=s, ids=IDS, scale=SCALE) for s in ("train", "val")}
    return root, info


@pytest.fixture(scope="module")
def coco_run(coco_root, tmp_path_factory):
    root, _ = coco_root
    out = tmp_path_factory.mktemp("run")
    assert cli.main(_argv(root, out)) == 0
    return out


def _dataset(root, split):
    from transcam_nb.data.roots import build_dataset

    return build_dataset(get_profile("coco", data_root=str(root)), split, "infer")


def test_profile_is_the_paper_on_coco():
    coco, paper = get_profile("coco"), get_profile("paper")
    assert (coco.dataset, coco.train_split, coco.val_split, coco.num_fg) == ("coco", "train2014", "val2014", 80)
    same = {k: v for k, v in coco.to_dict().items()
            if k not in ("name", "dataset", "train_split", "eval_split", "val_split", "num_fg")}
    assert same == {k: paper.to_dict()[k] for k in same}  # the paper's classifier settings
    assert paths_from_environment("coco", {"TRANSCAM_COCO_ROOT": "/c", "TRANSCAM_VOC_ROOT": "/v"}) == {"data_root": "/c"}
    assert paths_from_environment("paper", {"TRANSCAM_COCO_ROOT": "/c"}) == {}


def test_datasets_dispatch_on_the_profile(coco_root, tmp_path):
    from transcam_nb.data import COCODataset
    from transcam_nb.data.roots import build_eval_dataset, build_train_dataset

    root, info = coco_root
    prof = get_profile("coco", data_root=str(root), crop_size=64, resize_long=(56, 80))
    ds = build_train_dataset(prof)
    assert isinstance(ds, COCODataset) and ds.split == "train2014" and len(ds) == 3  # 000000000250: no annotation
    x, y = ds[0]
    assert tuple(x.shape) == (3, 64, 64) and tuple(y.shape) == (80,)
    val = _dataset(root, "val2014")
    assert val.ids[0].startswith("COCO_val2014_") and val.image_dir == root / "val2014"
    assert tuple(build_eval_dataset(prof, size=32)[0][0].shape) == (3, 32, 32)
    from transcam_nb import workflow

    assert workflow.eval_dataset(prof).ids == val.ids  # the book's helper reads the same dataset
    # the 2017 file names: the same images under their 2017 names
    write_instances(tmp_path, year=2017, split="train", ids=IDS, scale=SCALE)
    d17 = build_train_dataset(prof.replace(data_root=str(tmp_path), train_split="train2017"))
    assert d17.ids == [i[len("COCO_train2014_"):] for i in ds.ids]
    np.testing.assert_array_equal(d17.labels(), ds.labels())


def test_pipeline_runs_every_stage_with_81_classes(coco_run, coco_root):
    root, info = coco_root
    out = coco_run
    summary = json.loads((out / "summary.json").read_text())
    for key in ("cam", "transcam", "random_walk", "random_walk_crf", "deeplab_val"):
        assert 0.0 <= summary[key] <= 100.0, key
    assert set(summary["details"]["status"].values()) == {"ran"}
    cams = json.loads((out / "cams" / "DONE.json").read_text())["result"]
    assert len(cams["class_names"]) == 81 and cams["class_names"][:2] == ["background", "person"]
    assert len(cams["transcam"]["iou"]) == 81
    seg = json.loads((out / "segment" / "DONE.json").read_text())["result"]
    assert len(seg["deeplab_val"]["iou"]) == 81 and seg["num_val"] == 3

    train = _dataset(root, "train2014")
    assert sorted(p.stem for p in (out / "cams" / "transcam").glob("*.npz")) == sorted(train.ids)
    for k, iid in enumerate(train.ids):
        allowed = {0, 255} | {int(c) + 1 for c in np.flatnonzero(train.label(k))}
        for folder in ("crf/la", "crf/ha", "randomwalk/rw", "randomwalk/rw_crf"):
            lab = np.asarray(Image.open(out / folder / f"{iid}.png"))
            assert lab.shape == train.mask(k).shape, (folder, iid)
            assert set(np.unique(lab).tolist()) <= allowed, (folder, iid)  # COCO's 1..80 of the image's classes
    val = _dataset(root, "val2014")
    for iid in val.ids:
        pred = np.asarray(Image.open(out / "segment" / "val_pred" / f"{iid}.png"))
        assert pred.max() <= 80


def test_crowd_regions_are_ignored_in_the_scores(coco_run, coco_root):
    """The random-walk mIoU recomputed here over 81 classes from the PNGs and the masks, with the
    crowd pixels (255) left out, equals the stored one."""
    root, _ = coco_root
    out = coco_run
    train = _dataset(root, "train2014")
    crowd_ids = [f"COCO_train2014_{i}" for i in CROWD_BOX]
    tp, p, t = np.zeros(81), np.zeros(81), np.zeros(81)
    for k, iid in enumerate(train.ids):
        gt = train.mask(k)
        assert ((gt == 255).sum() > 100) == (iid in crowd_ids), iid
        pred = np.asarray(Image.open(out / "randomwalk" / "rw_crf" / f"{iid}.png"))
        ok = gt != 255
        for c in range(81):
            tp[c] += np.sum((pred == c) & (gt == c) & ok)
            p[c] += np.sum((pred == c) & ok)
            t[c] += np.sum((gt == c) & ok)
    miou = np.mean(tp / np.maximum(t + p - tp, 1)) * 100
    summary = json.loads((out / "summary.json").read_text())
    assert summary["random_walk_crf"] == pytest.approx(miou, abs=1e-3)


def _fails_with_one_line(argv, capsys, *words):
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert e.value.code == 2 and "Traceback" not in err, err
    assert len(lines) == 1, lines
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def test_wrong_coco_root_is_one_line(coco_root, tmp_path, capsys, monkeypatch):
    root, _ = coco_root
    monkeypatch.delenv("TRANSCAM_COCO_ROOT", raising=False)
    # a folder that is not COCO (no annotations/instances_*.json), and one that does not exist
    _fails_with_one_line(_argv(tmp_path, tmp_path / "o1"), capsys, str(tmp_path), "annotations/instances_train2014.json",
                         "--data-root")
    _fails_with_one_line(_argv(tmp_path / "nope", tmp_path / "o2"), capsys, "nope", "does not exist", "--data-root")
    assert not (tmp_path / "o1" / "classifier").exists()  # refused before any work
    # no root at all: the flag and the variable are named
    argv = [a for a in _argv(root, tmp_path / "o3") if a not in ("--data-root", str(root))]
    _fails_with_one_line(argv, capsys, "has no data_root", "--data-root", "TRANSCAM_COCO_ROOT")
    # the cams command reads the same profile
    _fails_with_one_line(["cams", "--profile", "coco", "--checkpoint", str(tmp_path / "x.pt"), "--data-root",
                          str(tmp_path), "--split", "val2014", "--out", str(tmp_path / "o4")], capsys,
                         "annotations/instances_train2014.json")


def test_cams_and_evaluate_commands_on_coco(coco_run, coco_root, tmp_path, capsys):
    """``cams`` with ``--profile coco`` reads a COCO split; ``evaluate`` scores it over 81 classes
    with the crowd ignored, and gives the pipeline's number for the pipeline's CAMs."""
    root, _ = coco_root
    out = coco_run
    ckpt = json.loads((out / "classifier" / "DONE.json").read_text())["result"]["checkpoint"]
    model = ["--model", "transcam_tiny", "--model-arg", "embed_dim=32", "--model-arg", "num_heads=2",
             "--model-arg", "channel_ratio=0.25"]
    assert cli.main(["cams", "--profile", "coco", "--checkpoint", ckpt, *model, "--data-root", str(root),
                     "--split", "val2014", "--out", str(tmp_path), "--scales", "32", "--no-flip", "--threads", "1",
                     "--no-progress"]) == 0
    val = _dataset(root, "val2014")
    assert sorted(p.stem for p in (tmp_path / "cams" / "transcam").glob("*.npz")) == sorted(val.ids)
    capsys.readouterr()
    res = tmp_path / "eval.json"
    assert cli.main(["evaluate", "--profile", "coco", "--pred-dir", str(out / "cams" / "transcam"), "--data-root",
                     str(root), "--split", "train2014", "--json", str(res), "--no-progress"]) == 0
    got = json.loads(res.read_text())
    assert len(got["per_class"]["iou"]) == 81
    summary = json.loads((out / "summary.json").read_text())
    assert 100 * got["miou_fixed_tau"] == pytest.approx(summary["transcam"], abs=1e-3)
