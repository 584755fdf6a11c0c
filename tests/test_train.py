"""Tests of transcam_nb.train: Eq. 6, AP, schedule, sampler, init, resume after a kill, NaN stop, logs, CLI.

Everything runs on a tiny Conformer (embed 32, 2 heads, channel_ratio 0.25) and a 16-image
synthetic benchmark at 64 px, one CPU thread.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from transcam_nb.models import ConformerOutput, create_model, load_checkpoint
from transcam_nb.models.factory import build_model_for_profile
from transcam_nb.config import get_profile
from transcam_nb.engine import (
    LoopConfig,
    NonFiniteLossError,
    ResumableDistributedSampler,
    load_training_checkpoint,
    is_transformer_branch,
    lr_at,
    param_groups,
    train_loop,
)
from transcam_nb.train import (
    average_precision,
    classification_loss,
    evaluate_classifier,
    read_metrics_log,
    train_classifier,
)

REPO = Path(__file__).resolve().parents[1]
SMALL_MODEL = dict(embed_dim=32, num_heads=2, channel_ratio=0.25, depth=12)
BENCH = dict(image_size=64, n_train=12, n_val=4, n_test=0, num_classes=3)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from transcam_nb.data import synthetic

    root = tmp_path_factory.mktemp("bench") / "synthetic"
    return synthetic.generate(root, workers=0, progress=False, **BENCH)


def small_profile(root, **kw):
    base = dict(model_overrides=SMALL_MODEL, init_checkpoint=None, num_fg=3, batch_size=4, crop_size=64,
                resize_long=(56, 80),
                data_root=str(root), max_steps=6, checkpoint_minutes=None, deterministic=True, final_eval=False,
                synthetic=None, threads=1, device="cpu")
    base.update(kw)
    return get_profile("tiny", **base)


# ------------------------------------------------------------------------------------ Eq. 6
def test_classification_loss_is_eq6_on_foreground_channels():
    torch.manual_seed(0)
    zc = torch.randn(3, 5, requires_grad=True)
    zt = torch.randn(3, 5, requires_grad=True)
    y = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 1], [1, 1, 1, 0]], dtype=torch.float32)
    out = ConformerOutput(conv_logits=zc, trans_logits=zt)
    loss = classification_loss(out, y, w_conv=0.3, w_trans=0.7)
    # by hand: -mean_b mean_k [y log σ(z) + (1-y) log(1-σ(z))], z = 0.3 zc + 0.7 zt, channels 1..4
    z = (0.3 * zc + 0.7 * zt).detach()[:, 1:].double()
    s = 1 / (1 + torch.exp(-z))
    ref = -(y * torch.log(s) + (1 - y) * torch.log(1 - s)).mean()
    assert abs(loss.item() - ref.item()) < 1e-6
    loss.backward()
    assert torch.all(zc.grad[:, 0] == 0) and torch.all(zt.grad[:, 0] == 0)  # channel 0 never trained
    assert torch.all(zc.grad[:, 1:] != 0)
    # the code's sum (1, 1) is the paper's (0.5, 0.5) on logits scaled by 2
    l_sum = classification_loss(ConformerOutput(zc.detach(), zt.detach()), y, 1.0, 1.0)
    l_half = classification_loss(ConformerOutput(2 * zc.detach(), 2 * zt.detach()), y, 0.5, 0.5)
    assert abs(l_sum.item() - l_half.item()) < 1e-6


def test_classification_loss_shape_errors():
    out = ConformerOutput(conv_logits=torch.zeros(2, 5), trans_logits=torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"expected labels \[B, 4\]"):
        classification_loss(out, torch.zeros(2, 5))


# ------------------------------------------------------------------------------------ AP
def test_average_precision_hand_cases():
    # ranks: + - + -  → precision at the positives 1/1 and 2/3 → AP = (1 + 2/3)/2
    assert average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0])[0] == pytest.approx(5 / 6)
    # a tie between a positive and a negative is one threshold: P = 1/2 at R = 1
    assert average_precision([0.5, 0.5], [1, 0])[0] == pytest.approx(0.5)
    # perfect ranking
    assert average_precision([0.1, 0.9, 0.8], [0, 1, 1])[0] == pytest.approx(1.0)
    # worst ranking of 1 positive among 4: P = 1/4
    assert average_precision([0.9, 0.8, 0.7, 0.1], [0, 0, 0, 1])[0] == pytest.approx(0.25)
    # columns; a class without positives is NaN
    ap = average_precision(np.array([[0.9, 0.2], [0.1, 0.3]]), np.array([[1, 0], [0, 0]]))
    assert ap[0] == pytest.approx(1.0) and math.isnan(ap[1])


class _ScoreModel(torch.nn.Module):
    """Returns the logit vector stored in the first pixel row of the input (a stub network)."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        z = x[:, 0, 0, :4]
        return ConformerOutput(conv_logits=z, trans_logits=z)


def test_evaluate_classifier_map_and_exact_match():
    # logits for classes 0..2 (channel 0 = background is ignored); w = (0.5, 0.5) keeps them as they are
    logits = torch.tensor([[0, 3.0, -2.0, 1.0], [0, -1.0, 2.0, -3.0], [0, 2.0, 1.0, -1.0], [0, -2.0, -1.0, 2.0]])
    labels = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float32)
    xs = torch.zeros(4, 3, 1, 4)
    xs[:, 0, 0, :] = logits
    ds = list(zip(xs, labels))
    res = evaluate_classifier(_ScoreModel(), ds, batch_size=3, device="cpu", progress=False)
    # class 0 ranked + + - - → 1; class 1: scores -2, 2, 1, -1, positives {1} → 1;
    # class 2: scores 1, -3, -1, 2, positives {0, 3} → ranks 3 then 0 → 1
    assert res["ap"] == pytest.approx([1.0, 1.0, 1.0])
    assert res["mAP"] == pytest.approx(1.0)
    # image 2 predicts classes {0, 1} but has {0} → not an exact match; the others match
    assert res["exact_match"] == pytest.approx(3 / 4)
    assert res["num_images"] == 4


# ------------------------------------------------------------------------------------ schedule, groups
def test_lr_schedules():
    assert all(lr_at(s, 100, 5e-5, "constant") == 5e-5 for s in (0, 50, 99))
    T, base = 100, 1e-3
    lrs = [lr_at(s, T, base, "cosine", 0.05) for s in range(T)]
    assert lrs[:5] == pytest.approx([base * k / 5 for k in range(1, 6)])  # W = 5 warm-up steps
    assert lrs[5] == pytest.approx(base)  # the cosine starts at the peak
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:]))  # then decreasing
    assert lrs[-1] == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * 94 / 95)))
    assert lr_at(T, T, base, "cosine", 0.05) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_at(0, 10, 1.0, "step")


def test_param_groups_reference_and_no_decay():
    m = create_model("transcam_tiny", num_classes=4, **SMALL_MODEL)
    n_params = len(list(m.parameters()))
    g = param_groups(m, 5e-4)
    assert len(g) == 1 and len(g[0]["params"]) == n_params and g[0]["weight_decay"] == 5e-4
    g2 = param_groups(m, 0.05, no_decay_norm_bias=True)
    no_decay = {id(p) for p in g2[1]["params"]}
    assert g2[1]["weight_decay"] == 0.0 and len(g2[0]["params"]) + len(g2[1]["params"]) == n_params
    assert id(m.cls_token) in no_decay and id(m.trans_norm.weight) in no_decay and id(m.conv1.weight) not in no_decay
    assert id(m.trans_cls_head.bias) in no_decay and id(m.trans_cls_head.weight) not in no_decay


def test_param_groups_transformer_lr_multiplier():
    m = create_model("transcam_tiny", num_classes=4, **SMALL_MODEL)
    names = {id(p): n for n, p in m.named_parameters()}
    g = param_groups(m, 0.05, no_decay_norm_bias=True, trans_lr_mult=0.1)
    assert [x["lr_mult"] for x in g] == [1.0, 1.0, 0.1, 0.1]
    slow = {names[id(p)] for x in g if x["lr_mult"] == 0.1 for p in x["params"]}
    assert "cls_token" in slow and "trans_1.attn.qkv.weight" in slow and "trans_patch_conv.weight" in slow
    assert "conv_trans_5.trans_block.mlp.fc1.weight" in slow and "conv_trans_5.squeeze_block.conv_project.weight" in slow
    assert not any(n.startswith(("conv1", "conv_1.", "trans_norm", "trans_cls_head", "conv_cls_head")) for n in slow)
    assert not any(".expand_block." in n or ".cnn_block." in n or ".fusion_block." in n for n in slow)
    assert slow == {n for n in names.values() if is_transformer_branch(n)}
    assert sum(len(x["params"]) for x in g) == len(names)


def test_frozen_transformer_branch_does_not_move(data_root, tmp_path):
    prof = small_profile(data_root, max_steps=2, trans_lr_mult=0.0)
    torch.manual_seed(0)
    m = build_model_for_profile(prof, num_fg=3)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    train_classifier(prof, tmp_path / "frozen", model=m, progress=False)
    moved = {n for n, p in m.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved and not any(is_transformer_branch(n) for n in moved)
    assert "conv1.weight" in moved and "conv_trans_3.expand_block.conv_project.weight" in moved


def test_refined_cam_term_trains_and_changes_the_run(data_root, tmp_path):
    # Profile.refined_loss > 0: the loop asks for every block's attention and adds the term
    runs = {}
    for lam in (0.0, 1.0):
        prof = small_profile(data_root, max_steps=2, refined_loss=lam, refined_noise=0.5)
        torch.manual_seed(0)
        m = build_model_for_profile(prof, num_fg=3)
        losses = []
        train_classifier(prof, tmp_path / f"lam{lam}", model=m, progress=False,
                         callback=lambda st: losses.append(st["loss"]))
        runs[lam] = (losses, m.state_dict())
    assert len(runs[1.0][0]) == 2 and runs[1.0][0][0] > runs[0.0][0][0]  # the extra term is positive
    assert not torch.equal(runs[0.0][1]["trans_1.attn.qkv.weight"], runs[1.0][1]["trans_1.attn.qkv.weight"])


# ------------------------------------------------------------------------------------ sampler
def test_sampler_shards_global_batches_and_resumes():
    data = list(range(22))
    one = ResumableDistributedSampler(data, batch_size=4, num_replicas=1, rank=0, seed=3)
    assert one.steps_per_epoch == 5
    one.set_position(2)
    items = list(one)
    assert all(e == 2 for e, _ in items) and len(items) == 20 and len({i for _, i in items}) == 20
    g = torch.Generator().manual_seed(3 + 2)
    assert [i for _, i in items] == torch.randperm(22, generator=g).tolist()[:20]
    # two processes: each global batch of 4 is split 2 + 2, in order
    r0 = ResumableDistributedSampler(data, batch_size=4, num_replicas=2, rank=0, seed=3)
    r1 = ResumableDistributedSampler(data, batch_size=4, num_replicas=2, rank=1, seed=3)
    for s in (r0, r1):
        s.set_position(2)
    a, b = [i for _, i in r0], [i for _, i in r1]
    glob = [i for _, i in items]
    for k in range(5):
        assert a[2 * k: 2 * k + 2] + b[2 * k: 2 * k + 2] == glob[4 * k: 4 * k + 4]
    # resume at batch 3 of the epoch
    one.set_position(2, 3)
    assert [i for _, i in one] == glob[12:] and len(one) == 8
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ResumableDistributedSampler(list(range(3)), batch_size=4)


# ------------------------------------------------------------------------------------ init
def test_init_from_imagenet_layout_drops_heads(tmp_path):
    torch.manual_seed(1)
    official = create_model("conformer_tiny_patch16", num_classes=10, **SMALL_MODEL)  # Linear heads, stride 2
    path = tmp_path / "imagenet.pth"
    torch.save({"model": official.state_dict()}, path)
    prof = get_profile("tiny", model_overrides=SMALL_MODEL, num_fg=3, init_checkpoint=None)
    torch.manual_seed(2)
    model = build_model_for_profile(prof, init=path, verbose=False)
    torch.manual_seed(2)
    fresh = build_model_for_profile(prof, verbose=False)
    sd, ref, fr = model.state_dict(), official.state_dict(), fresh.state_dict()
    for k, v in sd.items():
        if "cls_head" in k:
            assert torch.equal(v, fr[k]), k  # heads keep the model's own initialisation
        else:
            assert torch.equal(v, ref[k]), k
    assert sd["conv_cls_head.weight"].shape == (4, 64, 3, 3)  # K + 1 outputs, 64·0.25·4 channels


def test_init_drops_heads_even_when_they_fit(tmp_path):
    torch.manual_seed(3)
    trained = create_model("transcam_tiny", num_classes=4, **SMALL_MODEL)
    with torch.no_grad():
        trained.trans_cls_head.weight.fill_(7.0)
    path = tmp_path / "trained.pth"
    torch.save(trained.state_dict(), path)
    prof = get_profile("tiny", model_overrides=SMALL_MODEL, num_fg=3, init_checkpoint=None)
    model = build_model_for_profile(prof, init=path, verbose=False)
    assert not torch.equal(model.trans_cls_head.weight, trained.trans_cls_head.weight)
    assert torch.equal(model.trans_1.attn.qkv.weight, trained.trans_1.attn.qkv.weight)


# ------------------------------------------------------------------------------------ resume after a kill
_KILL_SCRIPT = r"""
import json, os, signal, sys
import torch
torch.set_num_threads(1)
from transcam_nb.config import get_profile
from transcam_nb.train import train_classifier
cfg = json.loads(sys.argv[1])
prof = get_profile("tiny", **cfg["profile"])
def cb(state):
    if state["step"] == cfg["kill_at"]:
        os.kill(os.getpid(), signal.SIGKILL)   # no clean-up, no final checkpoint
train_classifier(prof, cfg["out"], resume=False, checkpoint_every_steps=2, log_every=1, progress=False, callback=cb)
"""


def _profile_json(root, **kw):
    d = dict(model_overrides=SMALL_MODEL, init_checkpoint=None, num_fg=3, batch_size=4, crop_size=64,
             resize_long=[56, 80],
             data_root=str(root), max_steps=6, checkpoint_minutes=None, deterministic=True, final_eval=False,
             synthetic=None, threads=1, device="cpu")
    d.update(kw)
    return d


def test_killed_run_resumes_to_the_same_weights(data_root, tmp_path):
    killed = tmp_path / "killed"
    cfg = {"profile": _profile_json(data_root), "out": str(killed), "kill_at": 5}
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, json.dumps(cfg)], env=env, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    # 12 images / batch 4 = 3 steps an epoch: the last checkpoint is step 4 = epoch 1, batch 1 (mid-epoch)
    ck = load_training_checkpoint(killed / "last.pt")
    assert (ck["step"], ck["epoch"], ck["batch_in_epoch"], ck["complete"]) == (4, 1, 1, False)
    assert not (killed / "classifier.pt").exists()
    assert not [p for p in killed.iterdir() if ".tmp" in p.name]  # no temporary files left behind
    log_steps = list(read_metrics_log(killed)["step"])
    assert log_steps == [1, 2, 3, 4, 5]  # step 5 ran but was not checkpointed

    prof = small_profile(data_root)
    resumed = train_classifier(prof, killed, resume=True, checkpoint_every_steps=2, log_every=1, progress=False)
    assert resumed["resumed_from_step"] == 4 and resumed["steps"] == 6
    straight = train_classifier(prof, tmp_path / "straight", resume=False, checkpoint_every_steps=2, log_every=1,
                                progress=False)
    assert straight["resumed_from_step"] is None

    a = torch.load(killed / "classifier.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "straight" / "classifier.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), rtol=0, atol=1e-6), k
    # the model really moved away from its initialisation
    torch.manual_seed(prof.seed)
    init = build_model_for_profile(prof, verbose=False).state_dict()
    assert max((a[k].double() - init[k].double()).abs().max().item() for k in a if a[k].is_floating_point()) > 1e-3
    # the resumed log has each step once (step 5 of the killed run was dropped and re-done)
    log = read_metrics_log(killed)
    assert list(log["step"]) == [1, 2, 3, 4, 5, 6]
    ref = read_metrics_log(tmp_path / "straight")
    assert np.allclose(log["loss"].to_numpy(), ref["loss"].to_numpy(), atol=1e-6)
    assert np.allclose(log["lr"].to_numpy(), ref["lr"].to_numpy())


def test_finished_run_is_not_retrained_and_changed_settings_refuse_to_resume(data_root, tmp_path):
    prof = small_profile(data_root, max_steps=3)
    s1 = train_classifier(prof, tmp_path / "r", progress=False)
    ck_time = (tmp_path / "r" / "last.pt").stat().st_mtime_ns
    s2 = train_classifier(prof, tmp_path / "r", progress=False)
    assert s2["steps"] == s1["steps"] == 3
    assert (tmp_path / "r" / "last.pt").stat().st_mtime_ns == ck_time
    with pytest.raises(ValueError, match=r"cannot resume .*lr: 0.001 -> 0.01"):
        train_classifier(small_profile(data_root, max_steps=3, lr=1e-2), tmp_path / "r", progress=False)
    # --no-resume starts again in the same folder, and the old run's files are gone at once (a kill
    # before the first new checkpoint must not let a later resume continue the old run)
    seen = []

    def cb(state):
        seen.append(sorted(p.name for p in (tmp_path / "r").iterdir() if p.suffix in (".pt", ".json")))

    s3 = train_classifier(small_profile(data_root, max_steps=3, lr=1e-2), tmp_path / "r", resume=False,
                          progress=False, callback=cb)
    assert s3["resumed_from_step"] is None
    assert seen[0] == ["config.json"]


# ------------------------------------------------------------------------------------ non-finite loss
def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(data_root, tmp_path):
    prof = small_profile(data_root)
    from transcam_nb.data.roots import build_train_dataset

    ds = build_train_dataset(prof, progress=False)
    model = build_model_for_profile(prof, verbose=False)
    calls = {"n": 0}

    def loss_fn(out, y):
        calls["n"] += 1
        loss = classification_loss(out, y)
        return loss * float("nan") if calls["n"] == 3 else loss

    cfg = LoopConfig.from_profile(prof, checkpoint_every_steps=1, log_every=1)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at step 3 .*last good checkpoint is"):
        train_loop(model, ds, loss_fn, tmp_path / "nan", cfg, device="cpu", progress=False)
    ck = load_training_checkpoint(tmp_path / "nan" / "last.pt")
    assert ck["step"] == 2
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert not (tmp_path / "nan" / "classifier.pt").exists()
    # the step was not applied: the live parameters equal the checkpoint (BN running statistics did
    # see the failed batch's forward pass)
    for k, v in model.named_parameters():
        assert torch.equal(v.detach(), ck["model"][k]), k


def test_exploding_lr_stops_with_a_clear_message(data_root, tmp_path):
    prof = small_profile(data_root, lr=1e30, lr_schedule="constant", max_steps=6)
    with pytest.raises(NonFiniteLossError, match="non-finite"):
        train_classifier(prof, tmp_path / "boom", checkpoint_every_steps=1, progress=False)
    ck = load_training_checkpoint(tmp_path / "boom" / "last.pt")
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


# ------------------------------------------------------------------------------------ outputs and logs
def test_outputs_metrics_log_and_classifier_file(data_root, tmp_path):
    prof = small_profile(data_root, max_steps=4, final_eval=True)
    s = train_classifier(prof, tmp_path / "run", log_every=2, progress=False)
    out = tmp_path / "run"
    for name in ("last.pt", "classifier.pt", "metrics.jsonl", "summary.json", "config.json"):
        assert (out / name).is_file(), name
    assert s["effective_batch"] == 4 and s["world_size"] == 1 and s["steps"] == 4
    assert 0.0 <= s["eval"]["mAP"] <= 1.0 and s["eval"]["num_images"] == 4
    df = read_metrics_log(out)
    assert list(df["step"]) == [2, 3, 4]  # every 2 steps, and at the end of each epoch (3 steps)
    assert {"loss", "lr", "images_per_s", "epoch", "elapsed_s"} <= set(df.columns)
    assert (df["images_per_s"] > 0).all() and np.isfinite(df["loss"]).all()
    ev = read_metrics_log(out, "eval")
    assert ev["mAP"].iloc[0] == pytest.approx(s["eval"]["mAP"])
    assert json.loads((out / "summary.json").read_text())["steps"] == 4
    # classifier.pt loads into a fresh network with the profile's layout (and equals last.pt)
    m = create_model("transcam_tiny", num_classes=4, **SMALL_MODEL)
    load_checkpoint(m, out / "classifier.pt", drop_mismatched_heads=False)
    ck = load_training_checkpoint(out / "last.pt")
    assert all(torch.equal(v, ck["model"][k]) for k, v in m.state_dict().items())
    with pytest.raises(FileNotFoundError, match="metrics log"):
        read_metrics_log(tmp_path / "nowhere")


def test_metrics_log_skips_a_line_cut_by_a_kill(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"event": "train", "step": 1, "loss": 0.5}\n{"event": "train", "step": 2, "lo')
    df = read_metrics_log(p)
    assert list(df["step"]) == [1]


# ------------------------------------------------------------------------------------ CLI
def test_cli_tiny_profile_generates_the_benchmark(tmp_path, monkeypatch, capsys):
    from transcam_nb import cli

    monkeypatch.setenv("TRANSCAM_DATA_DIR", str(tmp_path / "cache"))
    out = tmp_path / "cli_run"
    rc = cli.main(["train", "--profile", "tiny", "--out", str(out), "--max-steps", "2", "--no-progress",
                   "--set", "synthetic={'image_size': 64, 'n_train': 8, 'n_val': 4, 'n_test': 0}",
                   "--set", "num_fg=3", "--set", f"model_overrides={SMALL_MODEL!r}", "--set", "crop_size=64",
                   "--set", "init_checkpoint=None",
                   "--set", "resize_long=[56, 80]", "--set", "batch_size=4", "--set", "final_eval=False",
                   "--device", "cpu", "--amp", "off"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 2
    gen = list((tmp_path / "cache").glob("synthetic-v*"))
    assert len(gen) == 1 and (gen[0] / "JPEGImages").is_dir()
    assert {p.name for p in out.iterdir()} >= {"last.pt", "classifier.pt", "metrics.jsonl", "summary.json"}
    with pytest.raises(SystemExit, match="not a profile field"):
        cli.main(["train", "--out", str(out), "--set", "nope=1"])


def test_tiny_profile_starts_from_its_package_weights():
    prof = get_profile("tiny")
    if not prof.init_checkpoint:
        pytest.skip("the tiny profile has no init_checkpoint")
    from transcam_nb.models import read_state_dict
    from transcam_nb.weights import resolve_checkpoint as resolve_init_path

    try:
        path = resolve_init_path(prof.init_checkpoint)
    except FileNotFoundError as e:
        pytest.skip(f"shipped weights absent: {e}")
    model = build_model_for_profile(prof, verbose=False)
    sd = read_state_dict(path)
    own = model.state_dict()
    body = [k for k in own if "cls_head" not in k]
    assert body and all(torch.equal(own[k], sd[k].to(own[k].dtype)) for k in body)
    assert own["conv_cls_head.weight"].shape[0] == prof.num_fg + 1


def test_paper_profile_refuses_to_start_from_random_weights(tmp_path):
    """Without init weights the paper profile stops before reading any data, naming --init;
    from_scratch=True lets it through (here to the next error: the missing VOC folder)."""
    from transcam_nb import cli
    from transcam_nb.models.factory import MissingInitError

    voc = tmp_path / "no_voc"
    with pytest.raises(MissingInitError, match=r"initial weights.*--init FILE.*from_scratch=True / --from-scratch"):
        train_classifier("paper", tmp_path / "run", data_root=voc, progress=False)
    with pytest.raises(Exception) as e:
        train_classifier("paper", tmp_path / "run", data_root=voc, progress=False, from_scratch=True)
    assert not isinstance(e.value, MissingInitError)
    with pytest.raises(SystemExit, match="--init"):
        cli.main(["train", "--profile", "paper", "--out", str(tmp_path / "cli"), "--voc-root", str(voc)])
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        train_classifier("paper", tmp_path / "run", data_root=voc, init=tmp_path / "nope.pth", progress=False)
    args = cli.build_parser().parse_args(["train", "--profile", "paper", "--out", "x", "--from-scratch"])
    assert args.from_scratch


def test_run_messages_follow_the_caller(data_root, tmp_path, capsys):
    # a script (progress on, no logging set up) sees the start / end lines; the book (progress off,
    # the package's loggers at WARNING) sees nothing, so no paths or log lines land in chapters
    import logging

    pkg = logging.getLogger("transcam_nb")
    saved = (pkg.level, list(pkg.handlers))
    try:
        pkg.handlers.clear()
        pkg.setLevel(logging.WARNING)
        prof = small_profile(data_root, max_steps=1)
        train_classifier(prof, tmp_path / "quiet", progress=False)
        assert "[train]" not in capsys.readouterr().err
        train_classifier(prof, tmp_path / "loud", progress=True)
        err = capsys.readouterr().err
        assert "[train] starting" in err and "[train] done" in err
    finally:
        pkg.setLevel(saved[0])
        pkg.handlers[:] = saved[1]
