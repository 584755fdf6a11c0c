"""The pretext generator, the pretraining stage and the shipped tiny weights."""
import json
import math

import numpy as np
import pytest
import torch

from transcam_nb.data import pretext
from transcam_nb.data.pretext import PretextStream, render_scene, scene_labels, texture_classes
from transcam_nb.data.transforms import denormalize
from transcam_nb.pretrain import PretrainConfig, config_hash, default_config, lr_at, pretrain, ship, token_targets
from transcam_nb.weights import PACKAGE_PREFIX, REGENERATE_COMMAND, WEIGHTS_DIR, resolve_checkpoint

# a very small member of the same network family: fast enough for a test on a shared CPU
SMALL = dict(model_overrides=dict(embed_dim=48, num_heads=3, channel_ratio=0.25, depth=3), num_classes=6,
             image_size=32, batch_size=2, eval_scenes=4, log_every=1, save_every=2)


# ------------------------------------------------------------------------------ generator
def test_scene_is_deterministic_and_index_dependent():
    a_img, a_map = render_scene(3, 17, 64, 12)
    b_img, b_map = render_scene(3, 17, 64, 12)
    c_img, _ = render_scene(3, 18, 64, 12)
    d_img, _ = render_scene(4, 17, 64, 12)
    assert a_img.dtype == np.uint8 and a_img.shape == (64, 64, 3) and a_map.shape == (64, 64)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_map, b_map)
    assert not np.array_equal(a_img, c_img) and not np.array_equal(a_img, d_img)


def test_class_table_is_prefix_stable():
    assert texture_classes(5) == texture_classes(20)[:5]
    kinds = {t[0].kind for t in texture_classes(50)}
    assert kinds <= set(pretext.PATTERN_TYPES) and len(kinds) >= 5


def test_scene_labels_match_an_independent_count():
    for i in range(6):
        _, cmap = render_scene(0, i, 64, 10)
        vals, counts = np.unique(cmap, return_counts=True)
        expect = np.zeros(10, np.float32)
        for v, c in zip(vals, counts):
            if c / cmap.size > 0.02:
                expect[v] = 1
        np.testing.assert_array_equal(scene_labels(cmap, 10), expect)
        assert 1 <= expect.sum() <= 4 and 2 <= len(vals) <= 4 and vals.max() < 10


def test_stream_item_is_normalised_image_with_label_and_map():
    s = PretextStream(seed=1, image_size=48, num_classes=8)
    x, (y, cmap) = s[5]
    assert x.shape == (3, 48, 48) and x.dtype == torch.float32
    assert y.shape == (8,) and cmap.shape == (48, 48) and cmap.dtype == torch.int64
    img, m = render_scene(1, 5, 48, 8)
    flipped = not np.array_equal(cmap.numpy(), m)
    ref_img, ref_map = (img[:, ::-1], m[:, ::-1]) if flipped else (img, m)
    np.testing.assert_array_equal(cmap.numpy(), ref_map)
    assert np.abs(denormalize(x).astype(int) - ref_img.astype(int)).max() <= 1
    np.testing.assert_array_equal(y.numpy(), scene_labels(ref_map, 8))
    xb, yb, cb = s.batch(2, 3)
    assert xb.shape == (3, 3, 48, 48) and yb.shape == (3, 8) and cb.shape == (3, 48, 48)
    torch.testing.assert_close(xb[1], s[7][0])


def test_token_targets_hand_made():
    cm = torch.zeros(1, 32, 32, dtype=torch.long)
    cm[0, :, 16:] = 1
    cm[0, 16:24, 0:16] = 2  # bottom-left cell: half class 2, half class 0
    T = token_targets(cm, 3, patch=16)
    assert T.shape == (1, 3, 2, 2)
    torch.testing.assert_close(T[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(T[0, :, 0, 1], torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(T[0, :, 1, 0], torch.tensor([0.5, 0.0, 0.5]))
    torch.testing.assert_close(T.sum(1), torch.ones(1, 2, 2))


def test_lr_schedule_warmup_then_cosine():
    cfg = PretrainConfig(steps=100, lr=1e-3, warmup_frac=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(55, cfg) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert lr_at(99, cfg) < 1e-5


# ------------------------------------------------------------------------------ config hash
def test_config_hash_tracks_what_changes_the_weights():
    cfg = default_config("tiny")
    assert cfg.pretext_version == pretext.PRETEXT_VERSION
    assert cfg.model_overrides == {k: v for k, v in __import__("transcam_nb.config").config.get_profile(
        "tiny").model_overrides.items() if k != "drop_path_rate"}
    h = config_hash(cfg)
    assert config_hash(cfg.replace(threads=2, max_minutes=5, log_every=3)) == h  # run-only knobs
    for change in (dict(steps=cfg.steps + 1), dict(seed=1), dict(dense_weight=0.5), dict(pretext_version=99),
                   dict(model_overrides=dict(cfg.model_overrides, embed_dim=64)), dict(part_prob=0.4)):
        assert config_hash(cfg.replace(**change)) != h, change


# ------------------------------------------------------------------------------ the stage
def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_few_pretraining_steps_and_fine_tune_loading(tmp_path):
    from transcam_nb.models import create_model
    from transcam_nb.models.checkpoints import read_state_dict
    from transcam_nb.models.factory import build_model_for_profile
    from transcam_nb.config import get_profile

    cfg = default_config("tiny", steps=3, **SMALL)
    man = pretrain(cfg, tmp_path / "run", command="test", progress=False)
    run = tmp_path / "run"
    for name in ("pretrained.pt", "manifest.json", "last.pt"):
        assert (run / name).is_file(), name
    disk = json.loads((run / "manifest.json").read_text())
    assert disk == json.loads(json.dumps(man))
    assert man["config_hash"] == config_hash(cfg) and man["steps_done"] == 3 and man["images_seen"] == 6
    assert man["command"] == "test" and man["seed"] == 0 and man["pretext_version"] == pretext.PRETEXT_VERSION
    assert man["wall_time_s"] >= 0 and math.isfinite(man["final_metrics"]["final_train_loss"])
    for k in ("mAP", "exact_match", "token_acc_cam", "token_acc_head"):
        assert 0.0 <= man["final_metrics"][k] <= 1.0
    from transcam_nb.pretrain import file_sha256

    assert man["weights_sha256"] == file_sha256(run / "pretrained.pt")
    sd = read_state_dict(run / "pretrained.pt")
    assert all(v.dtype == torch.float16 for v in sd.values() if v.is_floating_point())
    # the weights moved away from a fresh initialisation of the same seed
    from transcam_nb.device import seed_everything

    seed_everything(cfg.seed)
    fresh = create_model(cfg.model, num_classes=cfg.num_classes, drop_path_rate=0.0, **cfg.model_overrides)
    moved = [k for k, v in fresh.state_dict().items() if v.is_floating_point()
             and not torch.allclose(v, sd[k].float(), atol=1e-3)]
    assert len(moved) > 10
    # fine-tuning start: the profile's network (K + 1 = 9 outputs), heads dropped, the rest loaded
    prof = get_profile("tiny", model_overrides=dict(cfg.model_overrides), init_checkpoint=None)
    ft = build_model_for_profile(prof, run / "pretrained.pt", num_fg=8, verbose=False)
    assert ft.conv_cls_head.out_channels == 9
    got = ft.state_dict()
    for k, v in sd.items():
        if not k.startswith(("conv_cls_head", "trans_cls_head")):
            torch.testing.assert_close(got[k].float(), v.float(), msg=k)
    # a finished run is not redone
    again = pretrain(cfg, run, command="other", progress=False)
    assert again["command"] == "test"


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    from transcam_nb.models.checkpoints import read_state_dict

    cfg = default_config("tiny", steps=4, **dict(SMALL, save_every=1))
    pretrain(cfg, tmp_path / "full", progress=False)

    class Killed(Exception):
        pass

    def kill_at_3(info):
        if info["step"] == 3:
            raise Killed()

    with pytest.raises(Killed):
        pretrain(cfg, tmp_path / "cut", progress=False, callback=kill_at_3)
    assert not (tmp_path / "cut" / "pretrained.pt").exists()
    done = pretrain(cfg, tmp_path / "cut", progress=False)  # resumes from last.pt (step 2)
    assert done["steps_done"] == 4
    log = (tmp_path / "cut" / "metrics.jsonl").read_text()
    assert '"event": "resume"' in log
    a, b = read_state_dict(tmp_path / "full" / "pretrained.pt"), read_state_dict(tmp_path / "cut" / "pretrained.pt")
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), atol=2e-3, rtol=2e-3, msg=k)


def test_time_cap_stops_early_and_says_so(tmp_path):
    cfg = default_config("tiny", steps=5, **SMALL).replace(max_minutes=1e-9)
    man = pretrain(cfg, tmp_path / "run", progress=False)
    assert man["steps_done"] == 1 and "stopped early" in man["schedule"]
    assert (tmp_path / "run" / "pretrained.pt").is_file()


def test_ship_copies_weights_and_manifest(tmp_path):
    cfg = default_config("tiny", steps=1, **SMALL)
    pretrain(cfg, tmp_path / "run", progress=False)
    pt, js = ship(tmp_path / "run", "tiny", dest=tmp_path / "weights")
    assert pt.name == "tiny_pretrained.pt" and js.name == "tiny_pretrained.json"
    assert json.loads(js.read_text())["weights_file"] == "tiny_pretrained.pt"
    assert pt.read_bytes() == (tmp_path / "run" / "pretrained.pt").read_bytes()


def test_cli_registers_the_pretrain_stage(tmp_path):
    from transcam_nb.cli import STAGES, build_parser

    assert "pretrain" in STAGES
    args = build_parser().parse_args(["pretrain", "--profile", "tiny", "--out", str(tmp_path), "--steps", "7"])
    assert args.out == str(tmp_path) and args.steps == 7 and not args.ship


# ------------------------------------------------------------------------------ shipped weights
def test_package_resolver(tmp_path):
    assert resolve_checkpoint(None) is None
    assert resolve_checkpoint(str(tmp_path / "x.pt")) == tmp_path / "x.pt"
    with pytest.raises(FileNotFoundError, match="pretrain"):
        resolve_checkpoint(PACKAGE_PREFIX + "no_such_pretrained.pt")
    with pytest.raises(ValueError):
        resolve_checkpoint(PACKAGE_PREFIX + "../config.py")


def test_shipped_tiny_weights_are_current():
    """Fails when the pretraining config or the pretext generator changed but the shipped
    weights were not regenerated (the manifest's config hash no longer matches)."""
    from transcam_nb.pretrain import file_sha256

    cmd = REGENERATE_COMMAND.format(profile="tiny")
    pt, js = WEIGHTS_DIR / "tiny_pretrained.pt", WEIGHTS_DIR / "tiny_pretrained.json"
    assert pt.is_file() and js.is_file(), f"shipped tiny weights are missing; generate them with: {cmd}"
    man = json.loads(js.read_text())
    cfg = default_config("tiny")
    assert man["pretext_version"] == pretext.PRETEXT_VERSION, (
        f"the pretext generator is version {pretext.PRETEXT_VERSION} but the shipped weights were made with "
        f"version {man['pretext_version']}; regenerate them with: {cmd}")
    assert man["config_hash"] == config_hash(cfg), (
        f"the tiny pretraining config changed (hash {config_hash(cfg)}, shipped weights {man['config_hash']}); "
        f"regenerate them with: {cmd}")
    assert man["steps_done"] == cfg.steps, f"the shipped run stopped early; regenerate with: {cmd}"
    assert file_sha256(pt) == man["weights_sha256"], f"{pt} does not match its manifest; regenerate with: {cmd}"
    for k in ("command", "config", "seed", "wall_time_s", "final_metrics"):
        assert k in man


def test_tiny_profile_starts_from_the_shipped_weights():
    from transcam_nb.config import get_profile

    prof = get_profile("tiny")
    assert prof.init_checkpoint == PACKAGE_PREFIX + "tiny_pretrained.pt", (
        "the tiny profile must fine-tune from the shipped pretrained weights; set "
        "init_checkpoint='package:tiny_pretrained.pt' in transcam_nb/config.py (SETTINGS['tiny'])")
    assert resolve_checkpoint(prof.init_checkpoint) == WEIGHTS_DIR / "tiny_pretrained.pt"


# ----------------------------------------------------------------------------------------- attention grouping
def test_group_loss_hand_made():
    from transcam_nb.pretrain import group_loss

    cm = torch.zeros(1, 16, 48, dtype=torch.long)  # three 16 px cells: classes 0, 1, 0
    cm[0, :, 16:32] = 1
    a = torch.zeros(1, 4, 4)  # class token + 3 patches
    a[0, 1:, 1:] = torch.tensor([[0.5, 0.2, 0.2], [0.1, 0.6, 0.1], [0.3, 0.3, 0.3]])
    a[0, 1:, 0] = torch.tensor([0.1, 0.2, 0.1])
    loss, mass = group_loss(a, cm, num_classes=2, patch=16, kind="mass")
    m = torch.tensor([0.7, 0.6, 0.6])  # same-class mass per query (class-token column never counts)
    assert loss.item() == pytest.approx(float(-torch.log(m).mean()))
    assert mass == pytest.approx(float(m.mean()))
    ce, _ = group_loss(a, cm, num_classes=2, patch=16, kind="ce")
    p = a[0, 1:, 1:] / a[0, 1:, 1:].sum(-1, keepdim=True)
    t = torch.tensor([[0.5, 0, 0.5], [0, 1, 0], [0.5, 0, 0.5]])
    assert ce.item() == pytest.approx(float(-(t * torch.log(p)).sum(-1).mean()), rel=1e-5)
    with pytest.raises(ValueError, match="group_loss"):
        group_loss(a, cm, 2, 16, kind="nope")


def test_grouping_is_off_by_default_and_keeps_the_old_hash():
    cfg = default_config("tiny")
    assert cfg.group_weight == 0 and cfg.init is None
    assert not {"group_weight", "group_loss", "group_blocks", "init"} & set(cfg.hashed())
    on = cfg.replace(group_weight=1.0, init="package:tiny_pretrained.pt")
    assert {"group_weight", "group_loss", "group_blocks", "init"} <= set(on.hashed())
    assert config_hash(on) != config_hash(cfg)


def test_grouped_pretraining_runs_and_reports_the_mass(tmp_path):
    cfg = default_config("tiny", **{**SMALL, "steps": 2, "group_weight": 1.0, "group_blocks": (1, 2)})
    man = pretrain(cfg, tmp_path / "g", progress=False)
    assert man["steps_done"] == 2 and 0.0 < man["final_metrics"]["group_mass"] <= 1.0
    assert "group" in man["final_metrics"]["final_train_loss_parts"]
    cont = cfg.replace(init=str(tmp_path / "g" / "pretrained.pt"), seed=1)
    man2 = pretrain(cont, tmp_path / "g2", progress=False)
    assert man2["init_sha256"] == man["weights_sha256"]


def test_shipped_grouped_weights_are_current():
    """tiny_pretrained_grouped.pt continues tiny_pretrained.pt with the grouping loss; its
    manifest must match today's config (same overrides), the shipped start and the file."""
    from transcam_nb.pretrain import file_sha256

    pt, js = WEIGHTS_DIR / "tiny_pretrained_grouped.pt", WEIGHTS_DIR / "tiny_pretrained_grouped.json"
    assert pt.is_file() and js.is_file(), "shipped grouped weights are missing (see benchmarks/results/issue11_log.md)"
    man = json.loads(js.read_text())
    cmd = man["command"]
    assert "--ship-name tiny_pretrained_grouped" in cmd and "--init package:tiny_pretrained.pt" in cmd
    keep = {k: man["config"][k] for k in ("steps", "lr", "seed", "group_weight", "group_loss", "init")}
    keep["group_blocks"] = tuple(man["config"]["group_blocks"])
    cfg = default_config("tiny", **keep)
    assert man["config_hash"] == config_hash(cfg), f"the pretraining config changed; regenerate with: {cmd}"
    assert man["pretext_version"] == pretext.PRETEXT_VERSION and man["steps_done"] == cfg.steps
    assert man["init_sha256"] == file_sha256(WEIGHTS_DIR / "tiny_pretrained.pt"), \
        f"tiny_pretrained.pt changed since; regenerate with: {cmd}"
    assert file_sha256(pt) == man["weights_sha256"], f"{pt} does not match its manifest; regenerate with: {cmd}"
    assert man["final_metrics"]["group_mass"] > 0.8
