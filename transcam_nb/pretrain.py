"""The pretraining stage: the tiny profile's stand-in for ImageNet pretraining.

The paper fine-tunes a Conformer-S whose weights come from ImageNet classification; the tiny
profile cannot download them, and a tiny Conformer trained from scratch on the WSSS task
does not have the affinity-like attention that TransCAM relies on (docs/tiny-findings.md part 1:
TransCAM 16-27 points *below* CAM). This stage pretrains the tiny Conformer (the same class,
the same widths as the tiny profile, another number of outputs) on formula-driven texture
scenes (:mod:`transcam_nb.data.pretext`): no natural image, no WSSS image, no WSSS mask.
The WSSS stage then fine-tunes from these weights exactly as the paper profile fine-tunes
from the official ImageNet checkpoint (the classification heads are dropped on loading:
:func:`transcam_nb.models.load_checkpoint`).

Objective (per batch of scenes)::

    loss = MSM(w_conv·z_conv + w_trans·z_trans, y)                       # as the WSSS stage (Eq. 6)
         + dense_weight · ( CE_soft(cam, T) + CE_soft(token_head(tokens), T) )

* ``MSM``: multilabel soft margin on the image labels ``y`` (textures covering > 2 %);
* ``T``: per token (16×16 px cell) the share of each texture class in the cell, from the
  drawn class map (a thing's part counts as the thing);
* ``cam``: the network's own 3×3-conv class map (Eq. 1) read as a per-token classifier;
  ``token_head``: a linear layer on the final normalised patch tokens of the transformer
  branch (not part of the shipped weights).

Attention grouping (``group_weight > 0``): with ``A`` the head-mean attention of
the blocks ``group_blocks`` averaged over those blocks, patch-to-patch part (rows not
re-normalised), and ``S_ij = 1`` when tokens ``i`` and ``j`` have the same majority pretext
class, the extra term is ``group_weight ·`` either

* ``"mass"``: ``mean_i −log Σ_j A_ij S_ij`` (the attention mass a token keeps on its own class), or
* ``"ce"``: ``mean_i −Σ_j (S_ij / Σ_j S_ij) log(A_ij / Σ_j A_ij)`` (cross-entropy of the
  re-normalised row to the normalised same-class indicator).

It makes deep attention rows stay inside a region: the property TransCAM's Eq. 5 needs and
that ImageNet pretraining gives Conformer-S. ``init`` continues from shipped weights (the
grouped weights continue ``tiny_pretrained.pt`` with another pretext stream, ``seed=1``).

``dense_weight = 0`` is the multi-label texture pretext of docs/tiny-findings.md part 2 ("tex").
The dense term asks every token to carry the class of its region, so tokens of one region
(and the two parts of one thing) become alike: the feature affinity the paper attributes
to ImageNet pretraining. Which of the two is used is chosen by measurement.

Schedule: AdamW (no weight decay on norms, biases and the class token), linear warm-up then
cosine to 0 over a fixed number of **steps** (step-based, so CPU contention does not change
what the run sees); scene ``i`` of the stream is batch ``i // B`` (no scene repeats). A
``max_minutes`` safety cap can stop a run early; the manifest then says so.

Outputs in ``--out``: ``pretrained.pt`` (fp16 state_dict under ``"model"``), ``manifest.json``
(the exact command, config and its hash, pretext version, seed, wall time, final metrics),
``log.jsonl`` and ``last.pt`` (resume state: a killed run continues where it stopped).
``--ship`` copies the weights and the manifest into ``transcam_nb/weights/`` as
``<profile>_pretrained.{pt,json}`` (``--ship-name`` another stem, e.g. ``tiny_pretrained_grouped``):
the tiny profile's ``init_checkpoint`` (``"package:tiny_pretrained.pt"``).
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from .artifacts import file_sha256, write_json  # file_sha256: re-exported
from .config import RUN_ONLY_FIELDS, PretrainConfig, get_settings

__all__ = [
    "PretrainConfig",
    "default_config",
    "config_hash",
    "pretrain",
    "build_model",
    "make_loss",
    "token_targets",
    "lr_at",
    "pretext_metrics",
    "file_sha256",
    "weights_dir",
    "ship",
    "HASHED_FIELDS_EXCLUDED",
]

#: fields that do not change the weights a run produces (not hashed): config.RUN_ONLY_FIELDS
HASHED_FIELDS_EXCLUDED = tuple(f for f in PretrainConfig.field_names() if f in RUN_ONLY_FIELDS)


def default_config(profile: str = "tiny", **overrides) -> PretrainConfig:
    """The pretraining config of a profile (its model and widths) with the current pretext version.

    This is what ``python -m transcam_nb pretrain --profile tiny`` runs and what the shipped
    weights' manifest must match (tests/test_pretrain.py).
    """
    from .data.pretext import PRETEXT_VERSION

    return get_settings(profile).pretrain.replace(pretext_version=PRETEXT_VERSION, **overrides)


def config_hash(cfg: PretrainConfig) -> str:
    """sha256 (16 hex) of the hashed fields (model, pretext + version, schedule, seed): the
    config's :meth:`~transcam_nb.config.Settings.fingerprint`."""
    return cfg.fingerprint()


# --------------------------------------------------------------------------------------
# pieces
# --------------------------------------------------------------------------------------
def build_model(cfg: PretrainConfig):
    """The profile's network with ``cfg.num_classes`` outputs (drop path 0) and the token head."""
    import torch.nn as nn

    from .models import create_model

    model = create_model(cfg.model, num_classes=cfg.num_classes, drop_path_rate=0.0, **cfg.model_overrides)
    head = nn.Linear(model.embed_dim, cfg.num_classes)
    nn.init.trunc_normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    return model, head


def _pretext_net(cfg: PretrainConfig):
    """The network the loop trains: backbone + token head; ``forward(x) -> (output, patch tokens)``.

    The patch tokens are the final normalised transformer tokens (``trans_norm`` output, class
    token dropped), captured by a forward hook so the backbone class stays untouched.
    """
    import torch.nn as nn

    backbone, head = build_model(cfg)

    class PretextNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.token_head = head
            self._box = [None]
            backbone.trans_norm.register_forward_hook(lambda _m, _i, o: self._box.__setitem__(0, o))

        def no_weight_decay(self):
            return {"cls_token"}

        def forward(self, x):
            if cfg.group_weight > 0:
                out = self.backbone(x, attn_blocks=cfg.group_blocks)
            else:
                out = self.backbone(x)
            return out, self._box[0][:, 1:]

    return PretextNet()


def group_loss(attn, cmap, num_classes: int, patch: int = 16, kind: str = "mass"):
    """The attention-grouping term (module docstring) for a block-averaged head-mean map.

    ``attn``: ``[B, N, N]`` with the class token at index 0 (or ``[B, hw, hw]`` without it);
    ``cmap``: ``[B, S, S]`` pixel class map. Returns ``(loss, mean same-class mass)``.
    """
    import torch

    T = token_targets(cmap, num_classes, patch)  # [B, K, h, w]
    lab = T.flatten(2).argmax(1)  # [B, hw] majority class per token
    hw = lab.shape[1]
    a = attn.float()
    if a.shape[-1] == hw + 1:
        a = a[:, 1:, 1:]
    elif a.shape[-1] != hw:
        raise ValueError(f"attention has {a.shape[-1]} tokens but the class map gives {hw} cells")
    same = (lab[:, :, None] == lab[:, None, :]).float()  # [B, hw, hw]
    mass = (a * same).sum(-1)  # [B, hw]
    if kind == "mass":
        loss = -torch.log(mass.clamp_min(1e-6)).mean()
    elif kind == "ce":
        p = a / a.sum(-1, keepdim=True).clamp_min(1e-12)
        t = same / same.sum(-1, keepdim=True)
        loss = -(t * torch.log(p.clamp_min(1e-8))).sum(-1).mean()
    else:
        raise ValueError(f"group_loss must be 'mass' or 'ce', got {kind!r}")
    return loss, float(mass.detach().mean())


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """The stage's learning rate at ``step``: :func:`transcam_nb.engine.lr_at` with the cosine schedule."""
    from .engine import lr_at as _lr_at

    return _lr_at(step, cfg.steps, cfg.lr, "cosine", cfg.warmup_frac)


def token_targets(cmap, num_classes: int, patch: int = 16):
    """Soft per-token targets ``[B, K, H/patch, W/patch]``: the share of each class in each cell."""
    import torch.nn.functional as F

    onehot = F.one_hot(cmap.long(), num_classes).permute(0, 3, 1, 2).float()
    return F.avg_pool2d(onehot, patch, patch)


def make_loss(cfg: PretrainConfig, token_head, patch: int = 16, parts_box: dict | None = None):
    """``loss_fn(output, target)`` for :func:`transcam_nb.engine.train_loop`.

    ``output``: ``(ConformerOutput, patch tokens [B, hw, D])`` from the pretext network;
    ``target``: ``(labels [B, K], class map [B, S, S])``. Returns the scalar loss; the last
    parts (``cls``, ``dense_conv``, ``dense_tok``) are left in ``parts_box``.
    """
    import torch.nn.functional as F

    def loss_fn(output, target):
        out, tok = output
        y, cmap = target
        logits = cfg.w_conv * out.conv_logits.float() + cfg.w_trans * out.trans_logits.float()
        l_cls = F.multilabel_soft_margin_loss(logits, y.float())
        loss = l_cls
        parts = {"cls": float(l_cls.detach())}
        if cfg.dense_weight > 0:
            T = token_targets(cmap, cfg.num_classes, patch)  # [B, K, h, w]
            cam = out.cam.float()
            if cam.shape[-2:] != T.shape[-2:]:
                raise RuntimeError(f"CAM grid {tuple(cam.shape[-2:])} does not match the token grid {tuple(T.shape[-2:])}")
            l_conv = -(T * F.log_softmax(cam, dim=1)).sum(1).mean()
            tl = token_head(tok).float().transpose(1, 2)  # [B, K, hw]
            l_tok = -(T.flatten(2) * F.log_softmax(tl, dim=1)).sum(1).mean()
            loss = loss + cfg.dense_weight * (l_conv + l_tok)
            parts.update(dense_conv=float(l_conv.detach()), dense_tok=float(l_tok.detach()))
        if cfg.group_weight > 0:
            if out.attn_sum is None:
                raise RuntimeError("group_weight > 0 needs the attention of group_blocks (attn_sum is None)")
            l_grp, mass = group_loss(out.attn_sum / len(cfg.group_blocks), cmap, cfg.num_classes, patch,
                                     cfg.group_loss)
            loss = loss + cfg.group_weight * l_grp
            parts.update(group=float(l_grp.detach()), group_mass=mass)
        if parts_box is not None:
            parts_box.clear()
            parts_box.update(parts)
        return loss

    return loss_fn


def _hook_tokens(model):
    box: list = [None]

    def hook(_m, _inp, out):
        box[0] = out

    handle = model.trans_norm.register_forward_hook(hook)
    return box, handle


def pretext_metrics(model, cfg: PretrainConfig, n: int = 256, batch_size: int = 32, head=None, device=None) -> dict:
    """Held-out pretext metrics on ``n`` scenes of another stream (seed + 1000):
    multi-label mAP and exact-match accuracy of ``w_conv·z_conv + w_trans·z_trans``, and the
    per-token accuracy of the CAM (and of the token head when given) against each cell's
    majority class."""
    import numpy as np
    import torch

    from .data.pretext import PretextStream

    stream = PretextStream(cfg.seed + 1000, cfg.image_size, cfg.num_classes, cfg.part_prob, cfg.min_fraction)
    device = device or next(model.parameters()).device
    was = model.training
    model.eval()
    probs, labels, acc_c, acc_t, tot = [], [], 0.0, 0.0, 0
    masses = []
    blocks = tuple(b for b in cfg.group_blocks if b < len(model.blocks)) or tuple(range(len(model.blocks)))
    box, handle = _hook_tokens(model)
    try:
        with torch.no_grad():
            for s in range(0, n, batch_size):
                b = min(batch_size, n - s)
                x, y, cm = (t.to(device) for t in stream.batch(0, b, start=s))
                out = model(x, attn_blocks=blocks)
                masses.append(group_loss(out.attn_sum / len(blocks), cm, cfg.num_classes, model.patch_size)[1])
                probs.append(torch.sigmoid(cfg.w_conv * out.conv_logits + cfg.w_trans * out.trans_logits).cpu())
                labels.append(y.cpu())
                T = token_targets(cm, cfg.num_classes, model.patch_size)
                tgt = T.argmax(1)
                acc_c += float((out.cam.argmax(1) == tgt).float().sum())
                if head is not None:
                    tl = head(box[0][:, 1:]).argmax(-1).reshape(tgt.shape)
                    acc_t += float((tl == tgt).float().sum())
                tot += tgt.numel()
    finally:
        handle.remove()
        model.train(was)
    from .train import average_precision

    P, Y = torch.cat(probs).numpy(), torch.cat(labels).numpy()
    out = {"scenes": n, "mAP": float(np.nanmean(average_precision(P, Y))), "exact_match": float(np.mean(np.all((P > 0.5) == (Y > 0.5), 1))),
           "token_acc_cam": acc_c / max(1, tot), "group_mass": float(np.mean(masses))}
    if head is not None:
        out["token_acc_head"] = acc_t / max(1, tot)
    return out


def _atomic_torch(path: Path, obj) -> None:
    import torch

    from .artifacts import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _fp16_state(model) -> dict:
    import torch

    return {k: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu())
            for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------
# the stage
# --------------------------------------------------------------------------------------
def _init_path(spec) -> Path:
    from .weights import resolve_checkpoint

    return resolve_checkpoint(spec)


class _StopEarly(Exception):
    pass


def pretrain(cfg: PretrainConfig, out_dir, *, command: str | None = None, progress: bool = True,
             callback=None) -> dict:
    """Run (or resume) the pretraining described by ``cfg`` into ``out_dir``; return the manifest.

    The optimisation runs in the project's generic loop (:func:`transcam_nb.engine.train_loop`:
    checkpoints, resume, logging, AMP and DDP where available) with the pretext network
    (backbone + token head), the pretext stream as data (``steps × batch_size`` distinct scenes,
    visited in a seeded random order) and :func:`make_loss`. A finished run (manifest with the
    same config hash and all steps done) is not redone; an interrupted one resumes from
    ``last.pt`` (written every ``save_every`` steps and every 5 minutes). At the end the backbone
    alone is written as ``pretrained.pt`` (float16). ``callback`` is passed on to the loop
    (called after every step with a dict; tests raise from it to simulate a killed run).
    """
    import torch

    from .data.pretext import PRETEXT_VERSION, PretextStream
    from .device import get_device, seed_everything, set_threads
    from .engine import LoopConfig, train_loop

    if cfg.pretext_version != PRETEXT_VERSION:
        raise ValueError(f"config pretext_version={cfg.pretext_version} but the generator is version "
                         f"{PRETEXT_VERSION}; build the config with default_config()")
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {cfg.steps}, {cfg.batch_size}")
    if cfg.image_size % 16:
        raise ValueError(f"image_size must be a multiple of 16, got {cfg.image_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chash = config_hash(cfg)
    man_path = out / "manifest.json"
    if man_path.is_file():
        old = json.loads(man_path.read_text())
        if (old.get("config_hash") == chash and old.get("steps_done") == cfg.steps
                and (out / "pretrained.pt").is_file()):
            print(f"[pretrain] {out} already holds a finished run with config hash {chash}; nothing to do",
                  file=sys.stderr)
            return old
    set_threads(cfg.threads)
    seed_everything(cfg.seed)
    device = get_device(None if cfg.device == "auto" else cfg.device)
    net = _pretext_net(cfg)
    if cfg.init:
        from .models import read_state_dict

        sd = read_state_dict(_init_path(cfg.init))
        net.backbone.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()})
    stream = PretextStream(cfg.seed, cfg.image_size, cfg.num_classes, cfg.part_prob, cfg.min_fraction,
                           length=cfg.steps * cfg.batch_size)
    parts: dict = {}
    loss_fn = make_loss(cfg, net.token_head, net.backbone.patch_size, parts)
    loop = LoopConfig(max_steps=cfg.steps, epochs=1, batch_size=cfg.batch_size, lr=cfg.lr,
                      weight_decay=cfg.weight_decay, no_decay_norm_bias=True, lr_schedule="cosine",
                      warmup_frac=cfg.warmup_frac, precision="auto", num_workers=0, seed=cfg.seed,
                      checkpoint_minutes=5.0, checkpoint_every_steps=cfg.save_every, log_every=cfg.log_every)
    t0 = time.perf_counter()
    stopped = {"step": None}

    def _callback(info):
        if callback is not None:
            callback(info)
        if cfg.max_minutes is not None and time.perf_counter() - t0 > 60 * cfg.max_minutes \
                and info["step"] < info["total_steps"]:
            stopped["step"] = info["step"]
            raise _StopEarly()

    run_info = {"stage": "pretrain", "pretrain_config": cfg.hashed(), "config_hash": chash}
    try:
        summary = train_loop(net, stream, loss_fn, out, loop, device=device, resume=True, progress=progress,
                             callback=_callback, run_info=run_info, desc="pretrain")
    except _StopEarly:
        summary = {"steps": stopped["step"], "final_loss": None, "train_time_s": time.perf_counter() - t0}
    steps_done = int(summary.get("steps") or 0)
    stopped_early = steps_done < cfg.steps
    wall = float(summary.get("train_time_s") or (time.perf_counter() - t0))
    net.eval()
    metrics = pretext_metrics(net.backbone, cfg, n=cfg.eval_scenes,
                              head=net.token_head if cfg.dense_weight > 0 else None, device=device)
    metrics["final_train_loss"] = summary.get("final_loss")
    metrics["final_train_loss_parts"] = dict(parts)
    _atomic_torch(out / "pretrained.pt", {"model": _fp16_state(net.backbone)})

    manifest = {
        "what": "tiny Conformer pretrained on formula-driven texture scenes (transcam_nb.pretrain); "
                "a stand-in for ImageNet pretraining. No natural image, no WSSS image or mask was used.",
        "command": command or f"python -m transcam_nb pretrain --profile {cfg.profile} --out {out}",
        "config": cfg.to_dict(),
        "config_hash": chash,
        "hashed_fields": sorted(cfg.hashed()),
        "pretext_version": cfg.pretext_version,
        "seed": cfg.seed,
        **({"init_sha256": file_sha256(_init_path(cfg.init))} if cfg.init else {}),
        "schedule": "step-based" + (f" (stopped early by max_minutes at step {steps_done})" if stopped_early else ""),
        "steps_done": steps_done,
        "images_seen": steps_done * cfg.batch_size,
        "wall_time_s": round(wall, 1),
        "threads": cfg.threads,
        "device": str(device),
        "torch": torch.__version__,
        "final_metrics": metrics,
        "weights_file": "pretrained.pt",
        "weights_sha256": file_sha256(out / "pretrained.pt"),
        "weights_dtype": "float16",
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(man_path, manifest)
    print(f"[pretrain] done: {steps_done} steps, {wall / 60:.1f} min of training; {json.dumps(metrics)}",
          file=sys.stderr)
    return manifest


def weights_dir() -> Path:
    """The package folder of shipped weights (``transcam_nb/weights``)."""
    return Path(__file__).resolve().parent / "weights"


def ship(run_dir, profile: str = "tiny", dest: Path | None = None, name: str | None = None) -> tuple[Path, Path]:
    """Copy a finished run's weights and manifest into the package as ``<name>.{pt,json}``
    (default name ``<profile>_pretrained``; e.g. ``tiny_pretrained_grouped``, the attention-grouping pretext)."""
    run_dir = Path(run_dir)
    man = json.loads((run_dir / "manifest.json").read_text())
    src = run_dir / man["weights_file"]
    if file_sha256(src) != man["weights_sha256"]:
        raise RuntimeError(f"{src} does not match the sha256 in {run_dir / 'manifest.json'}")
    dest = Path(dest) if dest is not None else weights_dir()
    dest.mkdir(parents=True, exist_ok=True)
    name = name or f"{profile}_pretrained"
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"ship name {name!r}: expected a plain file stem such as 'tiny_pretrained_grouped'")
    pt, js = dest / f"{name}.pt", dest / f"{name}.json"
    from .artifacts import atomic_path

    with atomic_path(pt) as tmp:
        shutil.copyfile(src, tmp)
    write_json(js, {**man, "weights_file": pt.name})
    return pt, js
