"""The finished classifier shipped with the package (transcam_nb.pipeline.shipped): the book's
contrast arm of chapters 2 and 5 is installed from it instead of trained, and only when its
configuration is exactly the one asked for."""
import json
import logging
import shutil

import pytest
import torch

import transcam_nb
from transcam_nb.artifacts import file_sha256
from transcam_nb.config import get_profile
from transcam_nb.errors import InputError
from transcam_nb.pipeline import shipped
from transcam_nb.pipeline.classifier import cached_classifier, classifier_spec
from transcam_nb.weights import WEIGHTS_DIR

#: the book's contrast arm (notebooks 02 and 05: ARMS["grouped pretext"])
CONTRAST_INIT = "package:tiny_pretrained_grouped.pt"


class Trained(Exception):
    """Raised by the fake trainer: the cache decided to train."""


@pytest.fixture
def no_training(monkeypatch, tmp_path):
    """A fresh artifacts folder, no opt-out, and a trainer that raises :class:`Trained`."""
    import transcam_nb.train as train

    def fake_train(prof, run_dir, **kw):
        raise Trained(run_dir)

    monkeypatch.setattr(train, "train_classifier", fake_train)
    monkeypatch.setenv("TRANSCAM_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.delenv(shipped.ENV_OPT_OUT, raising=False)
    return tmp_path / "artifacts"


def _spec_of(man):
    """What the code computes now for a manifest's request."""
    return classifier_spec(get_profile(man["request"]["profile"]), init=man["request"]["init"])[1]


def _contrast_manifest():
    _, spec, _ = classifier_spec(get_profile("tiny"), init=CONTRAST_INIT)
    return spec, shipped.find_shipped(spec, CONTRAST_INIT)


def test_the_book_contrast_arm_is_shipped_for_the_current_code():
    """Fails when the contrast arm's configuration changed (a profile field, the version, the data
    generator, the pretext weights) without the shipped classifier being regenerated: the cold
    book would silently go back to training it (about 12 CPU minutes)."""
    spec, found = _contrast_manifest()
    mans = [m for _, m in shipped.shipped_classifiers() if m["request"]["init"] == CONTRAST_INIT]
    assert mans, (f"no shipped classifier for tiny + {CONTRAST_INIT}; create it with: "
                  + shipped.regenerate_command("tiny", CONTRAST_INIT, "tiny_classifier_grouped"))
    problems = shipped.drift(mans[0], spec)
    assert found is not None and not problems, (
        f"{mans[0]['weights_file']} no longer matches what the code computes ({'; '.join(problems)}); "
        f"regenerate it with: {mans[0]['command']}")


@pytest.mark.parametrize("path_man", shipped.shipped_classifiers(), ids=lambda pm: pm[0].name)
def test_every_shipped_classifier_matches_its_manifest(path_man):
    path, man = path_man
    problems = shipped.drift(man, _spec_of(man))
    assert not problems, f"{path.name} is stale ({'; '.join(problems)}); regenerate it with: {man['command']}"
    pt = WEIGHTS_DIR / man["weights_file"]
    assert file_sha256(pt) == man["weights_sha256"], f"{pt.name} does not match its manifest's sha256"
    sd = torch.load(pt, map_location="cpu", weights_only=True)["model"]
    assert man["weights_dtype"] == "float32"
    assert all(v.dtype == torch.float32 for v in sd.values() if v.is_floating_point())
    assert {"command", "machine", "summary", "init_sha256", "run_name"} <= set(man)
    assert man["run_name"] == classifier_spec(get_profile(man["request"]["profile"]), init=man["request"]["init"])[2]
    assert 0 < man["summary"]["eval"]["mAP"] <= 1


def test_drift_names_what_changed():
    """The drift check can fail: a manifest from another version, or other pretext weights."""
    spec, (_, man) = _contrast_manifest()
    old = json.loads(json.dumps(man))
    old["spec"]["version"] = "0.0.1"
    old["spec"]["profile"]["lr"] = 0.5
    assert shipped.drift(old, spec) == ["spec differs at profile.lr", "spec differs at version"]
    old = json.loads(json.dumps(man))
    old["init_sha256"] = "0" * 64
    assert "sha256 differs" in shipped.drift(old, spec)[0]


def test_matching_spec_installs_the_shipped_weights(no_training, caplog):
    _, (manifest, man) = _contrast_manifest()
    with caplog.at_level(logging.INFO, logger="transcam_nb.pipeline"):
        model, run_dir = cached_classifier(get_profile("tiny"), init=CONTRAST_INIT, progress=False)
    assert run_dir.parent == no_training and run_dir.name == man["run_name"]
    assert file_sha256(run_dir / "classifier.pt") == man["weights_sha256"]
    done = json.loads((run_dir / "DONE.json").read_text())
    assert done["shipped"]["weights"] == "package:" + man["weights_file"]
    assert done["shipped"]["weights_sha256"] == man["weights_sha256"] and done["steps"] == man["summary"]["steps"]
    assert json.loads((run_dir / "spec.json").read_text()) == man["spec"]
    assert [r for r in caplog.records if "[shipped]" in r.getMessage()]
    sd = torch.load(WEIGHTS_DIR / man["weights_file"], map_location="cpu", weights_only=True)["model"]
    got = model.state_dict()
    assert all(torch.equal(got[k].cpu(), v) for k, v in sd.items())
    # a second call loads the finished run (nothing installed twice, nothing trained)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="transcam_nb.pipeline"):
        _, again = cached_classifier(get_profile("tiny"), init=CONTRAST_INIT, progress=False)
    assert again == run_dir and [r for r in caplog.records if "[cached]" in r.getMessage()]


@pytest.mark.parametrize("change", ["seed", "max_steps", "version"])
def test_a_differing_spec_trains(no_training, monkeypatch, change):
    over = {"seed": {"seed": 1}, "max_steps": {"max_steps": 599}, "version": {}}[change]
    if change == "version":
        monkeypatch.setattr(transcam_nb, "__version__", transcam_nb.__version__ + ".post1")
    with pytest.raises(Trained):
        cached_classifier(get_profile("tiny"), init=CONTRAST_INIT, progress=False, **over)


def test_other_pretext_weights_of_the_same_name_and_size_train(no_training, monkeypatch, tmp_path, caplog):
    """The spec knows the initial weights by name and size only: regenerated pretext weights
    (here the plain ones under the grouped name: same size) must not get the shipped classifier."""
    import transcam_nb.weights as weights

    spec = _contrast_manifest()[0]
    shutil.copyfile(WEIGHTS_DIR / "tiny_pretrained.pt", tmp_path / "tiny_pretrained_grouped.pt")
    monkeypatch.setattr(weights, "WEIGHTS_DIR", tmp_path)  # package:NAME now resolves to the impostor
    assert classifier_spec(get_profile("tiny"), init=CONTRAST_INIT)[1] == spec
    with caplog.at_level(logging.WARNING, logger="transcam_nb.pipeline"), pytest.raises(Trained):
        cached_classifier(get_profile("tiny"), init=CONTRAST_INIT, progress=False)
    assert any("other initial weights" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("how", ["env", "argument"])
def test_opt_out_trains_even_over_an_installed_copy(no_training, monkeypatch, how):
    _, run_dir = cached_classifier(get_profile("tiny"), init=CONTRAST_INIT, progress=False)  # installs
    kw = {}
    if how == "env":
        monkeypatch.setenv(shipped.ENV_OPT_OUT, "1")
    else:
        kw["shipped"] = False
    with pytest.raises(Trained):
        cached_classifier(get_profile("tiny"), init=CONTRAST_INIT, progress=False, **kw)
    assert shipped.use_shipped(None) is (how != "env")
    assert not (run_dir / "DONE.json").exists()  # an interrupted training is not taken for the shipped copy


def test_workflow_passes_the_opt_out(no_training):
    from transcam_nb import workflow

    with pytest.raises(Trained):
        workflow.classifier(get_profile("tiny"), init=CONTRAST_INIT, shipped=False)


def test_a_damaged_shipped_file_fails_with_one_clear_line(tmp_path):
    spec, (manifest, man) = _contrast_manifest()
    folder = tmp_path / "weights"
    folder.mkdir()
    shutil.copyfile(manifest, folder / manifest.name)
    (folder / man["weights_file"]).write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    found = shipped.find_shipped(spec, CONTRAST_INIT, folder=folder)
    assert found is not None
    with pytest.raises(RuntimeError, match="sha256.*TRANSCAM_NO_SHIPPED=1"):
        shipped.install(found, tmp_path / "run", spec)
    assert not (tmp_path / "run" / "DONE.json").exists()


def _fake_run(tmp_path, spec, name="run"):
    run = tmp_path / name
    run.mkdir()
    (run / "spec.json").write_text(json.dumps(spec))
    (run / "DONE.json").write_text(json.dumps({"steps": 600, "final_loss": 0.5}))
    (run / "summary.json").write_text(json.dumps({"eval": {"mAP": 0.5}}))
    shutil.copyfile(WEIGHTS_DIR / "tiny_classifier_grouped.pt", run / "classifier.pt")
    return run


def _write(run, spec, **kw):
    return shipped.write_shipped(run, spec=spec, run_name="classifier-tiny-init-x", machine={"cpu": "test"},
                                 request={"profile": "tiny", "init": CONTRAST_INIT}, **kw)


def test_write_shipped_writes_a_manifest_that_matches_the_code(tmp_path):
    spec, (_, man) = _contrast_manifest()
    pt, js = _write(_fake_run(tmp_path, spec), spec, name="tiny_classifier_grouped", folder=tmp_path / "out")
    new = json.loads(js.read_text())
    assert new["kind"] == "classifier" and new["command"] == man["command"] and shipped.drift(new, spec) == []
    assert new["weights_sha256"] == file_sha256(pt) and new["summary"]["eval"]["mAP"] == 0.5
    assert new["init_sha256"] == man["init_sha256"] and new["machine"] == {"cpu": "test"}
    assert shipped.find_shipped(spec, CONTRAST_INIT, folder=tmp_path / "out")[1]["weights_file"] == pt.name
    a = torch.load(pt, weights_only=True)["model"]
    b = torch.load(WEIGHTS_DIR / "tiny_classifier_grouped.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_write_shipped_refuses_a_run_of_another_spec_or_an_installed_copy(tmp_path):
    spec, _ = _contrast_manifest()
    other = json.loads(json.dumps(spec))
    other["profile"]["seed"] = 1
    with pytest.raises(InputError, match="differs at: profile.seed"):
        _write(_fake_run(tmp_path, other), spec, folder=tmp_path / "out")
    run = _fake_run(tmp_path, spec, "installed")
    (run / "DONE.json").write_text(json.dumps({"shipped": {"weights": "package:x.pt"}}))
    with pytest.raises(InputError, match="installed shipped classifier"):
        _write(run, spec, folder=tmp_path / "out")
    assert not (tmp_path / "out" / "tiny_classifier_grouped.pt").exists()
