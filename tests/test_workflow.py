"""The book's workflow helpers: the one-pass multi-variant CAMs equal multiscale_cam."""
import numpy as np
import pytest
import torch

from transcam_nb.cam import multiscale_cam
from transcam_nb.models import create_model
from transcam_nb.workflow import DEFAULT_VARIANTS, multiscale_variants


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create_model("transcam_tiny", num_classes=5, embed_dim=32, num_heads=2, channel_ratio=0.25,
                     drop_path_rate=0.0).eval()
    # calibrate BN so activations are well-scaled (random eval BN lets them explode)
    m.train()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.momentum = None
        m(torch.randn(4, 3, 64, 64))
    return m.eval()


def test_multiscale_variants_equal_multiscale_cam(model):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(45, 70, 3), dtype=np.uint8)
    labels = np.array([1, 0, 1, 0], np.float32)
    got = multiscale_variants(model, image, labels, scales=(32, 48), flip=True)
    assert set(got) == set(DEFAULT_VARIANTS)
    for name, (method, blocks) in DEFAULT_VARIANTS.items():
        cams, classes = multiscale_cam(model, image, labels, scales=(32, 48), flip=True, method=method, blocks=blocks)
        np.testing.assert_array_equal(got[name][1], classes)
        assert got[name][0].shape == (2, 45, 70)
        np.testing.assert_allclose(got[name][0], cams, atol=1e-3, rtol=1e-3, err_msg=name)  # SDPA vs explicit softmax: float noise, magnified by min-max


def test_setup_silences_the_package_log_for_the_book(capsys):
    """The book's Setup cell keeps [cached]/[compute] chatter out of the outputs."""
    import logging

    from transcam_nb import workflow

    log = logging.getLogger("transcam_nb")
    old = log.level
    try:
        workflow.setup("tiny", verbose=False)
        assert not log.isEnabledFor(logging.INFO)
        assert workflow._progress(None) is False and workflow._progress(True) is True
        workflow.setup("tiny", verbose=False, log_level=logging.INFO, progress=True)
        assert log.isEnabledFor(logging.INFO)
        assert workflow._progress(None) is True
    finally:
        log.setLevel(old)
        workflow.PROGRESS["default"] = False


def test_learned_aggregation_fits_on_the_training_split_once(model, monkeypatch, tmp_path):
    """workflow.learned_aggregation: the first N images of the *training* split in "cls" mode
    (image labels, no masks), weights on the simplex, cached (a second call does not refit;
    another N does)."""
    from types import SimpleNamespace

    import transcam_nb.data.roots as roots
    from transcam_nb import workflow
    from transcam_nb.config import get_profile

    rng = np.random.default_rng(0)
    items = [SimpleNamespace(image=rng.integers(0, 255, (40, 40, 3), dtype=np.uint8),
                             label=np.eye(4, dtype=np.float32)[i % 4]) for i in range(5)]
    calls = []

    def fake_build(profile, split, mode, **kw):
        calls.append((split, mode))
        return items

    monkeypatch.setattr(roots, "build_dataset", fake_build)
    monkeypatch.setattr(workflow, "data_root", lambda profile: tmp_path)
    monkeypatch.setenv("TRANSCAM_ARTIFACTS", str(tmp_path / "artifacts"))
    prof = get_profile("tiny", scales=(32,))
    a = workflow.learned_aggregation(model, prof, cache_key="m", num_images=3, steps=2)
    assert calls == [(prof.train_split, "cls")] and a["num_images"] == 3 and a["split"] == prof.train_split
    w = np.asarray(a["weights"])
    assert w.shape == (model.depth, 2) and (w >= 0).all() and abs(w.sum() - 1) < 1e-5
    assert workflow.learned_aggregation(model, prof, cache_key="m", num_images=3, steps=2) == a
    assert len(calls) == 1  # cached
    assert workflow.learned_aggregation(model, prof, cache_key="m", num_images=4, steps=2)["num_images"] == 4
    assert len(calls) == 2
