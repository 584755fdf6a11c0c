"""PAR in the pipeline: the ``postprocess`` setting ("crf" | "par") of the crf and randomwalk
stages, its one code path (:func:`transcam_nb.postprocess.crf.refine_labels`), its place in the
stages' keys, and the command-line route (``--config postprocess=par``).

The miniature run (8 train images of 64 px, a Conformer of width 32, 1 classifier step, 2
AffinityNet steps) checks the machinery, not the numbers."""
import json

import numpy as np
import pytest

from transcam_nb import pipeline
from transcam_nb.config import PipelineConfig, get_profile, parse_overrides
from transcam_nb.data import synthetic
from transcam_nb.pipeline.context import (
    PipelineContext,
    PipelineInputError,
    default_out_dir,
    postprocess_spec,
)
from transcam_nb.postprocess.crf import make_la_ha_labels, refine_labels
from transcam_nb.postprocess.par import par_labels
from transcam_nb.postprocess.random_walk import random_walk


def _scene(h=36, w=40, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (h / 3) ** 2
    img = np.where(disc[..., None], [20, 40, 200], [230, 220, 30]).astype(np.uint8)
    img = np.clip(img + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
    cam = np.clip(disc.astype(np.float32) + rng.normal(0, 0.3, disc.shape).astype(np.float32), 0, 1)
    return img, disc, cam[None]


# ------------------------------------------------------------------------------- one code path
def test_refine_labels_par_equals_par_labels():
    img, disc, _ = _scene()
    coarse = np.zeros(disc.shape, np.uint8)
    coarse[::6, ::6] = disc[::6, ::6] * 3
    coarse = np.kron(coarse[::6, ::6], np.ones((6, 6), np.uint8))[: disc.shape[0], : disc.shape[1]]
    out = refine_labels(img, coarse, 5, "par")
    np.testing.assert_array_equal(out, par_labels(img, coarse, 5))
    assert out.dtype == np.uint8 and out.shape == disc.shape


def test_refine_labels_crf_equals_crf_labels():
    pytest.importorskip("pydensecrf")
    from transcam_nb.postprocess.crf import crf_labels

    img, disc, _ = _scene()
    lab = disc.astype(np.uint8) * 2
    np.testing.assert_array_equal(refine_labels(img, lab, 4), crf_labels(img, lab, 4))


def test_la_ha_labels_with_par():
    img, disc, cam = _scene()
    la, ha = make_la_ha_labels(img, cam, [1], thresholds=(0.6, 0.25), num_classes=3, postprocess="par")
    # the disc is class 1 (label 2), and PAR snaps the noisy thresholded CAM to the colour region
    for lab in (la, ha):
        assert set(np.unique(lab)) <= {0, 2}
        assert ((lab == 2) == disc).mean() > 0.95


def test_random_walk_with_par():
    img, disc, cam = _scene(h=32, w=40)
    n = (32 // 8) * (40 // 8)
    import torch

    aff = torch.eye(n)  # no walk: the labels are the pooled CAM's argmax, then PAR
    out = random_walk(cam, [0], aff, img, num_classes=2, bg=0.42, crf=True, postprocess="par")
    base = random_walk(cam, [0], aff, num_classes=2, bg=0.42)
    np.testing.assert_array_equal(out, par_labels(img, base, 3))


def test_unknown_postprocess_is_refused():
    img, disc, cam = _scene()
    with pytest.raises(ValueError, match="postprocess must be one of"):
        refine_labels(img, disc.astype(np.uint8), 2, "bilateral")
    with pytest.raises(ValueError, match="postprocess must be one of"):
        make_la_ha_labels(img, cam, [0], num_classes=2, postprocess="PAR")


# ------------------------------------------------------------------------------- config and keys
def test_setting_reaches_the_command_line_and_keys():
    assert PipelineConfig().postprocess == "crf"  # the paper's default
    over = parse_overrides(["postprocess=par"], PipelineConfig(), "--config")
    assert over == {"postprocess": "par"}
    assert postprocess_spec({"a": 1}, "crf") == {"a": 1}  # the default leaves old keys alone
    assert postprocess_spec({"a": 1}, "par") == {"a": 1, "postprocess": "par"}
    prof = get_profile("tiny")
    crf_cfg = pipeline.pipeline_config(prof)
    par_cfg = crf_cfg.replace(**over)
    assert default_out_dir(prof, crf_cfg) != default_out_dir(prof, par_cfg)


# ------------------------------------------------------------------------------- a miniature run
MINI = dict(image_size=64, n_train=8, n_val=4, n_test=0, num_classes=3)


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = synthetic.ensure(tmp_path_factory.mktemp("data"), seed=0, workers=0, progress=False, **MINI)
    prof = get_profile(
        "tiny", data_root=str(root), num_fg=3, synthetic=None, init_checkpoint=None,
        model_overrides=dict(embed_dim=32, num_heads=2, channel_ratio=0.25, depth=3),
        max_steps=1, batch_size=4, crop_size=64, resize_long=(56, 72), final_eval=False, scales=(64,),
        checkpoint_minutes=None, deterministic=True, threads=1, device="cpu",
    )
    cfg = pipeline.pipeline_config(
        prof, classifier="train", pseudo_limit=None, val_limit=None, postprocess="par",
        affinity_overrides=dict(crop_size=64, radius=3, batch_size=4, epochs=1, save_every=2),
    )
    return prof, cfg


def test_miniature_run_with_par_labels(mini, tmp_path):
    prof, cfg = mini
    out = tmp_path / "run"
    stages = ["classifier", "cams", "crf", "affinity", "randomwalk"]
    pipeline.run_pipeline(prof, out, stages, config=cfg, progress=False)
    crf_rec = json.loads((out / "crf" / "DONE.json").read_text())
    assert crf_rec["result"]["postprocess"] == "par"
    assert json.loads((out / "crf" / "config.json").read_text())["spec"]["postprocess"] == "par"
    rw_rec = json.loads((out / "randomwalk" / "DONE.json").read_text())
    assert rw_rec["result"]["postprocess"] == "par" and 0 <= rw_rec["result"]["random_walk_crf"]["miou"] <= 100
    from transcam_nb.pseudo import load_cams, load_label_png

    ids = sorted(p.stem for p in (out / "crf" / "la").glob("*.png"))
    assert len(ids) == MINI["n_train"]
    # the la labels are PAR of the thresholded CAMs (the one code path)
    iid = ids[0]
    cams, classes = load_cams(out / "cams" / "transcam" / f"{iid}.npz")
    from PIL import Image

    ctx_img = PipelineContext(prof, cfg, out).image(iid)
    la, ha = make_la_ha_labels(ctx_img, cams, classes, thresholds=prof.crf_thresholds, num_classes=3, postprocess="par")
    np.testing.assert_array_equal(load_label_png(out / "crf" / "la" / f"{iid}.png"), la)
    np.testing.assert_array_equal(load_label_png(out / "crf" / "ha" / f"{iid}.png"), ha)
    assert Image.open(out / "randomwalk" / "rw_crf" / f"{iid}.png").size == ctx_img.shape[1::-1]
    # an unknown setting stops before any stage runs
    with pytest.raises(PipelineInputError, match="postprocess must be one of"):
        pipeline.run_pipeline(prof, tmp_path / "bad", config=cfg.replace(postprocess="none"), progress=False)
    assert not (tmp_path / "bad" / "classifier").exists()
    # a changed setting is refused in the same folder instead of mixing labels
    with pytest.raises(PipelineInputError, match="postprocess"):
        pipeline.run_pipeline(prof, out, ["crf"], config=cfg.replace(postprocess="crf"), progress=False)
