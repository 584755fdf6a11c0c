"""pipeline.report finds a profile's run without being told the folder (chapter 7's numbers)."""
import json
import os
import time

import pytest

from transcam_nb import pipeline
from transcam_nb.config import get_profile


def _summary(folder, miou):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps({"cam": miou, "details": {"profile": "tiny"}}))


def test_find_run_prefers_the_default_folder_then_the_newest(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSCAM_ARTIFACTS", str(tmp_path))
    monkeypatch.delenv("TRANSCAM_CLASSIFIER", raising=False)
    prof = get_profile("tiny")
    with pytest.raises(FileNotFoundError, match="no pipeline run of the 'tiny' profile") as e:
        pipeline.find_run(prof)
    assert str(tmp_path) not in str(e.value)  # no absolute paths in what the book may show
    old, new = tmp_path / "pipeline-tiny-aaaa", tmp_path / "pipeline-tiny-bbbb"
    _summary(old, 1.0)
    _summary(new, 2.0)
    os.utime(old / "summary.json", (time.time() - 100, time.time() - 100))
    _summary(tmp_path / "pipeline-paper-cccc", 3.0)
    assert pipeline.find_run("tiny") == new
    assert pipeline.read_summary(profile="tiny")["cam"] == 2.0
    exact = pipeline.default_out_dir(prof, pipeline.pipeline_config(prof))
    _summary(exact, 4.0)
    os.utime(exact / "summary.json", (time.time() - 1000, time.time() - 1000))
    assert pipeline.find_run(prof) == exact  # the folder chapter 6 runs into wins over a newer one
    assert pipeline.read_summary(profile=prof)["cam"] == 4.0
    assert pipeline.read_summary(new)["cam"] == 2.0  # an explicit folder still works
