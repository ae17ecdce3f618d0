"""The pure PyTorch training loop's parts: one process per device, one epoch with autocast and a gradient scaler.

Plain PyTorch projects build their train.py from them, and the benchmark (bench/run.py) times them alone.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from eurosat.datasets import to_input
from eurosat.gpu import resolve_device
from eurosat.training import LossWindow, set_matmul_precision

SYNC_EVERY = 10  # steps between host syncs (progress bar, stop requests under DDP): each one waits for the device


@dataclass(frozen=True)
class Process:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_process(device_choice: str) -> Process:
    """One process per device; torchrun sets WORLD_SIZE, RANK and LOCAL_RANK."""
    device = resolve_device(device_choice)
    set_matmul_precision(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Process(0, 1, device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Process(dist.get_rank(), world_size, device)


def all_reduce(totals: torch.Tensor, proc: Process) -> torch.Tensor:
    if proc.world_size > 1:
        dist.all_reduce(totals)
    return totals


def gather_totals(totals: torch.Tensor, proc: Process) -> torch.Tensor:
    """Every rank's partial epoch totals, (world_size, 3), for a mid-epoch checkpoint."""
    if proc.world_size == 1:
        return totals[None].cpu()
    parts = [torch.empty_like(totals) for _ in range(proc.world_size)]
    dist.all_gather(parts, totals)
    return torch.stack(parts).cpu()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model itself, under torch.compile's and DistributedDataParallel's wrappers."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def make_profiler(run_dir: Path):
    """Profiles a few steps of the first epoch into a trace that TensorBoard and Perfetto open."""
    return torch.profiler.profile(
        schedule=torch.profiler.schedule(wait=1, warmup=1, active=3, repeat=1),
        on_trace_ready=torch.profiler.tensorboard_trace_handler(str(run_dir / "profile")),
        record_shapes=True,
    )


def train_one_epoch(
    model,
    batches,
    optimizer,
    scaler,
    amp_dtype,
    scale,
    proc,
    desc,
    *,
    totals=None,
    first_step=0,
    after_step=None,
    sync_every=SYNC_EVERY,
    channels_last=True,
    profiler=None,
    loss_fn=F.cross_entropy,
    clip_grad=None,
    accum_steps=1,
    scheduler=None,
    ema=None,
    augment=None,
) -> torch.Tensor:
    """One pass over `batches` (from batch `first_step` on, adding to `totals`); returns this rank's loss sum,
    correct count and sample count, accumulated on the device and read only every `sync_every` steps. A loss that
    is not finite raises NonFiniteLoss at the next check: every `sync_every` steps, at the end, and in
    `after_step(step, totals, losses)` through losses.check() before it saves anything.

    The recipe (eurosat.recipe): `loss_fn(logits, labels)` is the training loss; `augment(x, step)` changes the
    device batch; the optimizer steps once every `accum_steps` batches (and after the last), on the gradients of
    their losses each divided by `accum_steps`, as Lightning's accumulate_grad_batches; `clip_grad` clips the
    gradients' global norm, unscaled first; `scheduler` and `ema` are stepped after each optimizer step.
    `after_step` runs only after an optimizer step, so that a checkpoint never falls inside an accumulation."""
    model.train()
    if totals is None:
        totals = torch.zeros(3, device=proc.device, dtype=torch.float64)
    losses = LossWindow(sync_every, proc.device, first_step + 1)
    last = len(batches) if hasattr(batches, "__len__") else None  # (the benchmark passes a slice of a loader)
    bar = tqdm(batches, desc=desc, initial=first_step, disable=None if proc.is_main else True, leave=False, file=sys.stderr)
    for step, (images, labels) in enumerate(bar, start=first_step + 1):
        x = to_input(images, scale, proc.device, channels_last)
        if augment is not None:
            x = augment(x, step)
        y = labels.to(proc.device, non_blocking=True)
        stepping = step % accum_steps == 0 or step == last
        # DDP averages the gradients only on the backward of an optimizer step's last batch
        with model.no_sync() if not stepping and hasattr(model, "no_sync") else contextlib.nullcontext():
            with torch.autocast(proc.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(x)
                loss = loss_fn(logits, y)
            scaler.scale(loss / accum_steps if accum_steps > 1 else loss).backward()
        if stepping:
            if clip_grad:
                scaler.unscale_(optimizer)  # the norm of the real gradients, not of the fp16-scaled ones
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
            if ema is not None:
                ema.update_parameters(unwrap(model))
        totals[0] += loss.detach() * len(y)
        totals[1] += (logits.argmax(1) == y).sum()
        totals[2] += len(y)
        losses.add(step, loss)
        if profiler is not None:
            profiler.step()
        if step % sync_every == 0:
            losses.check()
            if proc.is_main:
                loss_sum, correct, seen = totals.tolist()
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}")
        if after_step is not None and stepping:
            after_step(step, totals, losses)
    losses.check()
    return totals
