"""pipeline.seeds: one results file for several seeds, and the book's check of its row.

The pipeline itself is tested in test_pipeline.py; here ``run_pipeline`` is replaced by a
function whose numbers depend on the seed and the settings, so the bookkeeping (which runs,
which keys, what the file holds, what the check accepts and refuses) is what is tested.
"""
import json

import numpy as np
import pytest
from seed_checks import assert_other_machine_reported

from transcam_nb import cli, pipeline
from transcam_nb.config import get_profile
from transcam_nb.pipeline import runner, seeds


def _fake_summary(prof, cfg):
    base = 20.0 + prof.seed + (cfg.pseudo_limit or 0) / 100
    return {"cam": base, "transcam": base + 1.5, "random_walk": base - 2, "random_walk_crf": base - 1,
            "deeplab_val": base / 3,
            "details": {"cam": {"best_miou": base + 3, "best_tau": 0.4},
                        "transcam": {"best_miou": base + 4, "best_tau": 0.3},
                        "status": {"cams": "ran", "segment": "ran"}}}


@pytest.fixture
def fake_runs(monkeypatch):
    calls = []

    def fake(prof, out_dir, config=None, progress=True, **kw):
        calls.append((prof.seed, config.pseudo_limit, str(out_dir)))
        return _fake_summary(prof, config)

    monkeypatch.setattr(runner, "run_pipeline", fake)
    return calls


def test_seeds_file_holds_every_seed_and_the_book_row(fake_runs, tmp_path):
    prof = get_profile("tiny")
    cfg = pipeline.pipeline_config(prof, pseudo_limit=200, val_limit=200)
    res = tmp_path / "seeds.json"
    table = pipeline.run_seeds(prof, [0, 1, 2], tmp_path / "runs", res, config=cfg, progress=False, command="cmd")
    book_limit = pipeline.pipeline_config(prof).pseudo_limit
    assert [(s, p) for s, p, _ in fake_runs] == [(0, 200), (1, 200), (2, 200), (0, book_limit)]
    assert json.loads(res.read_text()) == table
    roles = [(r["seed"], r["role"]) for r in table["runs"]]
    assert roles == [(0, "table"), (1, "table"), (2, "table"), (0, "book")]
    keys = {r["key"] for r in table["runs"]}
    assert len(keys) == 4  # seed and settings both enter the key
    book = [r for r in table["runs"] if r["role"] == "book"][0]
    assert book["key"] == pipeline.default_out_dir(prof).name.rsplit("-", 1)[1]  # the book's run folder
    assert table["runs"][1]["row"]["transcam_best"] == pytest.approx(21 + 2 + 4)
    # the statistics over the table's seeds only (not the book row)
    df = pipeline.seed_frame(table)
    cams = np.array([22.0, 23.0, 24.0])
    assert df.loc["mean", "CAM (τ fixed)"] == pytest.approx(cams.mean())
    assert df.loc["spread (std)", "CAM (τ fixed)"] == pytest.approx(cams.std(ddof=1))
    assert list(df.index[:3]) == ["seed 0", "seed 1", "seed 2"]


def test_the_check_accepts_the_same_run_and_refuses_drift(fake_runs, tmp_path):
    prof = get_profile("tiny")
    res = tmp_path / "seeds.json"
    pipeline.run_seeds(prof, [0, 1], tmp_path / "runs", res, progress=False, command="python -m transcam_nb seeds")
    mine = _fake_summary(prof, pipeline.pipeline_config(prof))
    checked = pipeline.check_seed_row(res, mine, prof)
    assert checked["pairs"]["cam"] == (mine["cam"], mine["cam"])
    assert checked["same_machine"] and checked["max_diff"] == 0
    drifted = dict(mine, transcam=mine["transcam"] + 0.6)
    with pytest.raises(AssertionError, match="differs from this build.*transcam.*python -m transcam_nb seeds"):
        pipeline.check_seed_row(res, drifted, prof)
    pipeline.check_seed_row(res, dict(mine, transcam=mine["transcam"] + 0.4), prof)  # within the tolerance
    with pytest.raises(AssertionError, match="no run with this build's settings"):
        pipeline.check_seed_row(res, mine, prof.replace(bg_threshold=0.3))  # another profile: another key
    # a file written on another kind of machine: the numbers are reported, the settings still checked
    assert_other_machine_reported(pipeline.check_seed_row, res, drifted, mine, prof)
    assert json.loads(res.read_text())["machine"] == seeds.machine_id()


def test_a_second_call_keeps_earlier_runs(fake_runs, tmp_path):
    prof = get_profile("tiny")
    res = tmp_path / "seeds.json"
    pipeline.run_seeds(prof, [0], tmp_path / "runs", res, progress=False, check_row=False)
    table = pipeline.run_seeds(prof, [1], tmp_path / "runs", res, progress=False, check_row=False)
    assert sorted(r["seed"] for r in table["runs"]) == [0, 1]


def test_not_a_results_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="x.json: not a seeds results file"):
        pipeline.read_seed_table(bad)


def test_seeds_command(fake_runs, tmp_path, capsys):
    res = tmp_path / "r.json"
    rc = cli.main(["seeds", "--profile", "tiny", "--seeds", "3,4", "--out", str(tmp_path / "o"), "--results",
                   str(res), "--pseudo-limit", "10", "--no-book-row", "--no-progress"])
    assert rc == 0
    t = json.loads(res.read_text())
    assert [r["seed"] for r in t["runs"]] == [3, 4] and t["settings"]["pseudo_limit"] == 10
    assert t["command"].startswith("python -m transcam_nb seeds --profile tiny --seeds 3,4")
    assert "mean" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(["seeds", "--seeds", "x", "--out", str(tmp_path), "--results", str(res)])
    assert e.value.code == 2
    assert seeds.SEED_COLUMNS["deeplab_val"] == "DeepLab (val)"
