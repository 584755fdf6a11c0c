"""transcam_nb.config: one record per profile, one settings base, one override parser."""
import dataclasses

import pytest

from transcam_nb import config
from transcam_nb.config import (RUN_ONLY_FIELDS, SETTINGS, AffinityConfig, OverrideError, PipelineConfig,
                                PretrainConfig, Profile, SegConfig, get_affinity_preset, get_profile, get_seg_config,
                                parse_overrides, parse_value)


def test_parse_overrides_types():  # moved from test_train (train.parse_set_overrides)
    prof = get_profile("tiny")
    o = parse_overrides(["lr=1e-4", "resize_long=[64, 96]", "jitter=None", "batch-size=4", "compile=true",
                         "lr_schedule=constant", "weight_decay=0", "model_overrides={'embed_dim': 32}"], prof)
    assert o == {"lr": 1e-4, "resize_long": (64, 96), "jitter": None, "batch_size": 4, "compile": True,
                 "lr_schedule": "constant", "weight_decay": 0.0, "model_overrides": {"embed_dim": 32}}
    prof.replace(**o)
    with pytest.raises(ValueError, match="not a profile field"):
        parse_overrides(["learning_rate=1"], prof)
    with pytest.raises(ValueError, match="expected int"):
        parse_overrides(["batch_size=big"], prof)
    with pytest.raises(OverrideError, match="KEY=VALUE"):
        parse_overrides(["lr"], prof)


def test_one_value_rule_python_literals_and_json_words():
    assert parse_value("null") is None and parse_value("None") is None
    assert parse_value("true") is True and parse_value("True") is True
    assert parse_value('{"iters": 4, "test_scales": [1.0]}') == {"iters": 4, "test_scales": [1.0]}
    assert parse_value("(1, 2)") == (1, 2) and parse_value("1e-3") == 1e-3
    assert parse_value("transcam_small") == "transcam_small"  # not a literal: the text
    # without settings: no key check, no coercion (the --model-arg case)
    assert parse_overrides(["embed_dim=32", "name=x"], None, "--model-arg") == {"embed_dim": 32, "name": "x"}
    # pipeline settings: null for an int-or-None field, a dict for a dict field
    assert parse_overrides(["pseudo_limit=null", 'seg_overrides={"iters": 4}'], PipelineConfig(), "--config") == {
        "pseudo_limit": None, "seg_overrides": {"iters": 4}}


@pytest.mark.parametrize("cls", [Profile, PipelineConfig, AffinityConfig, SegConfig, PretrainConfig])
def test_every_settings_class_shares_the_base(cls):
    obj = cls(name="x") if cls is Profile else cls()
    assert isinstance(obj, config.Settings)
    with pytest.raises(TypeError, match="unknown"):
        obj.replace(no_such_field=1)
    d = obj.to_dict()
    assert set(d) == {f.name for f in dataclasses.fields(cls)}
    run_only = [f for f in d if f in RUN_ONLY_FIELDS]
    h = obj.fingerprint()
    for f in run_only:  # run-only knobs do not change the fingerprint
        cur = getattr(obj, f)
        new = "cpu" if isinstance(cur, str) else (7 if not isinstance(cur, float) else 7.5)
        assert obj.replace(**{f: new}).fingerprint() == h, f
    for f in [f for f in d if f not in RUN_ONLY_FIELDS][:5]:  # the others do
        cur = getattr(obj, f)
        new = (not cur if isinstance(cur, bool) else cur + "x" if isinstance(cur, str) else cur + 1
               if isinstance(cur, (int, float)) else 1 if cur is None else {"x": 1} if isinstance(cur, dict) else ())
        assert obj.replace(**{f: new}).fingerprint() != h, f


def test_one_record_per_profile_defines_every_stage():
    for name, rec in SETTINGS.items():
        assert rec.name == name and rec.classifier.name == name
        assert get_profile(name) is rec.classifier
        assert get_affinity_preset(name) is rec.affinity
        assert get_seg_config(name) is rec.segmentation
        assert rec.pipeline.affinity == name and rec.pipeline.segmentation == name
        assert rec.pretrain.profile == name
    tiny = SETTINGS["tiny"]
    assert tiny.pretrain.model == tiny.classifier.model
    assert tiny.pretrain.model_overrides == tiny.classifier.model_overrides == config.TINY_MODEL
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("huge")


def test_one_voc_class_list():
    from transcam_nb import metrics
    from transcam_nb.data import voc

    assert voc.VOC_CLASSES is config.VOC_CLASSES and len(config.VOC_CLASSES) == 20
    assert "VOC_CLASSES" not in metrics.__all__ and metrics.VOC_CLASSES is config.VOC_CLASSES
