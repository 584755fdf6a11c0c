"""pipeline.variants: the refinement variants over seeds, one results file, the book's check.

The bookkeeping (keys, the file, the statistics, the check) is tested with a fake per-seed
computation whose numbers depend on the seed; the command line runs the real computation on a
miniature synthetic benchmark (8 val images of 64 px, a width-32 Conformer trained for 2 steps)
and its row must equal what the book's own calls (workflow.evaluate_variants,
workflow.learned_aggregation) compute for the same classifier.
"""
import json

import numpy as np
import pytest
from seed_checks import assert_other_machine_reported

from transcam_nb import cli, pipeline
from transcam_nb.aggregation import LEARNED
from transcam_nb.config import get_profile
from transcam_nb.pipeline import seeds, variants
from transcam_nb.refine import VARIANTS

NAMES = [*VARIANTS, LEARNED]


def _fake_result(prof, shift=0.0):
    """A seed's result: variant i scores 0.20 + 0.01·i + 0.01·seed (+ 0.05 for the affinity)."""
    out = {}
    for i, name in enumerate(NAMES):
        best = 0.20 + 0.01 * i + 0.01 * prof.seed + (0.05 if "Affinity" in name else 0.0) + shift
        out[name] = {"best_miou": best, "fixed_miou": best - 0.02, "best_tau": 0.3, "fixed_tau": 0.25}
    return out


@pytest.fixture
def fake(monkeypatch):
    calls = []

    def compute(prof, limit=None, progress=False, from_scratch=False):
        calls.append((prof.seed, limit))
        return {"variants": _fake_result(prof), "num_images": 200 if limit is None else limit, "classifier": "c"}

    return calls, compute


def test_keys_follow_the_seed_and_the_settings_not_the_runtime():
    prof = get_profile("tiny")
    key = variants.variant_key(prof)
    assert key == variants.variant_key(get_profile("tiny"))
    assert key == variants.variant_key(prof.replace(threads=2))  # a run-only field: the same numbers
    assert key != variants.variant_key(prof.replace(seed=1))
    assert key != variants.variant_key(prof.replace(bg_threshold=0.3))  # the profile, and the fixed τ
    assert key != variants.variant_key(prof, variants.variant_settings(prof, limit=50))
    s = variants.variant_settings(prof)
    assert [v[0] for v in s["variants"]] == NAMES and s["fixed_tau"] == prof.bg_threshold
    assert s["learned"]["split"] == prof.train_split and s["split"] == prof.eval_split


def test_file_rows_frame_and_gain(fake, tmp_path):
    calls, compute = fake
    prof = get_profile("tiny")
    res = tmp_path / "variants.json"
    table = pipeline.run_variant_seeds(prof, [0, 1, 2], res, progress=False, command="cmd", compute=compute)
    assert calls == [(0, None), (1, None), (2, None)]
    assert json.loads(res.read_text()) == table
    assert table["seeds"] == [0, 1, 2] and table["machine"] == seeds.machine_id() and table["command"] == "cmd"
    assert [r["key"] for r in table["runs"]] == [variants.variant_key(prof.replace(seed=s)) for s in (0, 1, 2)]
    assert list(table["runs"][0]["row"]) == NAMES  # the table's order, the learned row last
    assert table["runs"][1]["row"]["CAM"] == {"best": 21.0, "fixed": 19.0, "best_tau": 0.3}
    df = pipeline.variant_frame(table)
    assert list(df.index) == NAMES
    best = df[variants.KINDS["best"]]
    cams = np.array([20.0, 21.0, 22.0])
    assert list(best.columns) == ["seed 0", "seed 1", "seed 2", "mean", "spread (std)"]
    assert best.loc["CAM", "mean"] == pytest.approx(cams.mean())
    assert best.loc["CAM", "spread (std)"] == pytest.approx(cams.std(ddof=1))
    assert df[variants.KINDS["fixed"]].loc["CAM", "mean"] == pytest.approx(cams.mean() - 2)
    gain = pipeline.refinement_gain(table)
    aff = NAMES.index("Affinity (CLIP-ES-style)")
    assert gain["name"] == "Affinity (CLIP-ES-style)" and gain["mean"] == pytest.approx(aff + 5)
    assert gain["spread"] == pytest.approx(0.0, abs=1e-9)
    only = pipeline.refinement_gain(table, names=["CAM", "TransCAM (AA)"])
    assert only["name"] == "TransCAM (AA)" and only["per_seed"] == {s: pytest.approx(1.0) for s in (0, 1, 2)}


def test_a_second_call_adds_seeds_other_settings_start_afresh(fake, tmp_path):
    _, compute = fake
    prof = get_profile("tiny")
    res = tmp_path / "v.json"
    pipeline.run_variant_seeds(prof, [0], res, progress=False, compute=compute)
    table = pipeline.run_variant_seeds(prof, [1], res, progress=False, compute=compute)
    assert table["seeds"] == [0, 1]
    table = pipeline.run_variant_seeds(prof, [2], res, limit=10, progress=False, compute=compute)
    assert table["seeds"] == [2] and table["settings"]["limit"] == 10
    table = pipeline.run_variant_seeds(prof.replace(bg_threshold=0.3), [2], res, limit=10, progress=False,
                                       compute=compute)
    assert len(table["runs"]) == 1


def test_the_check_accepts_the_same_run_and_refuses_drift(fake, tmp_path):
    _, compute = fake
    prof = get_profile("tiny")
    res = tmp_path / "v.json"
    pipeline.run_variant_seeds(prof, [0, 1], res, progress=False, command="python -m transcam_nb variant-seeds",
                               compute=compute)
    mine = {"variants": _fake_result(prof)}
    ok = pipeline.check_variant_row(res, mine, prof)
    assert ok["same_machine"] and ok["max_diff"] == 0 and len(ok["pairs"]) == 2 * len(NAMES)
    assert ok["pairs"][("CAM", "best")] == (20.0, 20.0)
    # chapter 5 computes the variants without the learned one: those are checked
    ch5 = {n: v for n, v in _fake_result(prof).items() if n != LEARNED}
    assert len(pipeline.check_variant_row(res, ch5, prof)["pairs"]) == 2 * len(VARIANTS)
    drifted = _fake_result(prof)
    drifted["TransCAM (AA)"] = dict(drifted["TransCAM (AA)"], best_miou=drifted["TransCAM (AA)"]["best_miou"] + 0.006)
    with pytest.raises(AssertionError, match="differs from this build.*TransCAM.*python -m transcam_nb variant-seeds"):
        pipeline.check_variant_row(res, drifted, prof)
    near = {n: dict(v, fixed_miou=v["fixed_miou"] + 0.004) for n, v in _fake_result(prof).items()}
    pipeline.check_variant_row(res, near, prof)  # within the tolerance (0.5 points)
    with pytest.raises(AssertionError, match="no run with this build's settings"):
        pipeline.check_variant_row(res, mine, prof.replace(bg_threshold=0.3))  # another profile: another key
    with pytest.raises(AssertionError, match="no run with this build's settings"):
        pipeline.check_variant_row(res, mine, prof, limit=50)  # other evaluation settings
    with pytest.raises(AssertionError, match="no run with this build's settings"):
        pipeline.check_variant_row(res, mine, prof.replace(seed=5))  # a seed the file does not hold
    with pytest.raises(AssertionError, match="lacks numbers"):
        pipeline.check_variant_row(res, {**mine["variants"], "Other": mine["variants"]["CAM"]}, prof)
    # a file written on another kind of machine: the numbers are reported, the settings still checked
    assert_other_machine_reported(pipeline.check_variant_row, res, drifted, mine, prof)


def test_not_a_results_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"runs": 3}')
    with pytest.raises(ValueError, match="x.json: not a variant-seeds results file"):
        pipeline.read_variant_table(bad)
    with pytest.raises(ValueError, match="x.json: not a variant-seeds results file"):
        pipeline.check_variant_row(bad, {}, get_profile("tiny"))


def test_command_line_errors(tmp_path):
    for argv in (["--seeds", "a,b"], ["--seeds", ","], ["--limit", "0"], ["--set", "seed=3"]):
        with pytest.raises(SystemExit) as e:
            cli.main(["variant-seeds", "--results", str(tmp_path / "r.json"), *argv])
        assert e.value.code == 2
    assert not (tmp_path / "r.json").exists()


# ------------------------------------------------------------------------------------------
# the command on a miniature benchmark, against the book's own calls
# ------------------------------------------------------------------------------------------
MINI = dict(image_size=64, n_train=16, n_val=8, n_test=0, num_classes=4)
SETS = ["num_fg=4", "synthetic=None", "init_checkpoint=None", "max_steps=2", "batch_size=4", "crop_size=64",
        "resize_long=[56,80]", "final_eval=False", "scales=[32,64]", "checkpoint_minutes=None", "deterministic=True",
        "device=cpu", 'model_overrides={"embed_dim": 32, "num_heads": 2, "channel_ratio": 0.25, "depth": 12}']


def test_variant_seeds_command_on_a_miniature_profile(tmp_path, monkeypatch, capsys):
    from transcam_nb import workflow
    from transcam_nb.aggregation import learned_variant
    from transcam_nb.data import synthetic

    root = synthetic.ensure(tmp_path / "data", seed=0, workers=0, progress=False, **MINI)
    monkeypatch.setenv("TRANSCAM_ARTIFACTS", str(tmp_path / "artifacts"))
    res = tmp_path / "variants.json"
    argv = ["variant-seeds", "--profile", "tiny", "--seeds", "0,1", "--results", str(res), "--no-progress",
            "--data-root", str(root)]
    for s in SETS:
        argv += ["--set", s]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "mean" in out and "best refinement at the best τ" in out
    table = pipeline.read_variant_table(res)
    assert table["command"].startswith("python -m transcam_nb variant-seeds --profile tiny --seeds 0,1")
    assert table["seeds"] == [0, 1] and all(r["num_images"] == 8 for r in table["runs"])
    assert all(list(r["row"]) == NAMES for r in table["runs"])
    assert table["runs"][0]["classifier"] != table["runs"][1]["classifier"]  # one classifier per seed
    # the book's calls for seed 1, uncached: the same numbers, and the check accepts them
    prof = get_profile("tiny", data_root=str(root), num_fg=4, synthetic=None, init_checkpoint=None, max_steps=2,
                       batch_size=4, crop_size=64, resize_long=(56, 80), final_eval=False, scales=(32, 64),
                       checkpoint_minutes=None, deterministic=True, device="cpu", seed=1,
                       model_overrides={"embed_dim": 32, "num_heads": 2, "channel_ratio": 0.25, "depth": 12})
    model, run_dir = workflow.classifier(prof)
    assert run_dir.name == table["runs"][1]["classifier"]  # the command used the book's classifier cache
    mine = workflow.evaluate_variants(model, prof)["variants"]
    agg = workflow.learned_aggregation(model, prof, cache_key="uncached-" + run_dir.name)
    mine.update(workflow.evaluate_variants(model, prof, variants=learned_variant(agg["weights"]))["variants"])
    checked = pipeline.check_variant_row(table, mine, prof)
    assert checked["same_machine"] and len(checked["pairs"]) == 2 * len(NAMES)
    assert checked["max_diff"] < 0.01


def test_the_committed_tiny_table_holds_the_book_rows():
    """The shipped file answers the book's check for seeds 0-2 of today's tiny profile and
    settings (a changed profile, variant or τ grid fails here before it fails the book: run the
    file's command again)."""
    path = pipeline.committed_variants("tiny")
    assert path.is_file() and path.parent.name == "results"
    table = pipeline.read_variant_table(path)
    prof = get_profile("tiny")
    hint = f"run `{table['command']}` again"
    assert table["settings"] == variants.variant_settings(prof), hint
    keys = {r["key"] for r in table["runs"]}
    assert {variants.variant_key(prof.replace(seed=s)) for s in (0, 1, 2)} <= keys, hint
    assert all(list(r["row"]) == NAMES and r["num_images"] == 200 for r in table["runs"])
    assert not pipeline.committed_variants("paper").exists()  # the chapters skip the table there
