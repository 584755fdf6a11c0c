"""transcam_nb.artifacts: the one home of atomic JSON / JSON-lines writes and the artifacts folder."""
import json
import logging

import numpy as np

from transcam_nb import artifacts


def test_json_helpers_round_trip_numpy_paths_and_sets(tmp_path):
    p = tmp_path / "a" / "x.json"
    obj = {"f": np.float32(0.5), "i": np.int64(3), "arr": np.arange(3), "path": tmp_path / "q", "s": {2},
           "t": (1, 2)}
    artifacts.write_json(p, obj)
    back = json.loads(p.read_text())
    assert back == {"f": 0.5, "i": 3, "arr": [0, 1, 2], "path": str(tmp_path / "q"), "s": [2], "t": [1, 2]}
    assert artifacts.read_json(p) == back
    assert artifacts.read_json(tmp_path / "missing.json", default={}) == {}
    assert artifacts.to_jsonable(obj) == back
    assert not [q for q in p.parent.iterdir() if q.name.startswith(".")]  # no temporary file left


def test_jsonl_append_read_and_a_cut_last_line(tmp_path):
    p = tmp_path / "log.jsonl"
    for i in range(3):
        artifacts.append_jsonl(p, {"step": i, "loss": np.float64(i / 2)})
    with open(p, "a") as f:
        f.write('{"step": 3, "lo')  # a kill in the middle of a write
    assert artifacts.read_jsonl(p) == [{"step": i, "loss": i / 2} for i in range(3)]
    artifacts.write_jsonl(p, artifacts.read_jsonl(p)[:2])
    assert [r["step"] for r in artifacts.read_jsonl(p)] == [0, 1]
    assert artifacts.read_jsonl(tmp_path / "none.jsonl") == []


def test_artifacts_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSCAM_ARTIFACTS", str(tmp_path / "art"))
    assert artifacts.artifacts_dir() == tmp_path / "art" and (tmp_path / "art").is_dir()


def test_cached_reports_on_the_logger_not_stdout(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="transcam_nb")
    p = tmp_path / "deep" / "v.json"
    assert artifacts.cached(p, {"a": 1}, lambda: {"x": 1}) == {"x": 1}
    assert artifacts.cached(p, {"a": 1}, lambda: {"x": 2}) == {"x": 1}
    assert capsys.readouterr().out == ""
    msgs = [r.getMessage() for r in caplog.records if r.name == "transcam_nb.artifacts"]
    assert msgs[0].startswith("[compute] v.json") and msgs[1].startswith("[cached] v.json")
    assert all(str(tmp_path) not in m for m in msgs)  # no absolute paths
