"""Training DeepLab on pseudo labels (the last stage of the pipeline, REFERENCE.md §8).

The reference trains DeepLab-v1 / ResNet-38 for **20,000 iterations, batch 10**, SGD (momentum
0.9, weight decay 5e-4) at base lr 1e-3 with the **poly** schedule
``lr · (1 − itr / (max_itr + 1))^0.9``, the parameter groups of
:meth:`~transcam_nb.segmentation.deeplab.DeepLab.param_groups` (1× / 2× / 10× / 20×), and
cross-entropy with ``ignore_index=255`` on the pseudo labels. Each training sample is
augmented with, in this order: HSV jitter (±10 on H, S and V), a random rescale in
[0.5, 1.5], a horizontal flip with probability 0.5, ImageNet normalisation, and a 448×448
random crop (padded with 0 = the mean after normalisation for the image, 255 for the label).

``SEG_PRESETS["paper"]`` is that schedule. Differences, all documented:

* backbone: timm ``resnet101`` at output stride 8 (DeepLab-v2's usual ImageNet backbone)
  instead of the authors' ResNet-38, which timm does not provide; pass an ImageNet
  checkpoint of timm's ``resnet101`` as ``pretrained_path`` (no downloads here). Its BN is
  frozen and its stem conv frozen, like the reference's backbone BN and ``conv1a``.
* HSV jitter is done with Pillow's HSV (hue on a 0–255 circle); the ±10 hue step is given in
  OpenCV's 0–179 units (≈ ±20°) and converted, hue wraps around, S and V are clipped.
* a crop window larger than the (scaled) image places the image at a random offset inside the
  padded 448×448 canvas.
* the reference fixes cudnn determinism; here ``deterministic`` is off by default (faster).
* AMP (bf16, or fp16 with a GradScaler) on CUDA via :func:`transcam_nb.device.autocast`.

``SEG_PRESETS["tiny"]`` is a CPU-sized variant (ResNet-18 from scratch, small crops, BN not
frozen because an untrained backbone has no statistics worth freezing).

Data are read straight from disk: images ``<image_root>/JPEGImages/<id>.jpg`` and pseudo
labels ``<pseudo_label_dir>/<id>.png`` (single-channel or palette PNG, 255 = ignore). Sample
``g`` of the run (iteration ``g // batch``) is a pure function of ``(seed, g)``: the image order
is a fresh permutation per pass over the data and every augmentation draws from
``numpy.random.default_rng([seed, g])``, so a resumed run sees exactly the batches an
uninterrupted run would, whatever the number of loader workers.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..artifacts import atomic_path, atomic_write
from ..config import SEG_PRESETS, SegConfig, get_seg_config  # noqa: F401  (defined in config)
from ..data.transforms import normalize, random_crop
from ..data.voc import resolve_root
from .deeplab import DeepLab
from .infer import TEST_SCALES, _read_rgb, read_label

__all__ = [
    "SegConfig",
    "SEG_PRESETS",
    "get_seg_config",
    "poly_lr",
    "hsv_jitter",
    "joint_augment",
    "build_model",
    "load_segmentation_model",
    "train_segmentation",
    "TrainResult",
    "PseudoLabelDataset",
]

CHECKPOINT_FORMAT = "transcam_nb.deeplab/1"


def poly_lr(base_lr: float, itr: int, max_itr: int, power: float = 0.9) -> float:
    """The reference's poly schedule: ``base_lr · (1 − itr / (max_itr + 1)) ** power`` (itr from 0)."""
    return base_lr * (1.0 - itr / (max_itr + 1)) ** power


# ----------------------------------------------------------------------------- augmentation
def hsv_jitter(image: np.ndarray, dh: int, ds: int, dv: int) -> np.ndarray:
    """Shift hue by ``dh`` (OpenCV units: 180 per turn; wraps), saturation by ``ds`` and value by
    ``dv`` (0..255, clipped). ``[H, W, 3]`` uint8 in and out."""
    if dh == 0 and ds == 0 and dv == 0:
        return image
    hsv = np.asarray(Image.fromarray(image).convert("HSV"), dtype=np.int16).copy()
    hsv[..., 0] = (hsv[..., 0] + int(round(dh * 256 / 180))) % 256
    hsv[..., 1] = np.clip(hsv[..., 1] + ds, 0, 255)
    hsv[..., 2] = np.clip(hsv[..., 2] + dv, 0, 255)
    return np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB"), dtype=np.uint8)


def joint_augment(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, crop: int,
                  scale: Sequence[float] = (0.5, 1.5), flip: bool = True, hsv: int = 10,
                  ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's training transform, applied jointly to image and label.

    HSV jitter (uniform integers in ``[-hsv, hsv]``) → random scale ``s ~ U(scale)`` (image
    bilinear, label nearest) → horizontal flip with probability 0.5 → ImageNet normalisation
    → ``crop × crop`` random crop, the image padded with 0 (the mean) and the label with
    ``ignore_index``. Returns ``([3, crop, crop] float32, [crop, crop] int64)``.

    Normalisation and crop are :func:`transcam_nb.data.transforms.normalize` and
    :func:`~transcam_nb.data.transforms.random_crop` (a window larger than the scaled image
    places the image at a random offset in the padded canvas).
    """
    if image.shape[:2] != label.shape:
        raise ValueError(f"image size {image.shape[:2]} and label size {label.shape} differ")
    if hsv:
        dh, ds, dv = (int(v) for v in rng.integers(-hsv, hsv + 1, size=3))
        image = hsv_jitter(image, dh, ds, dv)
    s = float(rng.uniform(scale[0], scale[1]))
    h, w = label.shape
    nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
    if (nh, nw) != (h, w):
        image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
        label = np.asarray(Image.fromarray(label).resize((nw, nh), Image.NEAREST))
    if flip and rng.random() < 0.5:
        image = image[:, ::-1]
        label = label[:, ::-1]
    x = normalize(image).transpose(1, 2, 0)  # [h, w, 3] float32
    y = label.astype(np.int64)  # int64 before padding, so any ignore_index fits
    x, y = random_crop([x, y], [0.0, ignore_index], crop, rng)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), torch.from_numpy(y)


class PseudoLabelDataset(torch.utils.data.Dataset):
    """Augmented training samples, indexed by the *global sample number* ``g`` of the run.

    ``g`` selects image ``perm_e[g mod N]`` with ``perm_e`` a permutation drawn from
    ``default_rng([seed, 0, e])`` for pass ``e = g // N``, and augments it with
    ``default_rng([seed, 1, g])``. Length: ``iters × batch``.
    """

    def __init__(self, cfg: SegConfig, image_root: str | os.PathLike, pseudo_label_dir: str | os.PathLike,
                 ids: Sequence[str]):
        self.cfg = cfg
        self.image_dir = resolve_root(image_root) / "JPEGImages"
        self.label_dir = Path(pseudo_label_dir)
        self.ids = list(ids)
        if not self.ids:
            raise ValueError("ids is empty: no training images")
        if not self.label_dir.is_dir():
            raise FileNotFoundError(f"pseudo-label folder {str(self.label_dir)!r} does not exist")
        missing = [i for i in self.ids if not (self.image_dir / f"{i}.jpg").is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} training image(s) missing from {str(self.image_dir)!r}, e.g. {missing[:3]}")
        missing = [i for i in self.ids if not (self.label_dir / f"{i}.png").is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} pseudo label(s) missing from {str(self.label_dir)!r}, e.g. {missing[:3]}")
        self._perm_epoch = -1
        self._perm = None

    def __len__(self) -> int:
        return self.cfg.iters * self.cfg.batch

    def image_index(self, g: int) -> int:
        n = len(self.ids)
        epoch, pos = divmod(int(g), n)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.cfg.seed, 0, epoch]).permutation(n)
            self._perm_epoch = epoch
        return int(self._perm[pos])

    def __getitem__(self, g: int):
        image_id = self.ids[self.image_index(g)]
        image = _read_rgb(self.image_dir / f"{image_id}.jpg")
        label = read_label(self.label_dir / f"{image_id}.png", num_classes=self.cfg.num_classes)
        if image.shape[:2] != label.shape:
            raise ValueError(
                f"pseudo label {image_id}.png has size {label.shape}, its image has {image.shape[:2]}")
        rng = np.random.default_rng([self.cfg.seed, 1, int(g)])
        c = self.cfg
        return joint_augment(image, label, rng, crop=c.crop, scale=c.scale, flip=c.flip, hsv=c.hsv_jitter)


# ----------------------------------------------------------------------------- model + checkpoints
def build_model(cfg: SegConfig, load_pretrained: bool = True) -> DeepLab:
    """The :class:`DeepLab` a config describes (ImageNet weights from ``cfg.pretrained_path``)."""
    return DeepLab(backbone=cfg.backbone, head=cfg.head, num_classes=cfg.num_classes,
                   output_stride=cfg.output_stride,
                   pretrained_path=cfg.pretrained_path if load_pretrained else None,
                   freeze_bn=cfg.freeze_bn, freeze_stem=cfg.freeze_stem,
                   head_bn_momentum=cfg.head_bn_momentum, dropout=cfg.dropout)


def _read_checkpoint(path: Path) -> dict:
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(f"could not read DeepLab checkpoint {str(path)!r}: {e}") from e
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(path)!r} is not a transcam_nb DeepLab checkpoint (format {CHECKPOINT_FORMAT})")
    return ck


def load_segmentation_model(path: str | os.PathLike, device=None) -> DeepLab:
    """Rebuild a trained DeepLab from a checkpoint written by :func:`train_segmentation`
    (``last.pt`` or ``model.pt``), in eval mode on ``device``."""
    from ..device import get_device

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DeepLab checkpoint {str(path)!r} does not exist")
    ck = _read_checkpoint(path)
    cfg = SegConfig.from_dict(ck["config"])
    model = build_model(cfg, load_pretrained=False)
    model.load_state_dict(ck["model"])
    model.config = cfg
    return model.to(get_device(device)).eval()


# fields that may differ between a checkpoint and the config that resumes it
_RESUME_FREE = {"workers", "ckpt_every", "log_every", "pretrained_path", "test_scales", "test_flip", "test_crf"}


@dataclass
class TrainResult:
    """What :func:`train_segmentation` returns."""

    model: DeepLab
    checkpoint: Path  # last.pt: model + optimizer + iteration + RNG
    model_path: Path  # model.pt: model + config only (written when the run is complete)
    log_path: Path  # JSON lines, one per logged iteration
    iteration: int
    last_loss: float


def _truncate_log(log_path: Path, upto: int) -> None:
    """Keep log lines with ``iteration <= upto`` (lines written after the last checkpoint of an
    interrupted run would otherwise appear twice)."""
    if not log_path.exists():
        return
    keep = []
    for line in log_path.read_text().splitlines():
        try:
            if json.loads(line).get("iteration", 0) <= upto:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    with atomic_write(log_path, "w") as f:
        f.write("".join(l + "\n" for l in keep))


def train_segmentation(cfg: SegConfig, image_root: str | os.PathLike, pseudo_label_dir: str | os.PathLike,
                       ids: Sequence[str], out_dir: str | os.PathLike, device=None, resume: bool = True,
                       max_steps: int | None = None, progress: bool = True) -> TrainResult:
    """Train DeepLab on pseudo labels with the reference schedule (REFERENCE.md §8).

    Args:
        cfg: a :class:`SegConfig` (``get_seg_config("paper")`` for the reference values).
        image_root: folder holding ``JPEGImages/`` (or a devkit root, see
            :func:`transcam_nb.data.voc.resolve_root`).
        pseudo_label_dir: ``<id>.png`` pseudo labels (255 = ignore).
        ids: training image ids (the reference uses VOC ``train_aug``, 10,582 images).
        out_dir: receives ``last.pt`` (every ``cfg.ckpt_every`` iterations and at the end),
            ``model.pt`` (at the end) and ``log.jsonl``.
        device: ``None``/``"auto"``, ``"cpu"``, ``"cuda"`` … (:func:`transcam_nb.device.get_device`).
        resume: continue from ``out_dir/last.pt`` if present (the config must match, bookkeeping
            fields aside); ``False`` starts afresh and overwrites.
        max_steps: run at most this many iterations in this call (then checkpoint and return).
        progress: show a tqdm bar with the loss.
    """
    from ..device import amp_dtype, autocast, get_device, seed_everything

    cfg.validate()
    device = get_device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, model_path, log_path = out_dir / "last.pt", out_dir / "model.pt", out_dir / "log.jsonl"

    seed_everything(cfg.seed, deterministic=cfg.deterministic)
    dataset = PseudoLabelDataset(cfg, image_root, pseudo_label_dir, ids)

    ck = _read_checkpoint(ckpt_path) if resume and ckpt_path.exists() else None
    if ck is not None:
        saved = SegConfig.from_dict(ck["config"]).to_dict()
        now = cfg.to_dict()
        diff = sorted(k for k in now if k not in _RESUME_FREE and saved.get(k) != now[k])
        if diff:
            raise ValueError(
                f"cannot resume from {str(ckpt_path)!r}: config differs in {diff} "
                f"(checkpoint {[saved.get(k) for k in diff]} vs now {[now[k] for k in diff]}); "
                "use resume=False or another out_dir")
    model = build_model(cfg, load_pretrained=ck is None).to(device)
    optimizer = torch.optim.SGD(model.param_groups(cfg.lr, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum)
    dtype = amp_dtype(device) if cfg.amp else None
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    start, last_loss = 0, float("nan")
    if ck is not None:
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        start = int(ck["iteration"])
        last_loss = float(ck.get("last_loss", float("nan")))
        rng = ck.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if rng.get("cuda") and device.type == "cuda":
            torch.cuda.set_rng_state_all(rng["cuda"])
        _truncate_log(log_path, start)
    elif log_path.exists():
        log_path.unlink()

    def save_checkpoint(iteration: int) -> None:
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": cfg.to_dict(),
            "iteration": iteration,
            "last_loss": last_loss,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []},
        }
        with atomic_path(ckpt_path) as tmp:
            torch.save(state, tmp)

    end = cfg.iters if max_steps is None else min(cfg.iters, start + int(max_steps))
    trained = start < end
    if trained:
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=cfg.batch, sampler=range(start * cfg.batch, end * cfg.batch),
            num_workers=cfg.workers, pin_memory=device.type == "cuda", drop_last=False,
            persistent_workers=False,
            # its own generator: creating the iterator must not consume the global torch RNG that
            # drives dropout, or a resumed run would drift from an uninterrupted one
            generator=torch.Generator().manual_seed(cfg.seed))
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.iters, initial=start, desc="deeplab", dynamic_ncols=True)
        model.train()
        itr = start
        t0 = time.time()
        with open(log_path, "a") as log:
            for x, y in loader:
                lr_now = poly_lr(cfg.lr, itr, cfg.iters, cfg.poly_power)
                for g in optimizer.param_groups:
                    g["lr"] = lr_now * g["lr_mult"]
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                with autocast(device, dtype):
                    logits = model(x)
                n_valid = (y != 255).sum().clamp(min=1)
                loss = F.cross_entropy(logits.float(), y, ignore_index=255, reduction="sum") / n_valid
                if not torch.isfinite(loss):
                    raise RuntimeError(f"DeepLab training loss became {loss.item()} at iteration {itr + 1}")
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                itr += 1
                last_loss = float(loss.item())
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr_now:.2e}")
                if itr % cfg.log_every == 0 or itr == end:
                    log.write(json.dumps({"iteration": itr, "loss": last_loss, "lr": lr_now,
                                          "time_s": round(time.time() - t0, 3)}) + "\n")
                    log.flush()
                if itr % cfg.ckpt_every == 0 or itr == end:
                    save_checkpoint(itr)
        if bar is not None:
            bar.close()
        start = itr
    if start >= cfg.iters and (trained or not model_path.exists()):
        with atomic_path(model_path) as tmp:
            torch.save({"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "iteration": start,
                        "model": model.state_dict()}, tmp)
    model.config = cfg
    model.eval()
    return TrainResult(model=model, checkpoint=ckpt_path, model_path=model_path, log_path=log_path,
                       iteration=start, last_loss=last_loss)
