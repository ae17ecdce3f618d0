"""EuroSAT land-cover classification in pure PyTorch with mixed precision; data-parallel under torchrun.

python projects/eurosat-amp/train.py train --epochs 3
torchrun --nproc_per_node 2 projects/eurosat-amp/train.py train
python projects/eurosat-amp/train.py evaluate runs/eurosat-amp/<run>/best.ckpt
python projects/eurosat-amp/train.py predict runs/eurosat-amp/<run>/best.ckpt image.tif
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from eurosat.cli import build_parser, non_negative_int, parse_args, run_cli
from eurosat.datasets import BatchLoader, load_configured_splits, resident_device, to_input
from eurosat.errors import UserError
from eurosat.inference import evaluate, evaluate_command, predict_command
from eurosat.models import build_model, check_model_name
from eurosat.runs import (
    MetricsLog,
    create_run_dir,
    load_checkpoint,
    provenance,
    record_provenance,
    resolve_resume,
    save_checkpoint,
    write_json,
)
from eurosat.training import (
    autocast_dtype,
    make_deterministic,
    resolve_device,
    restore_rng_state,
    rng_state,
    seed_everything,
)

PROJECT = "eurosat-amp"
PEER_LOST = re.compile(r"Connection (closed|reset) by peer|Broken pipe|timed out|NCCL error", re.I)
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


class StopRequest:
    """SIGINT (Ctrl-C) and SIGTERM (docker stop, Slurm, Kubernetes) ask training to stop at the next step, after
    a checkpoint; a second signal aborts at once."""

    def __init__(self):
        self.signum = None
        self.previous = {signum: signal.signal(signum, self.handle) for signum in (signal.SIGINT, signal.SIGTERM)}

    def release(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        if os.environ.get("RANK", "0") == "0":
            print(f"{signal.Signals(signum).name}: stopping after this step with a checkpoint", file=sys.stderr, flush=True)

    def agreed(self, proc: Process, step: int) -> bool:
        """Whether every rank stops now: ranks may see the signal at different steps, so they vote every SYNC_EVERY."""
        if proc.world_size == 1:
            return self.signum is not None
        if step % SYNC_EVERY:
            return False
        vote = torch.tensor([self.signum is not None], dtype=torch.int32, device=proc.device)
        dist.all_reduce(vote, dist.ReduceOp.MAX)
        return bool(vote.item())


class Stopped(Exception):
    """Training stopped on request after writing a checkpoint."""


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
) -> torch.Tensor:
    """One pass over `batches` (from batch `first_step` on, adding to `totals`); returns this rank's loss sum,
    correct count and sample count, accumulated on the device and read only every `sync_every` steps."""
    model.train()
    if totals is None:
        totals = torch.zeros(3, device=proc.device, dtype=torch.float64)
    bar = tqdm(batches, desc=desc, initial=first_step, disable=None if proc.is_main else True, leave=False, file=sys.stderr)
    for step, (images, labels) in enumerate(bar, start=first_step + 1):
        x = to_input(images, scale, proc.device, channels_last)
        y = labels.to(proc.device, non_blocking=True)
        with torch.autocast(proc.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        totals[0] += loss.detach() * len(y)
        totals[1] += (logits.argmax(1) == y).sum()
        totals[2] += len(y)
        if profiler is not None:
            profiler.step()
        if proc.is_main and step % sync_every == 0:
            loss_sum, correct, seen = totals.tolist()
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}")
        if after_step is not None:
            after_step(step, totals)
    return totals


def make_optimizer(model, lr: float, device: torch.device, fused: bool | None = None):
    """Adam, fused (one kernel for all parameters) on GPUs; on the CPU PyTorch's default measured faster."""
    fused = device.type == "cuda" if fused is None else fused
    return torch.optim.Adam(model.parameters(), lr=lr, fused=fused or None)


def make_profiler(run_dir: Path):
    """Profiles a few steps of the first epoch into a trace that TensorBoard and Perfetto open."""
    return torch.profiler.profile(
        schedule=torch.profiler.schedule(wait=1, warmup=1, active=3, repeat=1),
        on_trace_ready=torch.profiler.tensorboard_trace_handler(str(run_dir / "profile")),
        record_shapes=True,
    )


def resumed_config(args) -> tuple[dict, dict, Path]:
    """Settings of the run being resumed: its own config, with the new --epochs, --device and --data-on."""
    run_dir, ckpt_path = resolve_resume(args.resume)
    checkpoint = load_checkpoint(ckpt_path)
    config = {**checkpoint["config"], **{key: getattr(args, key) for key in ("epochs", "device", "data_on")}}
    return config, checkpoint, run_dir


def gather_totals(totals: torch.Tensor, proc: Process) -> torch.Tensor:
    """Every rank's partial epoch totals, (world_size, 3), for a mid-epoch checkpoint."""
    if proc.world_size == 1:
        return totals[None].cpu()
    parts = [torch.empty_like(totals) for _ in range(proc.world_size)]
    dist.all_gather(parts, totals)
    return torch.stack(parts).cpu()


def train(args) -> list[dict]:
    """Train (or resume) one run; returns the per-epoch history. Every rank calls this."""
    proc = setup_process(args.device)
    stop = StopRequest()
    try:
        return _train(args, proc, stop)
    except Stopped as stopped:
        if proc.is_main:
            print(stopped, file=sys.stderr, flush=True)
        sys.exit(128 + stopped.args[1])
    except RuntimeError as exc:  # gloo and NCCL raise RuntimeError (or its DistError subclasses) when a peer is gone
        if proc.world_size == 1 or not (isinstance(exc, dist.DistError) or PEER_LOST.search(str(exc))):
            raise
        first_line = str(exc).strip().splitlines()[0]
        raise UserError(
            f"lost another training process (a node or rank stopped): {first_line[:200]}; "
            "continue from the last checkpoint with --resume runs/<project>/<run-id>"
        ) from None
    finally:
        stop.release()
        if proc.world_size > 1:
            dist.destroy_process_group()


def _train(args, proc: Process, stop: StopRequest) -> list[dict]:
    checkpoint = None
    if args.resume:
        config, checkpoint, run_dir = resumed_config(args)
    else:
        config = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    check_model_name(config["model"])
    if proc.is_main:  # decode the images once; the other ranks wait, then open the same cache
        data = load_configured_splits(config)
    if proc.world_size > 1:
        dist.barrier()
    if not proc.is_main:
        data = load_configured_splits(config, progress=False)

    if config.get("deterministic"):
        make_deterministic()
    else:
        torch.backends.cudnn.benchmark = True  # the fastest convolution algorithms for these fixed shapes
    seed_everything(config["seed"])
    core = build_model(
        config["model"], len(data.classes), len(data.bands), config["pretrained"], config["weights"] and Path(config["weights"])
    )
    core = core.to(proc.device, memory_format=torch.channels_last)
    model = DistributedDataParallel(core) if proc.world_size > 1 else core
    if config.get("compile"):
        model = torch.compile(model)
    optimizer = make_optimizer(core, config["lr"], proc.device)
    amp_dtype = autocast_dtype(config["precision"], proc.device)
    scaler = torch.amp.GradScaler(proc.device.type, enabled=amp_dtype == torch.float16)

    history: list[dict] = []
    first_step, partial_totals = 0, None
    if checkpoint is not None:
        core.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        restore_rng_state(checkpoint["rng"])
        history = checkpoint["history"]
        if checkpoint.get("step"):  # written mid-epoch: skip the batches already trained, keep their totals
            if len(checkpoint["epoch_totals"]) != proc.world_size:
                raise UserError(
                    f"--resume {run_dir}: the checkpoint was written mid-epoch by {len(checkpoint['epoch_totals'])} "
                    f"process(es); resume it with the same number, or from the epoch checkpoint {run_dir}/best.ckpt"
                )
            first_step = checkpoint["step"]
            partial_totals = checkpoint["epoch_totals"][proc.rank].to(proc.device)
    elif proc.is_main:
        run_dir = create_run_dir(Path(config["out"]), config["model"])
    config.update(classes=list(data.classes), bands_resolved=list(data.bands), scale=data.scale, world_size=proc.world_size)

    batch_per_rank = max(1, config["batch_size"] // proc.world_size)
    data_device = resident_device(data.train, proc.device, config.get("data_on", "auto"))
    shards = {"rank": proc.rank, "world_size": proc.world_size, "device": data_device, "for_cuda": proc.device.type == "cuda"}
    train_loader = BatchLoader(data.train, batch_per_rank, shuffle=True, seed=config["seed"], **shards)
    val_loader = BatchLoader(data.val, batch_per_rank, shuffle=False, **shards)

    if proc.is_main:  # only rank 0 writes into the run directory
        write_json(run_dir / "config.json", config)
        record_provenance(run_dir, provenance(config["seed"], proc.device, proc.world_size))
        metrics = MetricsLog(run_dir)
        metrics.restart(history)
        writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=len(history) + 1)
        print(
            f"run {run_dir}: {len(data.train)} train / {len(data.val)} val images, {config['model']} on {proc.device}"
            f" x{proc.world_size}, precision {amp_dtype or torch.float32}, data in {data_device or 'host memory'}",
            flush=True,
        )

    def state(epoch: int, step: int = 0, totals=None) -> dict:
        return {
            "model": core.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "step": step,
            "epoch_totals": totals,
            "rng": rng_state(),
            "history": history,
            "config": config,
        }

    def stopped(epoch: int, step: int) -> Stopped:
        where = f"epoch {epoch + 1} step {step}/{len(train_loader)}" if step else f"the end of epoch {epoch}"
        return Stopped(
            f"stopped by {signal.Signals(stop.signum).name} at {where}: checkpoint {run_dir / 'last.ckpt'} written; "
            f"continue with --resume {run_dir}",
            stop.signum,
        )

    def after_step(epoch: int):
        def check(step: int, totals: torch.Tensor) -> None:
            every = config.get("checkpoint_every")
            stopping = stop.agreed(proc, step)
            if stopping or (every and step % every == 0 and step < len(train_loader)):
                gathered = gather_totals(totals, proc)
                if proc.is_main:
                    save_checkpoint(state(epoch, step, gathered), run_dir / "last.ckpt", keep_previous=True)
            if stopping:
                raise stopped(epoch, step)

        return check

    best_acc = max((r["val_acc"] for r in history), default=-1.0)
    for epoch in range(len(history), config["epochs"]):
        train_loader.set_epoch(epoch, skip_batches=first_step)
        profiler = make_profiler(run_dir) if config.get("profile") and epoch == len(history) and proc.is_main else None
        start = time.perf_counter()
        seen_before = 0 if partial_totals is None else float(partial_totals[2])
        with profiler or contextlib.nullcontext():
            train_totals = train_one_epoch(
                model,
                train_loader,
                optimizer,
                scaler,
                amp_dtype,
                data.scale,
                proc,
                f"Epoch {epoch + 1}/{config['epochs']}",
                totals=partial_totals,
                first_step=first_step,
                after_step=after_step(epoch),
                profiler=profiler,
            )
        first_step, partial_totals = 0, None
        train_seen_here = float(all_reduce(torch.tensor([float(train_totals[2]) - seen_before], device=proc.device), proc))
        train_seconds = time.perf_counter() - start  # the all-reduce above synchronised the device
        train_totals = all_reduce(train_totals, proc)
        val_totals = all_reduce(evaluate(model, val_loader, data.scale, proc.device, amp_dtype), proc)
        loss_sum, correct, seen = train_totals.tolist()
        val_loss_sum, val_correct, val_seen = val_totals.tolist()
        record = {
            "epoch": epoch + 1,
            "loss": loss_sum / seen,
            "acc": correct / seen,
            "val_loss": val_loss_sum / val_seen,
            "val_acc": val_correct / val_seen,
            "val_samples": int(val_seen),
            "images_per_s": train_seen_here / train_seconds,
            "seconds": time.perf_counter() - start,
        }
        history.append(record)
        if proc.is_main:
            save_checkpoint(state(epoch + 1), run_dir / "last.ckpt", keep_previous=True)
            if record["val_acc"] > best_acc:
                best_acc = record["val_acc"]
                save_checkpoint(state(epoch + 1), run_dir / "best.ckpt")
            metrics.append(record)
            for name in ("loss", "acc", "val_loss", "val_acc", "images_per_s"):
                writer.add_scalar(name, record[name], epoch + 1)
            print(
                f"Epoch {epoch + 1}/{config['epochs']} loss {record['loss']:.4f} acc {record['acc']:.4f} "
                f"val_loss {record['val_loss']:.4f} val_acc {record['val_acc']:.4f} "
                f"({record['images_per_s']:.0f} img/s, {record['seconds']:.1f} s)",
                flush=True,
            )
        if stop.agreed(proc, 0) and epoch + 1 < config["epochs"]:
            raise stopped(epoch + 1, 0)
    if proc.is_main:
        writer.close()
        metrics.write_summary(history, run_dir=str(run_dir))
        print(f"run directory: {run_dir}")
    return history


def load_trained_model(checkpoint_path: Path, device: torch.device):
    checkpoint = load_checkpoint(checkpoint_path)
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if not config or "model" not in checkpoint:
        raise UserError(f"{checkpoint_path} is not an {PROJECT} checkpoint")
    model = build_model(config["model"], len(config["classes"]), len(config["bands_resolved"]))
    model.load_state_dict(checkpoint["model"])
    return model.to(device, memory_format=torch.channels_last), config


def evaluate_checkpoint(args) -> dict:
    device = resolve_device(args.device)
    model, config = load_trained_model(args.checkpoint, device)
    return evaluate_command(model, config, args, device)


def predict_checkpoint(args) -> list:
    device = resolve_device(args.device)
    model, config = load_trained_model(args.checkpoint, device)
    return predict_command(model, args.files, config["bands_resolved"], config["scale"], config["classes"], device)


def make_parser():
    """The shared flags plus this project's own (make reproduce reads them too)."""
    parser, commands = build_parser(__doc__, PROJECT)
    commands["train"].add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="autocast dtype; auto: bf16 on GPUs that have it, else fp16 with a scaler; bf16 on CPUs with native bf16, else fp32",
    )
    commands["train"].add_argument("--compile", action="store_true", help="torch.compile the model")
    commands["train"].add_argument(
        "--checkpoint-every",
        type=non_negative_int,
        default=0,
        metavar="STEPS",
        help="also write last.ckpt every STEPS steps, with the position in the epoch (0: at epoch ends only)",
    )
    commands["train"].add_argument(
        "--profile", action="store_true", help="write a torch profiler trace of a few steps to RUN/profile"
    )
    return parser, commands


def main(argv=None):
    args = parse_args(make_parser()[0], argv)
    return {"train": train, "evaluate": evaluate_checkpoint, "predict": predict_checkpoint}[args.command](args)


if __name__ == "__main__":
    run_cli(main)
