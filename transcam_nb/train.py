"""Training the classifier (paper §3.3, Eq. 6; REFERENCE.md §4): resumable, mixed precision, multi-GPU.

What the authors' ``train_TransCAM.py`` does, and what the ``paper`` profile therefore does:

* network: Conformer-S in the TransCAM layout (``transcam_small``: 21 outputs, 3×3-conv CAM head,
  last stage at stride 1, drop-path 0.1), initialised from the official **ImageNet Conformer-S**
  checkpoint with both classification heads removed (:func:`build_model_for_profile`);
* loss (Eq. 6): the multilabel soft-margin loss on ``w_conv·z_conv + w_trans·z_trans`` over the
  **foreground channels 1..K** only; output channel 0 (the authors' "background") never receives
  a gradient (:func:`classification_loss`). The paper writes the weights as 0.5/0.5 (its Fig. 4);
  the authors' code *sums* the two logits (1/1). The two differ by a factor 2 on the logits,
  i.e. the same function family up to a scale the heads absorb; with AdamW, whose step does not
  depend on the gradient's scale, the training runs are practically the same. We default to the
  paper's 0.5/0.5 (``--set w_conv=1 --set w_trans=1`` gives the code's sum);
* optimiser: **AdamW**, lr **5e-5**, weight decay **5e-4** on *every* parameter (one group), eps
  1e-8, default betas, **constant** lr, batch **8**, **20** epochs over ``train_aug`` (10,582
  images: 1,322 steps an epoch with ``drop_last``);
* augmentation: random long side in [320, 640], horizontal flip, colour jitter (0.3, 0.3, 0.3,
  0.1), ImageNet normalisation, random 512 crop (:class:`transcam_nb.data.TrainTransform`);
* BatchNorm in train mode (statistics of batch 8).

Differences, all on purpose and documented: the forward pass during training asks for no
attention weights, so attention runs in PyTorch's fused kernel (``scaled_dot_product_attention``);
the authors' forward also computed the refined CAM, whose result the loss ignores. Seeds are set
(the reference sets none; issue #3 of its repository reports ±2 % mIoU between unseeded runs).
Checkpoints hold the whole training state (the reference saves the weights once, at the end).

The ``tiny`` profile keeps the loss, the network class (12 blocks) and the augmentations, and
changes what a CPU needs: a narrow network trained from scratch on the embedded benchmark, lr
1e-3 and weight decay 0.05 (no decay on norms, biases and the class token), and a **step budget**
with 5 % linear warm-up then cosine decay to 0 (``lr_schedule="cosine"``, ``warmup_frac``),
which is what a from-scratch run needs to converge in a few hundred steps.

Pieces (each small enough to show in the book):

:func:`classification_loss`      Eq. 6.
:func:`build_model_for_profile`  network + ImageNet initialisation with the heads dropped.
:func:`build_train_dataset`      the training split with the paper's augmentation.
:func:`lr_at`                    the learning rate of a step (constant, or warm-up + cosine).
:func:`train_loop`               a generic loop over (dataset, loss function): AMP, DDP,
                                 checkpoints, resume, logging. The later pretraining stage
                                 reuses it with another dataset and loss.
:func:`train_classifier`         the thin wrapper the CLI and notebooks call.
:func:`evaluate_classifier`      classification mAP (average precision per class, computed
                                 here) and exact-match accuracy.
:func:`read_metrics_log`         the JSON-lines metrics log as a pandas DataFrame.

Where things run. No device is hard-coded: CPU, CUDA or MPS come from
:func:`transcam_nb.device.get_device`. On CUDA the forward runs under autocast in bf16 where the
GPU supports it, else fp16 with a gradient scaler (``amp``); ``channels_last`` and ``compile``
are options. Under ``torchrun`` (``WORLD_SIZE > 1``) the loop joins the process group (NCCL on
GPUs, gloo on CPUs), wraps the network in ``DistributedDataParallel`` and gives every process its
share of each batch (:class:`ResumableDistributedSampler`); rank 0 alone logs and writes files.
By default ``batch_size`` is the **global** batch (the reference's 8, as its DataParallel split
it over GPUs); ``per_device_batch=True`` makes it the per-process batch instead. The effective
batch is printed and logged.

Nothing lost. ``<out>/last.pt`` is written atomically (temporary file, then ``os.replace``) at
the end of every epoch, every ``checkpoint_minutes`` and optionally every
``checkpoint_every_steps`` steps. It holds the model, optimiser, gradient scaler, the position
in the data (epoch and batch), every process's RNG states, the configuration and the metrics so
far; a run started again on the same folder continues from it (``resume=True``), and with
deterministic settings on a CPU it ends with the same weights as a run never interrupted.
A non-finite loss stops the run with :class:`NonFiniteLossError` before the bad step is applied
and before anything is written, so ``last.pt`` is the last good state. At the end the loop
writes ``<out>/classifier.pt`` (weights only, loadable by
:func:`transcam_nb.models.load_checkpoint`) and ``<out>/summary.json``; ``<out>/metrics.jsonl``
holds one JSON record a line (``event`` = ``start`` | ``train`` | ``epoch`` | ``eval`` | ``end``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from .artifacts import atomic_path, atomic_write
from .device import get_device, seed_everything, set_threads
from .models import create_model, load_checkpoint, read_state_dict
from .models.checkpoints import HEAD_KEYS
from .profiles import Profile, get_profile

__all__ = [
    "CHECKPOINT_FORMAT",
    "NonFiniteLossError",
    "LoopConfig",
    "classification_loss",
    "build_model_for_profile",
    "resolve_data_root",
    "resolve_init_path",
    "parse_set_overrides",
    "build_train_dataset",
    "build_eval_dataset",
    "EvalTransform",
    "param_groups",
    "is_transformer_branch",
    "apply_trans_lr_mult",
    "lr_at",
    "ResumableDistributedSampler",
    "train_loop",
    "train_classifier",
    "average_precision",
    "evaluate_classifier",
    "read_metrics_log",
    "load_training_checkpoint",
]

CHECKPOINT_FORMAT = "transcam_nb.train/1"
CHECKPOINT_NAME = "last.pt"
CLASSIFIER_NAME = "classifier.pt"
METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"


class NonFiniteLossError(RuntimeError):
    """The loss (or the parameters) became NaN/inf; the run stopped without writing that state."""


# =========================================================================================
# Eq. 6
# =========================================================================================
def classification_loss(out, labels: torch.Tensor, w_conv: float = 0.5, w_trans: float = 0.5) -> torch.Tensor:
    """Eq. 6: multilabel soft-margin loss on ``w_conv·z_conv + w_trans·z_trans``.

    ``out`` is a :class:`~transcam_nb.models.ConformerOutput` (``conv_logits``, ``trans_logits``
    of shape ``[B, K+1]``); ``labels`` the ``[B, K]`` multi-hot image labels. Output channel 0 is
    skipped (the authors' untrained "background" channel, REFERENCE.md §2): channel ``k+1`` is
    scored against class ``k``. The loss is computed in float32 whatever the autocast dtype.
    """
    zc, zt = out.conv_logits, out.trans_logits
    if zc.shape != zt.shape or zc.ndim != 2:
        raise ValueError(f"conv_logits {list(zc.shape)} and trans_logits {list(zt.shape)} must both be [B, K+1]")
    if labels.ndim != 2 or labels.shape[0] != zc.shape[0] or labels.shape[1] + 1 != zc.shape[1]:
        raise ValueError(
            f"labels have shape {list(labels.shape)} but the network has {zc.shape[1]} outputs for a batch of "
            f"{zc.shape[0]}: expected labels [B, {zc.shape[1] - 1}] (channel 0 is the untrained background output)")
    logits = w_conv * zc.float() + w_trans * zt.float()
    return F.multilabel_soft_margin_loss(logits[:, 1:], labels.float())


# =========================================================================================
# model and data from a profile
# =========================================================================================
def build_model_for_profile(profile: Profile, init: str | os.PathLike | None = None, *,
                            num_classes: int | None = None, verbose: bool = True) -> nn.Module:
    """The profile's network with ``K + 1`` outputs, initialised from ``init`` (or the profile's
    ``init_checkpoint``) when given.

    As the authors' code (REFERENCE.md §4), both classification heads of the initial checkpoint
    are **always** discarded, even when their shapes would fit (e.g. starting from an already
    trained 21-class file): the network keeps freshly initialised heads and every other tensor
    must load (a clear :class:`~transcam_nb.models.CheckpointError` otherwise).
    """
    K = int(num_classes if num_classes is not None else profile.num_classes)
    kw = dict(profile.model_overrides)
    kw.setdefault("drop_path_rate", profile.drop_path_rate)
    model = create_model(profile.model, num_classes=K + 1, **kw)
    init = init if init is not None else profile.init_checkpoint
    if init:
        init = resolve_init_path(init)
        sd = read_state_dict(init)
        own = model.state_dict()
        dropped = [k for k in HEAD_KEYS if k in sd]
        for k in HEAD_KEYS:  # the authors delete the heads; keep the model's own initialisation
            sd[k] = own[k]
        report = load_checkpoint(model, sd, drop_mismatched_heads=False)
        if verbose:
            print(f"[train] initialised {profile.model} from {init} ({report['num_tensors'] - len(HEAD_KEYS)} "
                  f"tensors; heads dropped: {', '.join(dropped) or 'none in file'})", file=sys.stderr)
    return model


def resolve_init_path(init) -> Path:
    """A checkpoint path; ``"package:NAME"`` means ``transcam_nb/weights/NAME`` (weights shipped
    inside the package, e.g. the tiny profile's pretrained start), see
    :func:`transcam_nb.weights.resolve_checkpoint`."""
    from .weights import resolve_checkpoint

    return resolve_checkpoint(init)


def parse_set_overrides(items, profile: Profile) -> dict:
    """``["lr=1e-4", "resize_long=[256,512]", "jitter=None"]`` → typed profile overrides.

    Values are read as Python literals (numbers, ``None``, ``True``, lists, dicts; anything else is a
    string) and coerced to the type of the profile's current value (a list becomes a tuple for a
    tuple field, an int a float for a float field, ``true``/``false`` a bool). Unknown fields raise
    ``ValueError`` listing the known ones.
    """
    import ast

    known = {f.name for f in dataclasses.fields(profile)}
    out = {}
    for it in items or []:
        if "=" not in it:
            raise ValueError(f"--set expects KEY=VALUE, got {it!r}")
        key, text = (t.strip() for t in it.split("=", 1))
        key = key.replace("-", "_")
        if key not in known:
            raise ValueError(f"--set {key}: not a profile field; known fields: {', '.join(sorted(known))}")
        try:
            val = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            val = text
        cur = getattr(profile, key)
        if isinstance(cur, bool) and isinstance(val, str) and val.lower() in ("true", "false", "yes", "no", "1", "0"):
            val = val.lower() in ("true", "yes", "1")
        elif isinstance(cur, bool) and isinstance(val, int):
            val = bool(val)
        elif isinstance(cur, float) and isinstance(val, int) and not isinstance(val, bool):
            val = float(val)
        elif isinstance(cur, tuple) and isinstance(val, list):
            val = tuple(val)
        elif key in ("jitter", "resize_long", "scales", "crf_thresholds") and isinstance(val, list):
            val = tuple(val)
        if cur is not None and val is not None and not isinstance(val, type(cur)) and not (
                isinstance(cur, float) and isinstance(val, (int, float))):
            raise ValueError(f"--set {key}={text!r}: expected {type(cur).__name__} (like {cur!r})")
        out[key] = val
    return out


def resolve_data_root(profile: Profile, data_root=None, *, progress: bool = True) -> Path:
    """The dataset folder: ``data_root``, else ``profile.data_root``, else the embedded benchmark
    (generated on first use by :func:`transcam_nb.data.synthetic.ensure`) when the profile has
    ``synthetic`` parameters. The paper profile needs a VOC path."""
    root = data_root if data_root is not None else profile.data_root
    if root is not None:
        return Path(root).expanduser()
    if profile.synthetic is None:
        raise ValueError(
            f"profile {profile.name!r} has no data_root: give the VOC 2012 folder (--voc-root "
            "VOCdevkit/VOC2012, or data_root=...), the folder that holds JPEGImages/")
    from .data import synthetic

    params = dict(profile.synthetic)
    params.setdefault("num_classes", profile.num_classes)
    seed = params.pop("seed", 0)
    return synthetic.ensure(seed=seed, progress=progress, **params)


def build_train_dataset(profile: Profile, data_root=None, *, sbd_root=None, cls_labels=None,
                        allow_pickle: bool = False, progress: bool = True):
    """The profile's training split (``train_split``) in "cls" mode with the paper's augmentation
    (``resize_long``, flip, ``jitter``, ImageNet normalisation, ``crop_size`` crop), seeded from
    ``profile.seed``. Items are ``(image [3, crop, crop], labels [K])``."""
    from .data import TrainTransform, VOCDataset

    root = resolve_data_root(profile, data_root, progress=progress)
    t = TrainTransform(resize_long=tuple(profile.resize_long) if profile.resize_long else None,
                       crop=int(profile.crop_size), flip=True,
                       jitter=tuple(profile.jitter) if profile.jitter else None, seed=int(profile.seed))
    ds = VOCDataset(root, profile.train_split, mode="cls", transform=t,
                    sbd_root=sbd_root if sbd_root is not None else profile.sbd_root,
                    cls_labels=cls_labels if cls_labels is not None else profile.cls_labels,
                    label_source=profile.label_source, allow_pickle=allow_pickle)
    if ds.num_classes != profile.num_classes:
        raise ValueError(f"the dataset at {root} has {ds.num_classes} classes but profile {profile.name!r} "
                         f"says num_classes={profile.num_classes}; pass --set num_classes={ds.num_classes}")
    return ds


class EvalTransform:
    """Inference preprocessing for classification: a square bicubic resize to ``size`` (as the
    authors' CAM inference resizes to squares) and ImageNet normalisation → float32 [3, s, s]."""

    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, image, **_):
        from PIL import Image

        from .data import normalize

        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image, np.uint8))
        image = image.convert("RGB").resize((self.size, self.size), Image.BICUBIC)
        return torch.from_numpy(normalize(image))


def build_eval_dataset(profile: Profile, data_root=None, split: str | None = None, *, size: int | None = None,
                       cls_labels=None, allow_pickle: bool = False, progress: bool = True):
    """``split`` (default ``profile.val_split``) in "cls" mode with :class:`EvalTransform`
    at ``size`` (default ``profile.crop_size``)."""
    from .data import VOCDataset

    root = resolve_data_root(profile, data_root, progress=progress)
    return VOCDataset(root, split or profile.val_split, mode="cls",
                      transform=EvalTransform(size or profile.crop_size),
                      cls_labels=cls_labels if cls_labels is not None else profile.cls_labels,
                      label_source=profile.label_source, allow_pickle=allow_pickle)


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
    Every group carries ``lr_mult`` (the loop sets ``lr = lr_mult × schedule``):
    ``trans_lr_mult`` for the transformer branch (:func:`is_transformer_branch`; issue 11),
    1 elsewhere. Frozen parameters (``requires_grad=False``) are left out."""
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


def lr_at(step: int, total_steps: int, base_lr: float, schedule: str = "constant", warmup_frac: float = 0.0) -> float:
    """Learning rate for optimiser step ``step`` (0-based) of ``total_steps``.

    ``"constant"``: ``base_lr`` throughout (the reference). ``"cosine"``: linear warm-up over the
    first ``W = round(warmup_frac·total)`` steps (``base_lr·(step+1)/W``), then
    ``base_lr·½(1 + cos(π·(step−W)/(total−W)))``, which reaches 0 after the last step.
    A pure function of the step, so a resumed run needs no scheduler state.
    """
    if schedule == "constant":
        return float(base_lr)
    if schedule != "cosine":
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {schedule!r}")
    total = max(1, int(total_steps))
    warm = int(round(float(warmup_frac) * total))
    if step < warm:
        return float(base_lr) * (step + 1) / warm
    span = max(1, total - warm)
    return float(base_lr) * 0.5 * (1.0 + math.cos(math.pi * min(step - warm, span) / span))


# =========================================================================================
# configuration of the generic loop
# =========================================================================================
@dataclass(frozen=True)
class LoopConfig:
    """Everything :func:`train_loop` needs to know (a profile supplies it via :meth:`from_profile`).

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
    trans_lr_mult: float = 1.0  # learning-rate multiplier of a Conformer's transformer branch (0 = frozen)
    grad_clip: float | None = None
    amp: str = "auto"
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
    RESUME_FREE = ("amp", "compile", "channels_last", "num_workers", "checkpoint_minutes",
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
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if not 0.0 <= self.warmup_frac < 1.0:
            raise ValueError(f"warmup_frac must be in [0, 1), got {self.warmup_frac}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ValueError(f"amp must be 'auto', 'bf16', 'fp16' or 'off', got {self.amp!r}")
        if self.checkpoint_every_steps is not None and self.checkpoint_every_steps < 1:
            raise ValueError(f"checkpoint_every_steps must be >= 1, got {self.checkpoint_every_steps}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")


# =========================================================================================
# data order: a resumable, sharded sampler
# =========================================================================================
class ResumableDistributedSampler(DistributedSampler):
    """A :class:`~torch.utils.data.distributed.DistributedSampler` that can start mid-epoch.

    Epoch ``e`` uses the permutation ``torch.randperm(n)`` of a generator seeded with
    ``seed + e`` (the same on every process). The epoch is cut into ``n // global_batch`` global
    batches (``drop_last``); process ``r`` of ``W`` takes slice ``[r·b, (r+1)·b)`` of each global
    batch (``b = global_batch / W``), so a DDP run sees the same global batches as a one-process
    run. :meth:`set_position` skips the first batches of an epoch (resume). Items are yielded
    as ``(epoch, index)`` pairs for :class:`EpochIndexed`, which hands the epoch to the dataset's
    ``set_epoch`` inside the worker, so augmentations depend only on (seed, epoch, index), also
    with persistent DataLoader workers.
    """

    def __init__(self, dataset, *, batch_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        if batch_size % num_replicas:
            raise ValueError(f"the global batch {batch_size} is not divisible by the {num_replicas} processes")
        self.global_batch = int(batch_size)
        self.local_batch = self.global_batch // num_replicas
        self.n = len(dataset)
        self.steps_per_epoch = self.n // self.global_batch
        if self.steps_per_epoch < 1:
            raise ValueError(f"the dataset has {self.n} items, fewer than one global batch of {self.global_batch}")
        self.start_batch = 0

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        """Next iteration yields epoch ``epoch`` from its batch ``start_batch`` on."""
        self.set_epoch(epoch)
        if not 0 <= start_batch <= self.steps_per_epoch:
            raise ValueError(f"start_batch {start_batch} outside 0..{self.steps_per_epoch}")
        self.start_batch = int(start_batch)

    def order(self, epoch: int) -> list[int]:
        """The global order of epoch ``epoch`` (all processes)."""
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator()
        g.manual_seed(int(self.seed) + int(epoch))
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        perm = self.order(self.epoch)
        B, b, r = self.global_batch, self.local_batch, self.rank
        for k in range(self.start_batch, self.steps_per_epoch):
            for i in perm[k * B + r * b: k * B + (r + 1) * b]:
                yield (self.epoch, i)

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_batch) * self.local_batch


class EpochIndexed(Dataset):
    """Wraps a dataset so that it is indexed by ``(epoch, index)`` pairs: calls
    ``dataset.set_epoch(epoch)`` (when the dataset has it) before ``dataset[index]``."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        epoch, index = item
        if hasattr(self.dataset, "set_epoch") and getattr(self.dataset, "epoch", None) != epoch:
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


# =========================================================================================
# helpers: distributed, devices, RNG, files
# =========================================================================================
def _dist_env() -> tuple[int, int, int]:
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, ws, local


def _init_distributed(device: torch.device) -> tuple[int, int, bool]:
    """Join torchrun's process group when ``WORLD_SIZE > 1``. Returns (rank, world, created)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    rank, ws, _ = _dist_env()
    if ws <= 1:
        return 0, 1, False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), True


def _rng_state() -> dict:
    st = {
        "torch": torch.get_rng_state(),
        "numpy": _np_state_to_dict(np.random.get_state()),
        "python": _py_state_to_list(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _np_state_to_dict(s) -> dict:
    return {"keys": torch.from_numpy(np.asarray(s[1], np.int64)), "pos": int(s[2]),
            "has_gauss": int(s[3]), "gauss": float(s[4])}


def _py_state_to_list(s) -> list:
    version, internal, gauss = s
    return [int(version), list(internal), gauss]


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    v, internal, gauss = st["python"]
    random.setstate((v, tuple(internal), gauss))
    if "cuda" in st and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(st["cuda"])
        except Exception:  # another GPU count: keep the fresh seeds
            pass


def _to_device(obj, device, non_blocking=False, channels_last=False):
    if isinstance(obj, torch.Tensor):
        t = obj.to(device, non_blocking=non_blocking)
        if channels_last and t.ndim == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(o, device, non_blocking, channels_last) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_device(v, device, non_blocking, channels_last) for k, v in obj.items()}
    return obj


def _batch_size_of(x) -> int:
    if isinstance(x, torch.Tensor):
        return int(x.shape[0])
    if isinstance(x, (list, tuple)) and x:
        return _batch_size_of(x[0])
    if isinstance(x, dict) and x:
        return _batch_size_of(next(iter(x.values())))
    return 1


def _amp_setup(mode: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use a GradScaler)."""
    if mode == "off":
        return None, False
    if mode == "auto":
        if device.type != "cuda":
            return None, False
        return (torch.bfloat16, False) if torch.cuda.is_bf16_supported() else (torch.float16, True)
    if mode == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise RuntimeError(f"amp='bf16' was asked for but {torch.cuda.get_device_name(device)} has no bf16; "
                               "use amp='fp16' (with a gradient scaler) or 'off'")
        return torch.bfloat16, False
    if mode == "fp16":
        if device.type == "cpu":
            raise RuntimeError("amp='fp16' needs a GPU; on a CPU use amp='bf16' or 'off'")
        return torch.float16, device.type == "cuda"
    raise ValueError(f"unknown amp mode {mode!r}")


def _params_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, default=_json_default) + "\n")
        f.flush()


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _read_jsonl(path: Path) -> list[dict]:
    out = []
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: drop it
            continue
    return out


def _truncate_log(path: Path, step: int) -> None:
    """Keep only the log records of steps <= ``step`` (a resumed run re-does the later ones)."""
    if not path.is_file():
        return
    keep = [r for r in _read_jsonl(path) if int(r.get("step", 0)) <= step]
    with atomic_write(path, "w") as f:
        for r in keep:
            f.write(json.dumps(r, default=_json_default) + "\n")


def _write_json(path: Path, obj) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)


def _save_torch(path: Path, obj) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_training_checkpoint(path: str | os.PathLike) -> dict:
    """Read a ``last.pt`` written by :func:`train_loop` (``weights_only=True``: data only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training checkpoint {path} does not exist")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(f"cannot read training checkpoint {path} ({type(e).__name__}: {e}); it is corrupt or "
                           "not a transcam_nb training checkpoint") from e
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise RuntimeError(f"{path} is not a transcam_nb training checkpoint (format {CHECKPOINT_FORMAT!r}); "
                           "to start from weights use init=/--init instead of resuming")
    return ck


# =========================================================================================
# the generic loop
# =========================================================================================
def train_loop(
    model: nn.Module,
    dataset,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    out_dir: str | os.PathLike,
    config: LoopConfig,
    *,
    device: str | torch.device | None = None,
    resume: bool = True,
    progress: bool = True,
    callback: Callable[[dict], None] | None = None,
    run_info: dict | None = None,
    desc: str = "train",
) -> dict:
    """Train ``model`` in place on ``dataset`` with ``loss_fn`` (see the module docstring).

    Parameters
    ----------
    model
        Called as ``model(x)``; its output goes to ``loss_fn(output, target)``.
    dataset
        Items ``(x, target)`` (tensors, or tuples/dicts of tensors). When it has
        ``set_epoch(e)`` it is called with the epoch inside the loader, so augmentations can
        depend on (seed, epoch, index) only.
    loss_fn
        ``loss_fn(output, target) -> scalar tensor`` (mean over the local batch).
    out_dir
        Where ``last.pt``, ``classifier.pt``, ``metrics.jsonl`` and ``summary.json`` go.
    config
        A :class:`LoopConfig`.
    resume
        Continue from ``<out_dir>/last.pt`` when it exists (a finished run returns at once).
        ``False`` starts afresh and replaces the folder's checkpoint and log.
    callback
        Called after every optimiser step with a dict (``step``, ``epoch``, ``batch``, ``loss``,
        ``lr``, ``model``); tests use it to interrupt a run.
    run_info
        Extra JSON-able facts stored in the checkpoint and the log (e.g. the profile). A resume
        checks that its ``"profile"`` entry has not changed, except :attr:`LoopConfig.RESUME_FREE`.

    Returns a summary dict (``steps``, ``epochs``, ``final_loss``, ``wall_time_s``,
    ``train_time_s``, ``images_per_s``, ``effective_batch``, ``world_size``, paths, ...).
    """
    import torch.distributed as dist

    config.validate()
    t_start = time.perf_counter()
    device = get_device(device)
    rank, world, created_pg = _init_distributed(device)
    try:
        if device.type == "cuda":
            if world > 1 and device.index is None:
                device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        return _train_loop(model, dataset, loss_fn, Path(out_dir), config, device=device, rank=rank,
                           world=world, resume=resume, progress=progress, callback=callback,
                           run_info=run_info or {}, desc=desc, t_start=t_start)
    finally:
        if created_pg and dist.is_initialized():
            dist.destroy_process_group()


def _train_loop(model, dataset, loss_fn, out_dir: Path, cfg: LoopConfig, *, device, rank, world, resume,
                progress, callback, run_info, desc, t_start) -> dict:
    import torch.distributed as dist
    from tqdm.auto import tqdm

    is_main = rank == 0
    ckpt_path = out_dir / CHECKPOINT_NAME
    log_path = out_dir / METRICS_NAME
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        if is_main:
            print(f"[{desc}] {msg}", file=sys.stderr, flush=True)

    global_batch = cfg.batch_size * (world if cfg.per_device_batch else 1)
    if global_batch % world:
        raise ValueError(f"batch_size={cfg.batch_size} (global) is not divisible by the {world} processes; "
                         "change it or set per_device_batch=True")
    local_batch = global_batch // world
    seed_everything(cfg.seed + rank, deterministic=cfg.deterministic)

    sampler = ResumableDistributedSampler(dataset, batch_size=global_batch, num_replicas=world, rank=rank,
                                          seed=cfg.seed, shuffle=True)
    steps_per_epoch = sampler.steps_per_epoch
    total_steps = int(cfg.max_steps) if cfg.max_steps is not None else cfg.epochs * steps_per_epoch

    # -- model, optimiser, scaler ----------------------------------------------------------
    raw_model = model
    raw_model.to(device)
    if cfg.channels_last:
        raw_model.to(memory_format=torch.channels_last)
    if cfg.trans_lr_mult == 0:
        apply_trans_lr_mult(raw_model, 0.0)
    optimizer = torch.optim.AdamW(param_groups(raw_model, cfg.weight_decay, cfg.no_decay_norm_bias,
                                               cfg.trans_lr_mult), lr=cfg.lr, eps=1e-8)
    amp_dtype, use_scaler = _amp_setup(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler) if use_scaler else None

    # -- resume ------------------------------------------------------------------------------
    step, epoch, batch_in_epoch, train_time_prev = 0, 0, 0, 0.0
    resumed_from = None
    ck = None
    if resume and ckpt_path.is_file():
        ck = load_training_checkpoint(ckpt_path)
        _check_resume_compatible(ck, cfg, run_info, world_size=world, global_batch=global_batch, path=ckpt_path)
        raw_model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        step, epoch, batch_in_epoch = int(ck["step"]), int(ck["epoch"]), int(ck["batch_in_epoch"])
        train_time_prev = float(ck.get("train_time_s", 0.0))
        rngs = ck.get("rng") or []
        if len(rngs) == world:
            _set_rng_state(rngs[rank])
        resumed_from = step
        if ck.get("complete") and step >= total_steps:
            say(f"{ckpt_path} is a finished run ({step} steps); nothing to do (resume=False to train again)")
            summ = out_dir / SUMMARY_NAME
            if summ.is_file():
                return json.loads(summ.read_text())
            return {"steps": step, "checkpoint": str(ckpt_path), "complete": True}
    elif is_main:  # a fresh start: an old run in this folder must not be resumed by a later call
        for name in (METRICS_NAME, CHECKPOINT_NAME, CLASSIFIER_NAME, SUMMARY_NAME):
            if (out_dir / name).exists():
                (out_dir / name).unlink()
    if is_main and resumed_from is not None:
        _truncate_log(log_path, step)

    # -- wrap: DDP, compile -------------------------------------------------------------------
    net = raw_model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(raw_model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)

    # -- data -------------------------------------------------------------------------------
    nw = int(cfg.num_workers)
    loader_kw = dict(batch_size=local_batch, sampler=sampler, num_workers=nw, drop_last=False,
                     pin_memory=device.type == "cuda")
    if nw > 0:
        from .data import worker_init_fn

        g = torch.Generator()
        g.manual_seed(cfg.seed * 1000 + rank)
        loader_kw.update(worker_init_fn=worker_init_fn, generator=g, persistent_workers=device.type == "cuda")
    loader = DataLoader(EpochIndexed(dataset), **loader_kw)

    n_params = sum(p.numel() for p in raw_model.parameters())
    start_rec = {
        "event": "resume" if resumed_from is not None else "start", "step": step, "epoch": epoch,
        "time": time.time(), "device": str(device), "world_size": world, "local_batch": local_batch,
        "effective_batch": global_batch, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
        "num_params": n_params, "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "off",
        "config": cfg.to_dict(), **{k: v for k, v in run_info.items() if k != "profile"},
    }
    if is_main:
        _append_jsonl(log_path, start_rec)
        if resumed_from is None:
            _write_json(out_dir / "config.json", {"loop": cfg.to_dict(), **run_info})
    say(f"{'resuming at step ' + str(step) if resumed_from is not None else 'starting'}: {total_steps} steps "
        f"({steps_per_epoch}/epoch), effective batch {global_batch} = {world} process(es) × {local_batch}, "
        f"device {device}, amp {start_rec['amp']}, {n_params / 1e6:.2f} M parameters, out {out_dir}")

    # -- state kept across steps ---------------------------------------------------------------
    last_ckpt_time = time.perf_counter()
    win_loss, win_n, win_t0, win_images = 0.0, 0, time.perf_counter(), 0
    epoch_loss, epoch_n = 0.0, 0
    if ck is not None:
        epoch_loss, epoch_n = float(ck.get("epoch_loss_sum", 0.0)), int(ck.get("epoch_loss_n", 0))
    last_logged: dict = {}
    images_seen_this_run = 0

    def save_checkpoint(complete: bool = False) -> None:
        """Collective (every process takes part); rank 0 writes."""
        if not _params_finite(raw_model):
            raise NonFiniteLossError(
                f"the parameters became non-finite by step {step}; nothing was written, so {ckpt_path} still holds "
                "the last good state. Lower the learning rate or enable gradient clipping (grad_clip).")
        rng = [_rng_state()]
        if world > 1:
            rng = [None] * world
            dist.all_gather_object(rng, _rng_state())
        if is_main:
            state = {
                "format": CHECKPOINT_FORMAT,
                "model": raw_model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                "world_size": world, "effective_batch": global_batch,
                "rng": rng, "config": cfg.to_dict(), "run_info": json.loads(json.dumps(run_info, default=_json_default)),
                "train_time_s": train_time_prev + (time.perf_counter() - t_start),
                "epoch_loss_sum": epoch_loss, "epoch_loss_n": epoch_n,
                "last_loss": last_logged.get("loss"), "complete": bool(complete),
            }
            _save_torch(ckpt_path, state)
        if world > 1:
            dist.barrier()

    bar = tqdm(total=total_steps, initial=step, desc=desc, disable=not (progress and is_main), dynamic_ncols=True,
               unit="step")
    net.train()
    try:
        while step < total_steps:
            sampler.set_position(epoch, batch_in_epoch)
            for x, target in loader:
                lr = lr_at(step, total_steps, cfg.lr, cfg.lr_schedule, cfg.warmup_frac)
                for g_ in optimizer.param_groups:
                    g_["lr"] = lr * g_.get("lr_mult", 1.0)
                x = _to_device(x, device, non_blocking=True, channels_last=cfg.channels_last)
                target = _to_device(target, device, non_blocking=True)
                if amp_dtype is not None:
                    with torch.autocast(device_type=device.type, dtype=amp_dtype):
                        out = net(x)
                        loss = loss_fn(out, target)
                else:
                    out = net(x)
                    loss = loss_fn(out, target)

                # one collective per step: mean loss over processes, any non-finite, and rank 0's
                # time-based checkpoint decision (so that every process checkpoints together)
                due_time = (cfg.checkpoint_minutes is not None
                            and time.perf_counter() - last_ckpt_time >= 60.0 * cfg.checkpoint_minutes)
                flags = torch.stack([
                    loss.detach().float(),
                    (~torch.isfinite(loss.detach())).float(),
                    torch.tensor(float(due_time and is_main), device=loss.device),
                ])
                if world > 1:
                    dist.all_reduce(flags)  # a NaN on any process makes the sum NaN: all stop together
                loss_val, bad, due = flags.tolist()
                loss_val /= world
                if bad > 0 or not math.isfinite(loss_val):
                    raise NonFiniteLossError(
                        f"non-finite loss ({loss_val}) at step {step + 1} (epoch {epoch}, batch {batch_in_epoch}); "
                        f"the run stopped before applying it. The last good checkpoint is {ckpt_path}"
                        f"{'' if ckpt_path.is_file() else ' (none written yet)'}. Lower the learning rate, "
                        "enable grad_clip, or try amp='off' / 'bf16'.")

                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    if cfg.grad_clip:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    if cfg.grad_clip:
                        torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
                    optimizer.step()

                step += 1
                batch_in_epoch += 1
                n_img = _batch_size_of(x) * world
                images_seen_this_run += n_img
                win_loss += loss_val
                win_n += 1
                win_images += n_img
                epoch_loss += loss_val
                epoch_n += 1
                bar.update(1)

                if win_n >= cfg.log_every or step == total_steps or batch_in_epoch == steps_per_epoch:
                    dt = max(1e-9, time.perf_counter() - win_t0)
                    last_logged = {"event": "train", "step": step, "epoch": epoch, "loss": win_loss / win_n,
                                   "lr": lr, "images_per_s": win_images / dt, "steps": win_n,
                                   "elapsed_s": train_time_prev + time.perf_counter() - t_start}
                    if is_main:
                        _append_jsonl(log_path, last_logged)
                        bar.set_postfix(loss=f"{last_logged['loss']:.4f}", img_s=f"{last_logged['images_per_s']:.1f}",
                                        lr=f"{lr:.2e}")
                    win_loss, win_n, win_images, win_t0 = 0.0, 0, 0, time.perf_counter()

                if callback is not None:
                    callback({"step": step, "epoch": epoch, "batch": batch_in_epoch, "loss": loss_val, "lr": lr,
                              "model": raw_model, "total_steps": total_steps})

                end_of_epoch = batch_in_epoch == steps_per_epoch
                if end_of_epoch:
                    if is_main:
                        _append_jsonl(log_path, {"event": "epoch", "step": step, "epoch": epoch,
                                                 "loss": epoch_loss / max(1, epoch_n), "steps": epoch_n})
                    epoch, batch_in_epoch = epoch + 1, 0
                    epoch_loss, epoch_n = 0.0, 0
                every = cfg.checkpoint_every_steps
                if step < total_steps and (end_of_epoch or due > 0 or (every and step % every == 0)):
                    save_checkpoint()
                    last_ckpt_time = time.perf_counter()
                if step >= total_steps:
                    break
                if end_of_epoch:
                    break
    finally:
        bar.close()

    # -- the end -------------------------------------------------------------------------------
    save_checkpoint(complete=True)
    wall = time.perf_counter() - t_start
    final_loss = last_logged.get("loss")
    summary = {
        "steps": step, "total_steps": total_steps, "epochs": step / steps_per_epoch,
        "steps_per_epoch": steps_per_epoch, "final_loss": final_loss,
        "wall_time_s": wall, "train_time_s": train_time_prev + wall,
        "images_per_s": images_seen_this_run / wall if wall > 0 else None,
        "effective_batch": global_batch, "local_batch": local_batch, "world_size": world,
        "device": str(device), "amp": start_rec["amp"], "resumed_from_step": resumed_from,
        "checkpoint": str(ckpt_path), "classifier": str(out_dir / CLASSIFIER_NAME),
        "metrics_log": str(log_path), "out_dir": str(out_dir), "complete": True,
    }
    if is_main:
        _save_torch(out_dir / CLASSIFIER_NAME, {"model": raw_model.state_dict(), "steps": step,
                                                "run_info": json.loads(json.dumps(run_info, default=_json_default))})
        _append_jsonl(log_path, {"event": "end", "step": step, "epoch": epoch, "final_loss": final_loss,
                                 "wall_time_s": wall, "train_time_s": summary["train_time_s"]})
        _write_json(out_dir / SUMMARY_NAME, summary)
    say(f"done: {step} steps, final loss {final_loss if final_loss is None else round(final_loss, 4)}, "
        f"{wall:.1f} s this run ({summary['train_time_s']:.1f} s in all)")
    return summary


#: profile fields, besides the LoopConfig ones, that change what a training run computes (a resume
#: must not change them; paths, devices and inference settings may change)
_PROFILE_TRAINING_FIELDS = ("model", "model_overrides", "dataset", "train_split", "num_classes", "crop_size",
                            "resize_long", "jitter", "w_conv", "w_trans", "drop_path_rate", "synthetic",
                            "label_source")


def _check_resume_compatible(ck: dict, cfg: LoopConfig, run_info: dict, *, world_size: int, global_batch: int,
                             path: Path) -> None:
    old = dict(ck.get("config") or {})
    new = cfg.to_dict()
    diffs = [f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in new
             if k not in LoopConfig.RESUME_FREE and json.dumps(old.get(k), default=str) != json.dumps(new[k], default=str)]
    old_prof = (ck.get("run_info") or {}).get("profile") or {}
    new_prof = json.loads(json.dumps(run_info.get("profile") or {}, default=_json_default))
    for k in _PROFILE_TRAINING_FIELDS:
        if k not in old_prof and k not in new_prof:
            continue
        if json.dumps(old_prof.get(k), sort_keys=True) != json.dumps(new_prof.get(k), sort_keys=True):
            diffs.append(f"profile.{k}: {old_prof.get(k)!r} -> {new_prof.get(k)!r}")
    if int(ck.get("effective_batch", global_batch)) != global_batch:
        diffs.append(f"effective batch: {ck.get('effective_batch')} -> {global_batch}")
    if diffs:
        raise ValueError(
            f"cannot resume from {path}: it was made with other settings ({'; '.join(diffs)}). Use resume=False "
            "(--no-resume) to start again in this folder, or another output folder.")


# =========================================================================================
# the classifier: thin wrapper
# =========================================================================================
def train_classifier(
    profile: Profile | str = "tiny",
    out_dir: str | os.PathLike = "runs/classifier",
    *,
    resume: bool = True,
    init: str | os.PathLike | None = None,
    max_steps: int | None = None,
    device: str | torch.device | None = None,
    data_root=None,
    sbd_root=None,
    cls_labels=None,
    allow_pickle: bool = False,
    log_every: int = 10,
    checkpoint_minutes: float | None = None,
    checkpoint_every_steps: int | None = None,
    progress: bool = True,
    callback: Callable[[dict], None] | None = None,
    model: nn.Module | None = None,
    **overrides,
) -> dict:
    """Train the TransCAM classifier of ``profile`` (Eq. 6) into ``out_dir``; see the module docstring.

    ``profile`` is a :class:`~transcam_nb.profiles.Profile` or a name; ``overrides`` replace
    profile fields (``lr=1e-4``, ``batch_size=4``, ...). ``init`` (or the profile's
    ``init_checkpoint``) is the ImageNet Conformer file whose heads are dropped; ``max_steps``
    overrides the profile's budget (the lr schedule follows it). ``data_root`` / ``sbd_root`` /
    ``cls_labels`` point at VOC (the tiny profile generates its benchmark when ``data_root`` is
    ``None``). ``checkpoint_minutes`` overrides the profile's; ``checkpoint_every_steps``
    adds step-based checkpoints. ``model`` trains a network you built (in place) instead of
    building one from the profile. Returns :func:`train_loop`'s summary plus ``eval`` (mAP and
    exact-match accuracy on ``val_split`` when ``profile.final_eval``).
    """
    prof = get_profile(profile) if isinstance(profile, str) else profile
    if max_steps is not None:
        overrides["max_steps"] = int(max_steps)
    if data_root is not None:
        overrides["data_root"] = str(data_root)
    if sbd_root is not None:
        overrides["sbd_root"] = str(sbd_root)
    if cls_labels is not None:
        overrides["cls_labels"] = str(cls_labels)
    if init is not None:
        overrides["init_checkpoint"] = str(init)
    if checkpoint_minutes is not None:
        overrides["checkpoint_minutes"] = checkpoint_minutes
    if overrides:
        prof = prof.replace(**overrides)
    set_threads(prof.threads)
    rank, _, _ = _dist_env()
    out_dir = Path(out_dir)
    resuming = resume and (out_dir / CHECKPOINT_NAME).is_file()
    if prof.init_checkpoint and not resuming and model is None:  # fail before generating or reading data
        p = resolve_init_path(prof.init_checkpoint)
        if not p.is_file():
            raise FileNotFoundError(f"init checkpoint {str(p)!r} does not exist (expected the official ImageNet "
                                    f"Conformer file for {prof.model}, e.g. Conformer_small_patch16.pth)")
    dataset = build_train_dataset(prof, allow_pickle=allow_pickle, progress=progress and rank == 0)
    if model is None:
        seed_everything(prof.seed)  # the same initial weights on every process (DDP also broadcasts rank 0's)
        model = build_model_for_profile(prof, None if resuming else prof.init_checkpoint, num_classes=dataset.num_classes,
                                        verbose=rank == 0)
    cfg = LoopConfig.from_profile(prof, log_every=log_every, checkpoint_every_steps=checkpoint_every_steps)
    w_conv, w_trans = float(prof.w_conv), float(prof.w_trans)

    def loss_fn(out, labels):
        return classification_loss(out, labels, w_conv, w_trans)

    run_info = {"stage": "classifier", "profile": prof.to_dict(), "data_root": str(dataset.root),
                "train_split": prof.train_split, "num_train": len(dataset), "class_names": list(dataset.class_names)}
    summary = train_loop(model, dataset, loss_fn, out_dir, cfg, device=prof.device if device is None else device,
                         resume=resume, progress=progress, callback=callback, run_info=run_info, desc="train")
    if prof.final_eval and rank == 0 and "eval" not in summary:
        try:
            val = build_eval_dataset(prof, dataset.root, allow_pickle=allow_pickle, progress=False)
        except FileNotFoundError as e:
            print(f"[train] no final evaluation: {e}", file=sys.stderr)
        else:
            dev = get_device(prof.device if device is None else device)
            if dev.type == "cuda" and dev.index is None:
                dev = torch.device("cuda", _dist_env()[2])
            ev = evaluate_classifier(model, val, w_conv=w_conv, w_trans=w_trans, device=dev,
                                     batch_size=max(1, prof.batch_size), amp_dtype=_amp_setup(prof.amp, dev)[0],
                                     num_workers=int(prof.num_workers), progress=progress)
            ev = {k: v for k, v in ev.items() if k not in ("scores", "labels")}
            ev["split"] = val.split
            summary["eval"] = ev
            _append_jsonl(Path(summary["metrics_log"]),
                          {"event": "eval", "step": summary["steps"], "split": val.split, "mAP": ev["mAP"],
                           "exact_match": ev["exact_match"], "num_images": ev["num_images"]})
            _write_json(out_dir / SUMMARY_NAME, summary)
            print(f"[train] {val.split}: mAP {ev['mAP']:.4f}, exact-match accuracy {ev['exact_match']:.4f} "
                  f"({ev['num_images']} images)", file=sys.stderr)
    return summary


# =========================================================================================
# evaluation
# =========================================================================================
def average_precision(scores, targets) -> np.ndarray:
    """Average precision of each column: the area under the precision-recall step curve,
    ``AP = Σ_n (R_n − R_{n−1}) · P_n`` over the distinct score thresholds (tied scores form one
    threshold), i.e. the non-interpolated AP (scikit-learn's ``average_precision_score``).

    ``scores`` and ``targets`` are ``[N, K]`` (or ``[N]``); a column without positives gets NaN.
    """
    s = np.asarray(scores, np.float64)
    y = np.asarray(targets) > 0.5
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and targets {y.shape} must have the same shape")
    squeeze = s.ndim == 1
    if squeeze:
        s, y = s[:, None], y[:, None]
    out = np.full(s.shape[1], np.nan)
    for c in range(s.shape[1]):
        npos = int(y[:, c].sum())
        if npos == 0:
            continue
        order = np.argsort(-s[:, c], kind="mergesort")
        sc, yc = s[order, c], y[order, c]
        tp = np.cumsum(yc)
        last = np.r_[np.nonzero(np.diff(sc))[0], len(sc) - 1]  # last index of each threshold
        tp = tp[last].astype(np.float64)
        n = (last + 1).astype(np.float64)
        precision = tp / n
        recall = tp / npos
        out[c] = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return out[0:1] if squeeze else out


@torch.no_grad()
def evaluate_classifier(model: nn.Module, dataset, *, w_conv: float = 0.5, w_trans: float = 0.5,
                        batch_size: int = 16, device: str | torch.device | None = None,
                        amp_dtype: torch.dtype | None = None, num_workers: int = 0, progress: bool = True) -> dict:
    """Image classification quality of a TransCAM network on ``dataset`` (items ``(x, labels)``).

    The score of class ``k`` is ``σ(w_conv·z_conv + w_trans·z_trans)`` on output ``k + 1`` (the
    quantity Eq. 6 trains). Returns ``mAP`` (mean over classes that have positives of
    :func:`average_precision`), ``ap`` (per class), ``exact_match`` (fraction of images whose
    whole predicted label set, score > 0.5, equals the true set), ``num_images``, and the raw
    ``scores`` / ``labels`` arrays.
    """
    from tqdm.auto import tqdm

    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores, labels = [], []
    try:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        for x, y in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
            x = x.to(device)
            if amp_dtype is not None:
                with torch.autocast(device_type=device.type, dtype=amp_dtype):
                    out = model(x)
            else:
                out = model(x)
            z = w_conv * out.conv_logits.float() + w_trans * out.trans_logits.float()
            scores.append(torch.sigmoid(z[:, 1:]).cpu().numpy())
            labels.append(y.float().numpy())
    finally:
        model.train(was_training)
    S = np.concatenate(scores) if scores else np.zeros((0, 0))
    Y = np.concatenate(labels) if labels else np.zeros((0, 0))
    ap = average_precision(S, Y)
    exact = float(np.mean(np.all((S > 0.5) == (Y > 0.5), axis=1))) if len(S) else float("nan")
    return {"mAP": float(np.nanmean(ap)) if np.any(np.isfinite(ap)) else float("nan"), "ap": ap.tolist(),
            "exact_match": exact, "num_images": int(len(S)), "scores": S, "labels": Y}


# =========================================================================================
# logs
# =========================================================================================
def read_metrics_log(path: str | os.PathLike, event: str | None = "train"):
    """The metrics log (``metrics.jsonl``, or a run folder holding it) as a pandas DataFrame.

    ``event`` selects the records (``"train"``: one row per logging window with ``step``,
    ``epoch``, ``loss``, ``lr``, ``images_per_s``, ``elapsed_s``; ``"epoch"``, ``"eval"``,
    ``"start"``, ``"resume"``, ``"end"``); ``None`` returns every record. A line cut short by a
    killed run is skipped.
    """
    import pandas as pd

    p = Path(path)
    if p.is_dir():
        p = p / METRICS_NAME
    if not p.is_file():
        raise FileNotFoundError(f"metrics log {p} does not exist (expected the metrics.jsonl of a training run)")
    rows = _read_jsonl(p)
    if event is not None:
        rows = [r for r in rows if r.get("event") == event]
    return pd.DataFrame(rows)
