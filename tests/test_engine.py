"""The one training loop (transcam_nb.engine) on a toy network: schedules, SGD parameter groups,
stop/resume equality, stage hooks, refusal of changed settings. The classifier's own runs (AMP,
DDP, kills, NaN stops, logs) are tested in test_train.py / test_train_ddp.py."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from transcam_nb.engine import LoopConfig, RunFiles, StageSpec, lr_at, make_optimizer, set_lr, train_loop


def test_poly_schedules_by_hand():
    # AffinityNet (PSA's PolyOptimizer): lr·(1 − step/total)^p; DeepLab: lr·(1 − step/(total+1))^p
    assert lr_at(0, 4, 0.01, "poly") == pytest.approx(0.01)
    assert lr_at(2, 4, 0.01, "poly", power=0.9) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert lr_at(4, 4, 0.01, "poly") == 0.0
    assert lr_at(2, 4, 1e-3, "poly_deeplab", power=0.9) == pytest.approx(1e-3 * (1 - 2 / 5) ** 0.9)
    assert lr_at(4, 4, 1e-3, "poly_deeplab") > 0
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_at(0, 4, 0.1, "step")


class _Grouped(nn.Module):
    """A network with its own SGD groups carrying lr_mult, like AffinityNet and DeepLab."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.body(x)))

    def param_groups(self, lr, weight_decay):
        return [dict(params=list(self.body.parameters()), lr=lr, lr_mult=1.0, weight_decay=weight_decay),
                dict(params=list(self.head.parameters()), lr=10 * lr, lr_mult=10.0, weight_decay=0.0)]


def test_sgd_uses_the_networks_groups_and_lr_mult():
    net = _Grouped()
    opt = make_optimizer(net, LoopConfig(optimizer="sgd", momentum=0.9, lr=0.1, weight_decay=1e-3))
    assert isinstance(opt, torch.optim.SGD) and len(opt.param_groups) == 2
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[1]["weight_decay"] == 0.0
    set_lr(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 5.0]
    assert isinstance(make_optimizer(net, LoopConfig()), torch.optim.AdamW)


class _Data(torch.utils.data.Dataset):
    def __init__(self, n=12):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, generator=g)
        self.y = self.x.sum(1, keepdim=True)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def _run(out, cfg, stage, stop_after=None, seed=0):
    torch.manual_seed(seed)
    net = _Grouped()
    steps = []
    s = train_loop(net, _Data(), nn.functional.mse_loss, out, cfg, device="cpu", progress=False, stage=stage,
                   stop_after=stop_after, callback=lambda info: steps.append((info["step"], info["lr"], info["last"])))
    return net, s, steps


def test_stop_and_resume_equal_an_uninterrupted_run_with_stage_hooks(tmp_path):
    cfg = LoopConfig(epochs=3, batch_size=4, lr=0.05, optimizer="sgd", momentum=0.9, lr_schedule="poly",
                     precision="fp32", num_workers=0, checkpoint_minutes=None)
    seen = {}

    def stage(settings):
        return StageSpec(files=RunFiles(checkpoint="s_last.pt", final="s_final.pt", metrics=None, summary=None,
                                        config=None),
                         checkpoint_format="test/1", settings=settings, settings_resume_free=("workers",),
                         extra_state=lambda step: {"marker": step * 10}, on_resume=lambda ck: seen.update(ck),
                         final_state=lambda net, step: {"w": net.state_dict(), "n": step})

    full, s_full, steps_full = _run(tmp_path / "a", cfg, stage({"k": 1, "workers": 0}))
    assert s_full["complete"] and s_full["steps"] == 9 and [s for s, _, _ in steps_full] == list(range(1, 10))
    assert steps_full[-1][2] and not any(last for _, _, last in steps_full[:-1])
    assert steps_full[3][1] == pytest.approx(0.05 * (1 - 3 / 9) ** 0.9)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["s_final.pt", "s_last.pt"]
    assert torch.load(tmp_path / "a" / "s_final.pt", weights_only=True)["n"] == 9

    _, s_part, steps_part = _run(tmp_path / "b", cfg, stage({"k": 1, "workers": 0}), stop_after=5)
    assert s_part["steps"] == 5 and not s_part["complete"] and steps_part[-1] == (5, steps_full[4][1], True)
    assert not (tmp_path / "b" / "s_final.pt").exists()
    ck = torch.load(tmp_path / "b" / "s_last.pt", weights_only=True)
    assert ck["marker"] == 50 and ck["format"] == "test/1" and ck["settings"] == {"k": 1, "workers": 0}
    # a bookkeeping setting may change; the rest continues from step 5 to the same weights
    rest, s_rest, _ = _run(tmp_path / "b", cfg, stage({"k": 1, "workers": 2}), seed=123)
    assert seen["step"] == 5 and s_rest["steps"] == 9 and s_rest["complete"]
    for (n, p), q in zip(full.state_dict().items(), rest.state_dict().values()):
        torch.testing.assert_close(p, q, msg=n)
    assert math.isclose(s_rest["last_loss"], s_full["last_loss"], rel_tol=1e-6)

    _run(tmp_path / "c", cfg, stage({"k": 1}), stop_after=2)
    with pytest.raises(ValueError, match=r"cannot resume .*k: 1 -> 2"):
        _run(tmp_path / "c", cfg, stage({"k": 2}))
    with pytest.raises(ValueError, match=r"cannot resume .*momentum: 0.9 -> 0.5"):
        _run(tmp_path / "c", cfg.__class__(**{**cfg.to_dict(), "momentum": 0.5}), stage({"k": 1}))
