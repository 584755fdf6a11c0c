"""The one resumable training loop: the classifier (Eq. 6), the pretext pretraining, AffinityNet
and DeepLab all train through :func:`train_loop`.

What every run gets. No device is hard-coded: CPU, CUDA or MPS come from
:func:`transcam_nb.device.get_device`. On CUDA the forward runs under autocast in bf16 where the
GPU supports it, else fp16 with a gradient scaler (``amp``); ``channels_last`` and ``compile``
are options. Under ``torchrun`` (``WORLD_SIZE > 1``) the loop joins the process group (NCCL on
GPUs, gloo on CPUs), wraps the network in ``DistributedDataParallel`` and gives every process its
share of each batch (:class:`ResumableDistributedSampler`); rank 0 alone logs and writes files.
By default ``batch_size`` is the **global** batch; ``per_device_batch=True`` makes it the
per-process batch instead. The effective batch is printed and logged.

Nothing lost. The checkpoint (``<out>/last.pt`` by default) is written atomically (temporary
file, then ``os.replace``) at the end of every epoch, every ``checkpoint_minutes``, every
``checkpoint_every_steps`` steps and when a call stops (``stop_after``). It holds the model,
optimiser, gradient scaler, the position in the data (epoch and batch), every process's RNG
states, the configuration and the metrics so far; a run started again on the same folder
continues from it (``resume=True``), and with deterministic settings on a CPU it ends with the
same weights as a run never interrupted. A resume with changed settings is refused with a
``ValueError`` that lists them. A non-finite loss stops the run with :class:`NonFiniteLossError`
before the bad step is applied and before anything is written, so the checkpoint is the last
good state. At the end the loop writes the final weights (``classifier.pt``) and
``summary.json``; ``metrics.jsonl`` holds one JSON record a line (``event`` = ``start`` |
``resume`` | ``train`` | ``epoch`` | ``eval`` | ``end``).

What differs between stages is data, not code: a :class:`LoopConfig` (optimiser ``adamw`` or
``sgd`` over the network's own ``param_groups``, lr schedule ``constant`` | ``cosine`` |
``poly`` | ``poly_deeplab``, see :func:`lr_at`) and a :class:`StageSpec` (file names, the
stage settings a resume must not change, data order, hooks for extra checkpoint entries).

Pieces: :class:`LoopConfig`, :func:`lr_at`, :func:`param_groups`, :func:`make_optimizer`,
:class:`ResumableDistributedSampler`, :func:`train_loop` (set-up, resume, steps, checkpoints and
the end are the methods of one small class), :func:`load_training_checkpoint`, and the log
truncation of a resume :func:`truncate_log` (JSON and JSON-lines files: :mod:`transcam_nb.artifacts`).
"""

import dataclasses
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..artifacts import append_jsonl, write_json
from ..artifacts import json_default as _json_default
from ..device import get_device, seed_everything
from .config import (CHECKPOINT_FORMAT, CHECKPOINT_NAME, CLASSIFIER_NAME, LR_SCHEDULES, METRICS_NAME,  # noqa: F401
                     SUMMARY_NAME, LoopConfig, NonFiniteLossError, apply_trans_lr_mult, is_transformer_branch, lr_at,
                     make_optimizer, param_groups, set_lr)
from .sampler import EpochIndexed, ResumableDistributedSampler  # noqa: F401
from .state import (_batch_size_of, _check_resume_compatible, _init_distributed, _params_finite,  # noqa: F401
                    _rng_state, _save_torch, _set_rng_state, _to_device, amp_setup, dist_env,
                    load_training_checkpoint, truncate_log)

__all__ = [
    "CHECKPOINT_FORMAT", "NonFiniteLossError", "LoopConfig", "RunFiles", "StageSpec", "LR_SCHEDULES",
    "param_groups", "is_transformer_branch", "apply_trans_lr_mult", "lr_at", "make_optimizer", "set_lr",
    "ResumableDistributedSampler", "EpochIndexed",
    "train_loop", "load_training_checkpoint", "amp_setup", "dist_env", "truncate_log", "announce",
]

_log = logging.getLogger("transcam_nb.engine")


def announce(msg: str, progress: bool = True) -> None:
    """A training run's start / end line: to the ``transcam_nb`` loggers where they show INFO
    (the command line sets that up), else printed on stderr when ``progress`` (a script), else
    nowhere (the book, whose Setup cell keeps the package's messages out of the chapters)."""
    if _log.isEnabledFor(logging.INFO) and _log.hasHandlers():
        _log.info(msg)
    elif progress:
        print(msg, file=sys.stderr, flush=True)


# =========================================================================================
# what differs between the stages that share the loop
# =========================================================================================
@dataclass(frozen=True)
class RunFiles:
    """File names of a run inside its folder; ``None`` = not written."""

    checkpoint: str = CHECKPOINT_NAME
    final: str = CLASSIFIER_NAME
    metrics: str | None = METRICS_NAME
    summary: str | None = SUMMARY_NAME
    config: str | None = "config.json"


@dataclass(frozen=True)
class StageSpec:
    """How a stage's run differs from the classifier's defaults.

    ``settings`` (a JSON-able dict, e.g. the stage's config) is stored in the checkpoint and a
    resume refuses any change of it outside ``settings_resume_free``. ``shuffle=False`` visits
    the dataset in index order (DeepLab's dataset is indexed by the global sample number).
    ``own_loader_rng`` gives the loader its own generator even without workers, so creating
    an iterator never draws from the global RNG. ``extra_state(step)`` adds entries to every
    checkpoint; ``on_resume(checkpoint)`` sees the checkpoint a run continues from;
    ``final_state(model, step)`` is what the final file holds (default: model, steps, run info).
    """

    files: RunFiles = field(default_factory=RunFiles)
    checkpoint_format: str = CHECKPOINT_FORMAT
    settings: dict | None = None
    settings_resume_free: tuple = ()
    shuffle: bool = True
    own_loader_rng: bool = False
    extra_state: Callable[[int], dict] | None = None
    on_resume: Callable[[dict], None] | None = None
    final_state: Callable[[nn.Module, int], Any] | None = None


# =========================================================================================
# the loop
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
    stage: StageSpec | None = None,
    stop_after: int | None = None,
    forward_kwargs: dict | None = None,
) -> dict:
    """Train ``model`` in place on ``dataset`` with ``loss_fn`` (see the module docstring).

    Parameters
    ----------
    model
        Called as ``model(x, **forward_kwargs)``; its output goes to ``loss_fn(output, target)``.
    dataset
        Items ``(x, target)`` (tensors, or tuples/dicts of tensors). When it has
        ``set_epoch(e)`` it is called with the epoch inside the loader, so augmentations can
        depend on (seed, epoch, index) only.
    loss_fn
        ``loss_fn(output, target) -> scalar tensor`` (mean over the local batch).
    out_dir
        Where ``last.pt``, ``classifier.pt``, ``metrics.jsonl`` and ``summary.json`` go
        (other names: ``stage.files``).
    config
        A :class:`LoopConfig`.
    resume
        Continue from the checkpoint in ``out_dir`` when it exists (a finished run returns at
        once). ``False`` starts afresh and replaces the folder's checkpoint and log.
    callback
        Called after every optimiser step with a dict (``step``, ``epoch``, ``batch``, ``loss``,
        ``lr``, ``model``, ``total_steps``, ``last``: the last step of this call); tests use it
        to interrupt a run, stages to keep their own logs.
    run_info
        Extra JSON-able facts stored in the checkpoint and the log (e.g. the profile). A resume
        checks that its ``"profile"`` entry has not changed, except :attr:`LoopConfig.RESUME_FREE`.
    stage
        A :class:`StageSpec` (file names, settings checked on resume, hooks).
    stop_after
        End this call after that many steps (checkpoint written; a later call resumes).
    forward_kwargs
        Keyword arguments of every training forward (e.g. ``attn_blocks`` for a loss that reads
        the attention).

    Returns a summary dict (``steps``, ``epochs``, ``final_loss``, ``last_loss``,
    ``wall_time_s``, ``train_time_s``, ``images_per_s``, ``effective_batch``, ``world_size``,
    ``complete``, paths, ...).
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
        loop = _Loop(model, dataset, loss_fn, Path(out_dir), config, device=device, rank=rank, world=world,
                     progress=progress, callback=callback, run_info=run_info or {}, desc=desc,
                     stage=stage or StageSpec(), t_start=t_start, forward_kwargs=forward_kwargs)
        return loop.run(resume=resume, stop_after=stop_after)
    finally:
        if created_pg and dist.is_initialized():
            dist.destroy_process_group()


class _Loop:
    """One run of :func:`train_loop`: set-up, resume, the steps, checkpoints, the end."""

    def __init__(self, model, dataset, loss_fn, out_dir: Path, cfg: LoopConfig, *, device, rank, world, progress,
                 callback, run_info, desc, stage: StageSpec, t_start, forward_kwargs: dict | None = None):
        self.model, self.dataset, self.loss_fn, self.out_dir, self.cfg = model, dataset, loss_fn, out_dir, cfg
        self.device, self.rank, self.world, self.is_main = device, rank, world, rank == 0
        self.progress, self.callback, self.run_info, self.desc, self.stage = progress, callback, run_info, desc, stage
        self.t_start = t_start
        self.forward_kwargs = dict(forward_kwargs or {})
        files = stage.files
        self.ckpt_path = out_dir / files.checkpoint
        self.final_path = out_dir / files.final
        self.log_path = out_dir / files.metrics if files.metrics else None
        self.global_batch = cfg.batch_size * (world if cfg.per_device_batch else 1)
        if self.global_batch % world:
            raise ValueError(f"batch_size={cfg.batch_size} (global) is not divisible by the {world} processes; "
                             "change it or set per_device_batch=True")
        self.local_batch = self.global_batch // world
        # progress, kept across steps
        self.step, self.epoch, self.batch_in_epoch, self.train_time_prev = 0, 0, 0, 0.0
        self.resumed_from = None
        self.epoch_loss, self.epoch_n = 0.0, 0
        self.last_logged: dict = {}
        self.last_loss = None
        self.images_seen_this_run = 0

    def say(self, msg: str) -> None:
        if self.is_main:
            announce(f"[{self.desc}] {msg}", self.progress)

    def log(self, record: dict) -> None:
        if self.is_main and self.log_path is not None:
            append_jsonl(self.log_path, record)

    # -- set-up ---------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg, device = self.cfg, self.device
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(cfg.seed + self.rank, deterministic=cfg.deterministic)
        self.sampler = ResumableDistributedSampler(self.dataset, batch_size=self.global_batch,
                                                   num_replicas=self.world, rank=self.rank, seed=cfg.seed,
                                                   shuffle=self.stage.shuffle)
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.total_steps = int(cfg.max_steps) if cfg.max_steps is not None else cfg.epochs * self.steps_per_epoch
        self.model.to(device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.model, cfg)
        self.amp_dtype, use_scaler = amp_setup(cfg.precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_scaler) if use_scaler else None

    def _resume(self, resume: bool) -> dict | None:
        """Load the checkpoint when resuming; returns it (None on a fresh start)."""
        if not (resume and self.ckpt_path.is_file()):
            if self.is_main:  # a fresh start: an old run in this folder must not be resumed by a later call
                for name in dataclasses.astuple(self.stage.files):
                    if name and (self.out_dir / name).exists():
                        (self.out_dir / name).unlink()
            return None
        ck = load_training_checkpoint(self.ckpt_path, self.stage.checkpoint_format)
        _check_resume_compatible(ck, self.cfg, self.run_info, global_batch=self.global_batch, path=self.ckpt_path,
                                 settings=self.stage.settings, settings_free=self.stage.settings_resume_free)
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        if self.scaler is not None and ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        self.step, self.epoch, self.batch_in_epoch = int(ck["step"]), int(ck["epoch"]), int(ck["batch_in_epoch"])
        self.train_time_prev = float(ck.get("train_time_s", 0.0))
        self.epoch_loss, self.epoch_n = float(ck.get("epoch_loss_sum", 0.0)), int(ck.get("epoch_loss_n", 0))
        self.last_loss = ck.get("last_loss")
        rngs = ck.get("rng") or []
        if len(rngs) == self.world:
            _set_rng_state(rngs[self.rank])
        self.resumed_from = self.step
        if self.stage.on_resume is not None:
            self.stage.on_resume(ck)
        if self.is_main and self.log_path is not None:
            truncate_log(self.log_path, self.step)
        return ck

    def _loader(self) -> DataLoader:
        cfg, nw = self.cfg, int(self.cfg.num_workers)
        kw = dict(batch_size=self.local_batch, sampler=self.sampler, num_workers=nw, drop_last=False,
                  pin_memory=self.device.type == "cuda")
        if nw > 0 or self.stage.own_loader_rng:
            g = torch.Generator()
            g.manual_seed(cfg.seed * 1000 + self.rank)
            kw["generator"] = g
        if nw > 0:
            from ..data import worker_init_fn

            kw.update(worker_init_fn=worker_init_fn, persistent_workers=self.device.type == "cuda")
        return DataLoader(EpochIndexed(self.dataset), **kw)

    def _wrap(self) -> nn.Module:
        net = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            net = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.cfg.compile:
            net = torch.compile(net)
        return net

    def _announce(self) -> None:
        n_params = sum(p.numel() for p in self.model.parameters())
        self.amp_name = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.amp_dtype, "fp32")
        self.log({
            "event": "resume" if self.resumed_from is not None else "start", "step": self.step, "epoch": self.epoch,
            "time": time.time(), "device": str(self.device), "world_size": self.world,
            "local_batch": self.local_batch, "effective_batch": self.global_batch,
            "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps, "num_params": n_params,
            "precision": self.amp_name, "config": self.cfg.to_dict(),
            **{k: v for k, v in self.run_info.items() if k != "profile"},
        })
        if self.is_main and self.resumed_from is None and self.stage.files.config:
            write_json(self.out_dir / self.stage.files.config, {"loop": self.cfg.to_dict(), **self.run_info})
        self.say(f"{'resuming at step ' + str(self.step) if self.resumed_from is not None else 'starting'}: "
                 f"{self.total_steps} steps ({self.steps_per_epoch}/epoch), effective batch {self.global_batch} = "
                 f"{self.world} process(es) × {self.local_batch}, device {self.device}, precision {self.amp_name}, "
                 f"{n_params / 1e6:.2f} M parameters, out {self.out_dir}")

    # -- checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self, complete: bool = False) -> None:
        """Collective (every process takes part); rank 0 writes."""
        import torch.distributed as dist

        if not _params_finite(self.model):
            raise NonFiniteLossError(
                f"the parameters became non-finite by step {self.step}; nothing was written, so {self.ckpt_path} "
                "still holds the last good state. Lower the learning rate or enable gradient clipping (grad_clip).")
        rng = [_rng_state()]
        if self.world > 1:
            rng = [None] * self.world
            dist.all_gather_object(rng, _rng_state())
        if self.is_main:
            state = {
                "format": self.stage.checkpoint_format,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
                "world_size": self.world, "effective_batch": self.global_batch,
                "rng": rng, "config": self.cfg.to_dict(), "settings": self.stage.settings,
                "run_info": json.loads(json.dumps(self.run_info, default=_json_default)),
                "train_time_s": self.train_time_prev + (time.perf_counter() - self.t_start),
                "epoch_loss_sum": self.epoch_loss, "epoch_loss_n": self.epoch_n,
                "last_loss": self.last_loss, "complete": bool(complete),
                **(self.stage.extra_state(self.step) if self.stage.extra_state is not None else {}),
            }
            _save_torch(self.ckpt_path, state)
        if self.world > 1:
            dist.barrier()
        self.last_ckpt_time = time.perf_counter()

    def _write_final(self) -> None:
        if not self.is_main:
            return
        if self.stage.final_state is not None:
            obj = self.stage.final_state(self.model, self.step)
        else:
            obj = {"model": self.model.state_dict(), "steps": self.step,
                   "run_info": json.loads(json.dumps(self.run_info, default=_json_default))}
        _save_torch(self.final_path, obj)

    # -- one step ------------------------------------------------------------------------------------
    def _forward_backward(self, net, x, target) -> float:
        """Forward, loss, the all-process non-finite check, backward and the optimiser step
        (the package's one ``optimizer.step()``). Returns the loss averaged over processes."""
        import torch.distributed as dist

        cfg = self.cfg
        if self.amp_dtype is not None:
            with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype):
                loss = self.loss_fn(net(x, **self.forward_kwargs), target)
        else:
            loss = self.loss_fn(net(x, **self.forward_kwargs), target)
        # one collective per step: mean loss over processes, any non-finite, and rank 0's
        # time-based checkpoint decision (so that every process checkpoints together)
        due_time = (cfg.checkpoint_minutes is not None
                    and time.perf_counter() - self.last_ckpt_time >= 60.0 * cfg.checkpoint_minutes)
        flags = torch.stack([loss.detach().float(), (~torch.isfinite(loss.detach())).float(),
                             torch.tensor(float(due_time and self.is_main), device=loss.device)])
        if self.world > 1:
            dist.all_reduce(flags)  # a NaN on any process makes the sum NaN: all stop together
        loss_val, bad, due = flags.tolist()
        loss_val /= self.world
        self.checkpoint_due = due > 0
        if bad > 0 or not math.isfinite(loss_val):
            raise NonFiniteLossError(
                f"non-finite loss ({loss_val}) at step {self.step + 1} (epoch {self.epoch}, batch "
                f"{self.batch_in_epoch}); the run stopped before applying it. The last good checkpoint is "
                f"{self.ckpt_path}{'' if self.ckpt_path.is_file() else ' (none written yet)'}. Lower the learning "
                "rate, enable grad_clip, or try precision='fp32' / 'bf16'.")
        opt, scaler = self.optimizer, self.scaler
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            opt.step()
        return loss_val

    def _account(self, loss_val: float, n_img: int, lr: float, last: bool) -> None:
        """Counters, the windowed ``train`` log record and the per-epoch record after a step."""
        self.step += 1
        self.batch_in_epoch += 1
        self.last_loss = loss_val
        self.images_seen_this_run += n_img
        self.win_loss += loss_val
        self.win_n += 1
        self.win_images += n_img
        self.epoch_loss += loss_val
        self.epoch_n += 1
        self.bar.update(1)
        if self.win_n >= self.cfg.log_every or last or self.batch_in_epoch == self.steps_per_epoch:
            dt = max(1e-9, time.perf_counter() - self.win_t0)
            self.last_logged = {"event": "train", "step": self.step, "epoch": self.epoch,
                                "loss": self.win_loss / self.win_n, "lr": lr, "images_per_s": self.win_images / dt,
                                "steps": self.win_n,
                                "elapsed_s": self.train_time_prev + time.perf_counter() - self.t_start}
            self.log(self.last_logged)
            self.bar.set_postfix(loss=f"{self.last_logged['loss']:.4f}",
                                 img_s=f"{self.last_logged['images_per_s']:.1f}", lr=f"{lr:.2e}")
            self.win_loss, self.win_n, self.win_images, self.win_t0 = 0.0, 0, 0, time.perf_counter()

    def _end_epoch(self) -> None:
        self.log({"event": "epoch", "step": self.step, "epoch": self.epoch,
                  "loss": self.epoch_loss / max(1, self.epoch_n), "steps": self.epoch_n})
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        self.epoch_loss, self.epoch_n = 0.0, 0

    def _steps(self, net, loader, stop_at: int) -> None:
        """Optimiser steps until ``stop_at`` (this call's last step)."""
        cfg = self.cfg
        self.win_loss, self.win_n, self.win_t0, self.win_images = 0.0, 0, time.perf_counter(), 0
        net.train()
        while self.step < stop_at:
            self.sampler.set_position(self.epoch, self.batch_in_epoch)
            for x, target in loader:
                lr = lr_at(self.step, self.total_steps, cfg.lr, cfg.lr_schedule, cfg.warmup_frac, cfg.poly_power)
                set_lr(self.optimizer, lr)
                x = _to_device(x, self.device, non_blocking=True, channels_last=cfg.channels_last)
                target = _to_device(target, self.device, non_blocking=True)
                loss_val = self._forward_backward(net, x, target)
                last = self.step + 1 >= stop_at
                self._account(loss_val, _batch_size_of(x) * self.world, lr, last)
                if self.callback is not None:
                    self.callback({"step": self.step, "epoch": self.epoch, "batch": self.batch_in_epoch,
                                   "loss": loss_val, "lr": lr, "model": self.model, "total_steps": self.total_steps,
                                   "last": last})
                end_of_epoch = self.batch_in_epoch == self.steps_per_epoch
                if end_of_epoch:
                    self._end_epoch()
                every = cfg.checkpoint_every_steps
                if not last and (end_of_epoch or self.checkpoint_due or (every and self.step % every == 0)):
                    self.save_checkpoint()
                if last or end_of_epoch:
                    break

    # -- the run ---------------------------------------------------------------------------------------
    def run(self, *, resume: bool, stop_after: int | None) -> dict:
        from tqdm.auto import tqdm

        self._setup()
        ck = self._resume(resume)
        if ck is not None and ck.get("complete") and self.step >= self.total_steps:
            self.say(f"{self.ckpt_path} is a finished run ({self.step} steps); nothing to do "
                     "(resume=False to train again)")
            if self.is_main and not self.final_path.is_file():
                self._write_final()
            summ = self.out_dir / self.stage.files.summary if self.stage.files.summary else None
            if summ is not None and summ.is_file():
                return json.loads(summ.read_text())
            return {"steps": self.step, "total_steps": self.total_steps, "checkpoint": str(self.ckpt_path),
                    "last_loss": self.last_loss, "complete": True}
        net = self._wrap()
        loader = self._loader()
        self._announce()
        self.last_ckpt_time = time.perf_counter()
        stop_at = self.total_steps if stop_after is None else min(self.total_steps, self.step + int(stop_after))
        self.bar = tqdm(total=self.total_steps, initial=self.step, desc=self.desc, unit="step", dynamic_ncols=True,
                        disable=not (self.progress and self.is_main))
        try:
            self._steps(net, loader, stop_at)
        finally:
            self.bar.close()
        return self._finish()

    def _finish(self) -> dict:
        complete = self.step >= self.total_steps
        self.save_checkpoint(complete=complete)
        wall = time.perf_counter() - self.t_start
        final_loss = self.last_logged.get("loss", self.last_loss)
        summary = {
            "steps": self.step, "total_steps": self.total_steps, "epochs": self.step / self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch, "final_loss": final_loss, "last_loss": self.last_loss,
            "wall_time_s": wall, "train_time_s": self.train_time_prev + wall,
            "images_per_s": self.images_seen_this_run / wall if wall > 0 else None,
            "effective_batch": self.global_batch, "local_batch": self.local_batch, "world_size": self.world,
            "device": str(self.device), "precision": self.amp_name, "resumed_from_step": self.resumed_from,
            "checkpoint": str(self.ckpt_path), "classifier": str(self.final_path) if complete else None,
            "metrics_log": str(self.log_path) if self.log_path else None, "out_dir": str(self.out_dir),
            "complete": complete,
        }
        if complete:
            self._write_final()
            self.log({"event": "end", "step": self.step, "epoch": self.epoch, "final_loss": final_loss,
                      "wall_time_s": wall, "train_time_s": summary["train_time_s"]})
            if self.is_main and self.stage.files.summary:
                write_json(self.out_dir / self.stage.files.summary, summary)
        self.say(f"{'done' if complete else 'stopped'}: {self.step} steps, final loss "
                 f"{final_loss if final_loss is None else round(final_loss, 4)}, "
                 f"{wall:.1f} s this run ({summary['train_time_s']:.1f} s in all)")
        return summary



#: profile fields, besides the LoopConfig ones, that change what a training run computes (a resume
#: must not change them; paths, devices and inference settings may change)
