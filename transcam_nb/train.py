"""Training the classifier (paper §3.3, Eq. 6; docs/reference.md §4): resumable, mixed precision, multi-GPU.

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
:func:`refined_cam_loss`         an option (``refined_loss`` > 0, off by default): Fujimori et
                                 al.'s extra term on the attention-refined CAM, with noise.
:func:`train_classifier`         the thin wrapper the CLI and notebooks call: the profile's network
                                 (:func:`transcam_nb.models.factory.build_model_for_profile`), its
                                 training split (:func:`transcam_nb.data.roots.build_train_dataset`)
                                 and Eq. 6 in the package's one training loop
                                 (:func:`transcam_nb.engine.train_loop`: AMP, DDP, checkpoints,
                                 resume, logs; see :mod:`transcam_nb.engine`).
:func:`evaluate_classifier`      classification mAP (average precision per class, computed
                                 here) and exact-match accuracy.
:func:`read_metrics_log`         the JSON-lines metrics log as a pandas DataFrame.

Where things run: see :mod:`transcam_nb.engine`. By default ``batch_size`` is the **global**
batch (the reference's 8, as its DataParallel split it over GPUs). ``<out>/last.pt`` holds the
whole training state; a run started again on the same folder continues from it. At the end
``<out>/classifier.pt`` (weights, loadable by :func:`transcam_nb.models.load_checkpoint`),
``<out>/summary.json`` and ``<out>/metrics.jsonl`` are written.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .data.roots import build_eval_dataset, build_train_dataset
from .device import get_device, seed_everything, set_threads
from .artifacts import append_jsonl, read_jsonl, write_json
from .config import Profile, get_profile
from .engine import CHECKPOINT_NAME, METRICS_NAME, SUMMARY_NAME, LoopConfig, amp_setup, announce, dist_env, train_loop
from .models.factory import PROFILES_NEEDING_INIT, build_model_for_profile, require_init

__all__ = [
    "classification_loss",
    "refined_cam_loss",
    "train_classifier",
    "average_precision",
    "evaluate_classifier",
    "read_metrics_log",
]


# =========================================================================================
# Eq. 6
# =========================================================================================
def classification_loss(out, labels: torch.Tensor, w_conv: float = 0.5, w_trans: float = 0.5) -> torch.Tensor:
    """Eq. 6: multilabel soft-margin loss on ``w_conv·z_conv + w_trans·z_trans``.

    ``out`` is a :class:`~transcam_nb.models.ConformerOutput` (``conv_logits``, ``trans_logits``
    of shape ``[B, K+1]``); ``labels`` the ``[B, K]`` multi-hot image labels. Output channel 0 is
    skipped (the authors' untrained "background" channel, docs/reference.md §2): channel ``k+1`` is
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


def refined_cam_loss(out, labels: torch.Tensor, num_blocks: int, noise: float = 0.0) -> torch.Tensor:
    """The refined-CAM term of Fujimori et al. (arXiv 2404.03394): the multilabel soft-margin
    loss on the global average of ``A*·CAM`` (Eq. 5 with ``A*`` the *mean* of the blocks'
    head-mean attention, so that the refined map keeps the CAM's scale), with Gaussian noise
    added to the refined map during training.

    ``out`` must carry ``cam`` ``[B, K+1, h, w]`` and ``attn_sum`` ``[B, N, N]`` summed over
    ``num_blocks`` blocks (``model(x, attn_blocks=range(num_blocks))``); the gradient reaches
    both branches through it. ``noise`` is the noise's standard deviation relative to each
    refined map's own (per image and class, detached); our reading of the paper, which adds
    noise to the attention-refined CAM to keep the loss from fitting the attention's
    background noise. Channel 0 is skipped, as in :func:`classification_loss`.
    """
    from .refine import refine_cam

    if out.cam is None or out.attn_sum is None:
        raise ValueError("refined_cam_loss needs the CAM and the block-summed attention: "
                         "call the model with attn_blocks=range(depth)")
    refined = refine_cam(out.cam.float(), out.attn_sum.float() / num_blocks, "transcam")  # [B, K+1, h, w]
    if noise > 0:
        scale = refined.detach().flatten(2).std(-1)[..., None, None]
        refined = refined + noise * scale * torch.randn_like(refined)
    return F.multilabel_soft_margin_loss(refined.mean(dim=(2, 3))[:, 1:], labels.float())


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
    from_scratch: bool = False,
    **overrides,
) -> dict:
    """Train the TransCAM classifier of ``profile`` (Eq. 6) into ``out_dir``; see the module docstring.

    ``profile`` is a :class:`~transcam_nb.config.Profile` or a name; ``overrides`` replace
    profile fields (``lr=1e-4``, ``batch_size=4``, ...). ``init`` (or the profile's
    ``init_checkpoint``) is the ImageNet Conformer file whose heads are dropped; ``max_steps``
    overrides the profile's budget (the lr schedule follows it). ``data_root`` / ``sbd_root`` /
    ``cls_labels`` point at VOC (the tiny profile generates its benchmark when ``data_root`` is
    ``None``). ``checkpoint_minutes`` overrides the profile's; ``checkpoint_every_steps``
    adds step-based checkpoints. ``model`` trains a network you built (in place) instead of
    building one from the profile. The paper profile refuses to start from random weights
    (:class:`~transcam_nb.models.factory.MissingInitError` naming ``init``) unless
    ``from_scratch=True``. Returns :func:`train_loop`'s summary plus ``eval`` (mAP and
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
    rank, _, _ = dist_env()
    out_dir = Path(out_dir)
    resuming = resume and (out_dir / CHECKPOINT_NAME).is_file()
    if not resuming and model is None:  # fail before generating or reading data
        require_init(prof.init_checkpoint, who=f"the {prof.name} profile's classifier",
                     argument="init=FILE / --init FILE",
                     expected=f"the official ImageNet Conformer file for {prof.model} (e.g. "
                              "Conformer_small_patch16.pth)", from_scratch=from_scratch,
                     needs_init=prof.name in PROFILES_NEEDING_INIT)
    dataset = build_train_dataset(prof, allow_pickle=allow_pickle, progress=progress and rank == 0)
    if model is None:
        seed_everything(prof.seed)  # the same initial weights on every process (DDP also broadcasts rank 0's)
        model = build_model_for_profile(prof, None if resuming else prof.init_checkpoint, num_fg=dataset.num_classes,
                                        verbose=rank == 0)
    cfg = LoopConfig.from_profile(prof, log_every=log_every, checkpoint_every_steps=checkpoint_every_steps)
    w_conv, w_trans = float(prof.w_conv), float(prof.w_trans)

    lam, forward_kwargs = float(prof.refined_loss), {}
    if lam:  # Fujimori et al.: + λ·(refined-CAM term); the forward then also sums every block's attention
        depth = getattr(model, "depth", None)
        if not isinstance(depth, int) or not getattr(model, "cam_head", False):
            raise ValueError(f"refined_loss={lam:g} needs a TransCAM network (a CAM head and its blocks' attention); "
                             f"{prof.model!r} has none")
        forward_kwargs["attn_blocks"] = range(depth)

    def loss_fn(out, labels):
        loss = classification_loss(out, labels, w_conv, w_trans)
        if lam:
            loss = loss + lam * refined_cam_loss(out, labels, depth, prof.refined_noise)
        return loss

    run_info = {"stage": "classifier", "profile": prof.to_dict(), "data_root": str(dataset.root),
                "train_split": prof.train_split, "num_train": len(dataset), "class_names": list(dataset.class_names)}
    summary = train_loop(model, dataset, loss_fn, out_dir, cfg, device=prof.device if device is None else device,
                         resume=resume, progress=progress, callback=callback, run_info=run_info, desc="train",
                         forward_kwargs=forward_kwargs)
    if prof.final_eval and rank == 0 and "eval" not in summary:
        try:
            val = build_eval_dataset(prof, dataset.root, allow_pickle=allow_pickle, progress=False)
        except FileNotFoundError as e:
            announce(f"[train] no final evaluation: {e}", progress)
        else:
            dev = get_device(prof.device if device is None else device)
            if dev.type == "cuda" and dev.index is None:
                dev = torch.device("cuda", dist_env()[2])
            ev = evaluate_classifier(model, val, w_conv=w_conv, w_trans=w_trans, device=dev,
                                     batch_size=max(1, prof.batch_size), amp_dtype=amp_setup(prof.precision, dev)[0],
                                     num_workers=int(prof.num_workers), progress=progress)
            ev = {k: v for k, v in ev.items() if k not in ("scores", "labels")}
            ev["split"] = val.split
            summary["eval"] = ev
            append_jsonl(Path(summary["metrics_log"]),
                          {"event": "eval", "step": summary["steps"], "split": val.split, "mAP": ev["mAP"],
                           "exact_match": ev["exact_match"], "num_images": ev["num_images"]})
            write_json(out_dir / SUMMARY_NAME, summary)
            announce(f"[train] {val.split}: mAP {ev['mAP']:.4f}, exact-match accuracy {ev['exact_match']:.4f} "
                     f"({ev['num_images']} images)", progress)
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
    rows = read_jsonl(p)
    if event is not None:
        rows = [r for r in rows if r.get("event") == event]
    return pd.DataFrame(rows)
