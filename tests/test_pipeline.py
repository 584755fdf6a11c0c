"""The whole pipeline on a miniature synthetic benchmark: every stage runs, summary.json
holds every stage's mIoU in percent, an interrupted run resumes and ends with the outputs of an
uninterrupted one, shards split the per-image stages, and the command line drives it.

Miniature: 16 train / 8 val images of 64 px with 4 classes, a Conformer of width 32 with 2
heads, 2 classifier steps, 4 AffinityNet steps (radius 3, so a 64 px crop has pairs), 4 DeepLab
iterations. The numbers themselves are meaningless; what is checked is the machinery.
"""
import filecmp
import json
from pathlib import Path

import numpy as np
import pytest

from transcam_nb import pipeline
from transcam_nb.data import synthetic
from transcam_nb.config import get_profile

pytest.importorskip("pydensecrf", reason="the CRF stage needs pydensecrf2")

MINI = dict(image_size=64, n_train=16, n_val=8, n_test=0, num_classes=4)


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = synthetic.ensure(tmp_path_factory.mktemp("data"), seed=0, workers=0, progress=False, **MINI)
    prof = get_profile(
        "tiny", data_root=str(root), num_fg=4, synthetic=None, init_checkpoint=None,
        model_overrides=dict(embed_dim=32, num_heads=2, channel_ratio=0.25, depth=12),
        max_steps=2, batch_size=4, crop_size=64, resize_long=(56, 80), final_eval=False, scales=(32, 64),
        checkpoint_minutes=None, deterministic=True, threads=1, device="cpu",
    )
    cfg = pipeline.pipeline_config(
        prof, classifier="train", pseudo_limit=None, val_limit=None,
        affinity_overrides=dict(crop_size=64, radius=3, batch_size=4, epochs=1, save_every=2),
        seg_overrides=dict(iters=4, batch=2, crop=48, test_scales=(1.0,), ckpt_every=2, log_every=1),
    )
    return root, prof, cfg


@pytest.fixture(scope="module")
def full_run(mini, tmp_path_factory):
    _, prof, cfg = mini
    out = tmp_path_factory.mktemp("runA")
    summary = pipeline.run_pipeline(prof, out, config=cfg, progress=False)
    return out, summary


def _outputs(out: Path) -> list[str]:
    keep = (".png", ".npz")
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.suffix in keep)


def _same_outputs(a: Path, b: Path) -> None:
    fa, fb = _outputs(a), _outputs(b)
    assert fa == fb
    for rel in fa:
        if rel.endswith(".npz"):
            with np.load(a / rel) as za, np.load(b / rel) as zb:
                for k in za.files:
                    np.testing.assert_array_equal(za[k], zb[k], err_msg=rel)
        else:
            assert filecmp.cmp(a / rel, b / rel, shallow=False), rel


def test_summary_has_every_stage_in_percent(full_run, mini):
    root, prof, cfg = mini
    out, summary = full_run
    on_disk = json.loads((out / "summary.json").read_text())
    for key in ("cam", "transcam", "random_walk", "random_walk_crf", "deeplab_val"):
        assert key in on_disk, key
        assert 0.0 <= on_disk[key] <= 100.0, (key, on_disk[key])
    assert all(v == "ran" for v in on_disk["details"]["status"].values())
    for st in pipeline.STAGES:
        assert (out / st / "DONE.json").is_file(), st
    ids = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    assert len(list((out / "cams" / "transcam").glob("*.npz"))) == len(ids) == 16
    assert len(list((out / "randomwalk" / "rw_crf").glob("*.png"))) == 16
    assert len(list((out / "segment" / "val_pred").glob("*.png"))) == 8


def test_random_walk_miou_recomputed_independently(full_run, mini):
    """The stored random-walk mIoU equals one recomputed here from the PNGs and the masks
    (reference formula: dataset-level counts, mean over all K+1 classes)."""
    from PIL import Image

    root, _, _ = mini
    out, summary = full_run
    K1 = MINI["num_classes"] + 1
    tp = np.zeros(K1)
    p = np.zeros(K1)
    t = np.zeros(K1)
    for png in (out / "randomwalk" / "rw_crf").glob("*.png"):
        pred = np.asarray(Image.open(png))
        gt = np.asarray(Image.open(root / "SegmentationClass" / png.name))
        ok = gt != 255
        for c in range(K1):
            tp[c] += np.sum((pred == c) & (gt == c) & ok)
            p[c] += np.sum((pred == c) & ok)
            t[c] += np.sum((gt == c) & ok)
    miou = np.mean(tp / (t + p - tp + 1e-10)) * 100
    assert summary["random_walk_crf"] == pytest.approx(miou, abs=1e-3)


def test_finished_run_is_skipped(full_run, mini):
    _, prof, cfg = mini
    out, summary = full_run
    again = pipeline.run_pipeline(prof, out, config=cfg, progress=False)
    assert set(again["details"]["status"].values()) == {"skipped"}
    for key in pipeline.SUMMARY_KEYS:
        assert again[key] == summary[key]


def test_interrupted_run_resumes_to_the_same_outputs(full_run, mini, tmp_path, monkeypatch):
    _, prof, cfg = mini
    ref, ref_summary = full_run
    out = tmp_path / "runB"
    from transcam_nb.postprocess import crf as crf_mod

    real = crf_mod.make_la_ha_labels
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt("simulated interruption in the crf stage")
        return real(*a, **k)

    monkeypatch.setattr(crf_mod, "make_la_ha_labels", flaky)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_pipeline(prof, out, config=cfg, progress=False)
    assert (out / "cams" / "DONE.json").is_file()
    assert not (out / "crf" / "DONE.json").exists()
    assert len(list((out / "crf" / "la").glob("*.png"))) == 5
    assert not list((out / "crf" / "la").glob(".*"))  # no temporary file left behind

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    calls["n"] = 0
    monkeypatch.setattr(crf_mod, "make_la_ha_labels", counting)
    summary = pipeline.run_pipeline(prof, out, config=cfg, progress=False)
    st = summary["details"]["status"]
    assert st["classifier"] == st["cams"] == "skipped"
    assert st["crf"] == st["affinity"] == st["randomwalk"] == st["segment"] == "ran"
    assert calls["n"] == 16 - 5  # only the images the interrupted run had not written
    _same_outputs(ref, out)
    for key in pipeline.SUMMARY_KEYS:
        assert summary[key] == ref_summary[key], key


def test_shards_split_the_per_image_stages(full_run, mini, tmp_path):
    _, prof, cfg = mini
    ref, _ = full_run
    out = tmp_path / "runS"
    stages = ["classifier", "cams", "crf"]
    s0 = pipeline.run_pipeline(prof, out, stages, config=cfg, shard=(0, 2), progress=False)
    assert s0["details"]["status"]["cams"] == "waiting for other shards"
    assert len(list((out / "cams" / "transcam").glob("*.npz"))) == 8
    s1 = pipeline.run_pipeline(prof, out, stages, config=cfg, shard=(1, 2), progress=False)
    assert s1["details"]["status"]["cams"] == "ran"  # completed by the last shard to finish
    assert s1["details"]["status"]["crf"] == "waiting for other shards"
    s0 = pipeline.run_pipeline(prof, out, stages, config=cfg, shard=(0, 2), progress=False)
    assert s0["details"]["status"]["crf"] == "ran"
    for sub in ("cams", "crf"):
        _same_outputs(ref / sub, out / sub)


def test_changed_settings_are_refused(full_run, mini):
    """A finished stage is not silently reused (nor mixed) when its settings changed."""
    _, prof, cfg = mini
    out, _ = full_run
    ctx = pipeline.PipelineContext(prof.replace(crf_thresholds=(0.5, 0.2)), cfg, out, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        pipeline.run_stage(ctx, "crf")


def test_results_table_and_example(full_run, mini):
    root, prof, _ = mini
    out, summary = full_run
    df = pipeline.results_table(out)
    names = ["background"] + (root / "classes.txt").read_text().split()
    assert list(df.columns) == names + ["mIoU", "images"]
    assert list(df.index) == ["CAM", "TransCAM", "+ random walk", "+ random walk + CRF", "DeepLab"]
    assert df.loc["DeepLab", "mIoU"] == summary["deeplab_val"]
    np.testing.assert_allclose(df[names].mean(axis=1).to_numpy(dtype=float), df["mIoU"].to_numpy(dtype=float),
                               atol=1e-3)
    iid = (root / "ImageSets/Segmentation/train.txt").read_text().split()[0]
    ex = pipeline.load_example(out, iid, prof)
    assert ex["image"].shape == (64, 64, 3)
    for k in ("gt", "argmax_la", "argmax_ha", "la", "ha", "affinity_label", "rw", "rw_crf"):
        assert ex[k].shape == (64, 64), k
    assert pipeline.read_deeplab_log(out)["iteration"].max() == 4
    assert len(pipeline.read_affinity_history(out)) == 4


def test_cli_pipeline_and_stage_commands(full_run, mini, capsys):
    from transcam_nb import cli

    root, prof, cfg = mini
    out, summary = full_run
    parser = cli.build_parser()
    for name in ("pipeline", "crf", "affinity", "randomwalk", "segment"):
        assert name in cli.STAGES
    args = parser.parse_args(["crf", "--out", str(out), "--shard", "1/2"])
    assert args.pipeline_stage == "crf"
    # the finished run, driven from the command line with the same settings: everything skipped
    sets = [f"data_root={root}", "num_fg=4", "synthetic=None", "init_checkpoint=None", "max_steps=2", "batch_size=4",
            "crop_size=64", "resize_long=[56,80]", "final_eval=False", "scales=[32,64]", "checkpoint_minutes=None",
            "deterministic=True", "device=cpu",
            'model_overrides={"embed_dim": 32, "num_heads": 2, "channel_ratio": 0.25, "depth": 12}']
    argv = ["pipeline", "--profile", "tiny", "--out", str(out), "--classifier", "train", "--no-progress"]
    for s in sets:
        argv += ["--set", s]
    argv += ["--config", "pseudo_limit=null", "--config", "val_limit=null",
             "--config", 'affinity_overrides={"crop_size": 64, "radius": 3, "batch_size": 4, "epochs": 1, "save_every": 2}',
             "--config", 'seg_overrides={"iters": 4, "batch": 2, "crop": 48, "test_scales": [1.0], "ckpt_every": 2, "log_every": 1}']
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["status"].values()) == {"skipped"}
    assert printed["miou_percent"]["deeplab_val"] == summary["deeplab_val"]
