"""The settings of a training run (:class:`LoopConfig`), the optimiser and the lr schedules."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Profile

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_NAME", "CLASSIFIER_NAME", "METRICS_NAME", "SUMMARY_NAME", "classifier_weights",
           "NonFiniteLossError", "LoopConfig", "LR_SCHEDULES", "param_groups", "is_transformer_branch",
           "apply_trans_lr_mult", "lr_at", "make_optimizer", "set_lr"]

CHECKPOINT_FORMAT = "transcam_nb.train/1"
CHECKPOINT_NAME = "last.pt"
CLASSIFIER_NAME = "classifier.pt"
METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"


def classifier_weights(run_dir: Path) -> Path:
    """The weights of a classifier run folder (``classifier.pt``, else ``final.pt`` / ``last.pt``)."""
    for name in (CLASSIFIER_NAME, "final.pt", CHECKPOINT_NAME):
        if (Path(run_dir) / name).is_file():
            return Path(run_dir) / name
    raise FileNotFoundError(f"no classifier weights (classifier.pt / last.pt) in {Path(run_dir).name}")


class NonFiniteLossError(RuntimeError):
    """The loss (or the parameters) became NaN/inf; the run stopped without writing that state."""



# =========================================================================================
# optimiser pieces
# =========================================================================================
def is_transformer_branch(name: str) -> bool:
    """Whether parameter ``name`` of a Conformer belongs to its transformer branch: ``trans_1``,
    ``trans_patch_conv``, ``cls_token``, every ``conv_trans_i.trans_block`` and
    ``conv_trans_i.squeeze_block`` (FCUDown). Not the heads (``trans_norm``, ``trans_cls_head``)."""
    parts = name.split(".")
    if parts[0] in ("trans_1", "trans_patch_conv", "cls_token"):
        return True
    return parts[0].startswith("conv_trans_") and len(parts) > 1 and parts[1] in ("trans_block", "squeeze_block")


def apply_trans_lr_mult(model: nn.Module, mult: float) -> int:
    """``mult == 0``: freeze the transformer branch (:func:`is_transformer_branch`,
    ``requires_grad=False``); returns the number of parameters matched."""
    n = 0
    for name, p in model.named_parameters():
        if is_transformer_branch(name):
            n += 1
            if mult == 0:
                p.requires_grad_(False)
    return n


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool = False,
                 trans_lr_mult: float = 1.0) -> list[dict]:
    """AdamW parameter groups. The reference uses **one** group (weight decay on everything);
    ``no_decay_norm_bias`` exempts 1-D parameters (norm weights, biases) and ``cls_token``.
    Every group carries ``lr_mult`` (:func:`set_lr`): ``trans_lr_mult`` for the transformer
    branch (:func:`is_transformer_branch`), 1 elsewhere. Frozen parameters
    (``requires_grad=False``) are left out."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    groups: dict = {(False, 1.0): []}
    if no_decay_norm_bias:  # both groups always exist (optimizer states of earlier runs resume)
        groups[(True, 1.0)] = []
    for n, p in params:
        nd = no_decay_norm_bias and (p.ndim <= 1 or n in skip or n.split(".")[-1] in skip)
        mult = float(trans_lr_mult) if trans_lr_mult != 1.0 and is_transformer_branch(n) else 1.0
        groups.setdefault((nd, mult), []).append(p)
    return [{"params": ps, "weight_decay": 0.0 if nd else weight_decay, "lr_mult": mult}
            for (nd, mult), ps in sorted(groups.items(), key=lambda kv: (kv[0][1] != 1.0, kv[0]))]


def lr_at(step: int, total_steps: int, base_lr: float, schedule: str = "constant", warmup_frac: float = 0.0,
          power: float = 0.9) -> float:
    """Learning rate for optimiser step ``step`` (0-based) of ``total_steps``.

    ``"constant"``: ``base_lr`` throughout (the classifier reference). ``"cosine"``: linear
    warm-up over the first ``W = round(warmup_frac·total)`` steps (``base_lr·(step+1)/W``), then
    ``base_lr·½(1 + cos(π·(step−W)/(total−W)))``, which reaches 0 after the last step.
    ``"poly"``: ``base_lr·(1 − step/total)^power`` (PSA's ``PolyOptimizer``, AffinityNet).
    ``"poly_deeplab"``: ``base_lr·(1 − step/(total + 1))^power`` (the reference DeepLab
    trainer's formula, which never reaches 0). A pure function of the step, so a resumed run
    needs no scheduler state. Groups with an ``lr_mult`` get ``lr_mult`` times this value.
    """
    if schedule == "constant":
        return float(base_lr)
    if schedule == "poly":
        return float(base_lr) * (1.0 - step / max(1, int(total_steps))) ** power
    if schedule == "poly_deeplab":
        return float(base_lr) * (1.0 - step / (int(total_steps) + 1)) ** power
    if schedule != "cosine":
        raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {schedule!r}")
    total = max(1, int(total_steps))
    warm = int(round(float(warmup_frac) * total))
    if step < warm:
        return float(base_lr) * (step + 1) / warm
    span = max(1, total - warm)
    return float(base_lr) * 0.5 * (1.0 + math.cos(math.pi * min(step - warm, span) / span))


LR_SCHEDULES = ("constant", "cosine", "poly", "poly_deeplab")


def make_optimizer(model: nn.Module, cfg: "LoopConfig") -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups` (the classifier and pretraining), or SGD over the
    network's own ``param_groups(lr, weight_decay)`` (AffinityNet, DeepLab: groups with an
    ``lr_mult``), with ``cfg.momentum``."""
    if cfg.optimizer == "adamw":
        if cfg.trans_lr_mult == 0:
            apply_trans_lr_mult(model, 0.0)
        return torch.optim.AdamW(param_groups(model, cfg.weight_decay, cfg.no_decay_norm_bias, cfg.trans_lr_mult),
                                 lr=cfg.lr, eps=1e-8)
    groups = (model.param_groups(cfg.lr, cfg.weight_decay) if hasattr(model, "param_groups")
              else param_groups(model, cfg.weight_decay, cfg.no_decay_norm_bias))
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group's learning rate: ``lr`` times the group's ``lr_mult`` (1 when absent)."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)


# =========================================================================================
# configuration of the generic loop
# =========================================================================================
@dataclass(frozen=True)
class LoopConfig:
    """Everything :func:`train_loop` needs to know (a profile supplies it via :meth:`from_profile`;
    AffinityNet and DeepLab build one from their own settings).

    ``batch_size`` is the global batch (all processes) unless ``per_device_batch``. The run lasts
    ``max_steps`` optimiser steps when set, else ``epochs`` full epochs (``drop_last``).
    """

    epochs: int = 20
    max_steps: int | None = None
    batch_size: int = 8
    per_device_batch: bool = False
    lr: float = 5e-5
    weight_decay: float = 5e-4
    no_decay_norm_bias: bool = False
    lr_schedule: str = "constant"
    warmup_frac: float = 0.0
    trans_lr_mult: float = 1.0  # lr multiplier of a Conformer's transformer branch (AdamW; 0 = frozen)
    poly_power: float = 0.9
    optimizer: str = "adamw"
    momentum: float = 0.0
    grad_clip: float | None = None
    precision: str = "auto"  # "auto" | "fp32" | "bf16" | "fp16": transcam_nb.device.precision_setup
    compile: bool = False
    channels_last: bool = False
    num_workers: int = 4
    seed: int = 0
    deterministic: bool = False
    checkpoint_minutes: float | None = 10.0
    checkpoint_every_steps: int | None = None
    log_every: int = 10

    #: fields that may change between a run and its resumption (they do not change the result,
    #: or only its speed / numerics of mixed precision)
    RESUME_FREE = ("precision", "amp", "compile", "channels_last", "num_workers", "checkpoint_minutes",
                   "checkpoint_every_steps", "log_every", "deterministic")

    @classmethod
    def from_profile(cls, profile: Profile, **overrides) -> "LoopConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: getattr(profile, k) for k in names if hasattr(profile, k)}
        d.update(overrides)
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_steps is None and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1 (or set max_steps), got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if not 0.0 <= self.warmup_frac < 1.0:
            raise ValueError(f"warmup_frac must be in [0, 1), got {self.warmup_frac}")
        if str(self.precision).lower() not in ("auto", "fp32", "bf16", "fp16", "off", "none"):
            raise ValueError(f"precision must be 'auto', 'fp32', 'bf16' or 'fp16', got {self.precision!r}")
        if self.checkpoint_every_steps is not None and self.checkpoint_every_steps < 1:
            raise ValueError(f"checkpoint_every_steps must be >= 1, got {self.checkpoint_every_steps}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")
