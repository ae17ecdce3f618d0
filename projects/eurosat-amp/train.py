"""EuroSAT land-cover classification in pure PyTorch with mixed precision; data-parallel under torchrun.

python projects/eurosat-amp/train.py train --epochs 3
torchrun --nproc_per_node 2 projects/eurosat-amp/train.py train
python projects/eurosat-amp/train.py evaluate runs/eurosat-amp/<run>/best.ckpt
python projects/eurosat-amp/train.py predict runs/eurosat-amp/<run>/best.ckpt image.tif
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from eurosat.cli import build_parser, parse_args, run_cli
from eurosat.datasets import ShardSampler, load_configured_splits, to_input
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
from eurosat.training import make_deterministic, resolve_device, restore_rng_state, rng_state, seed_everything, seed_worker

PROJECT = "eurosat-amp"
PROGRESS_EVERY = 10  # steps between progress-bar updates: each one syncs the device


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


def resolve_precision(choice: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 on GPUs that have it, else fp16 (with a gradient scaler); fp32 on the CPU."""
    if choice == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[choice]


def all_reduce(totals: torch.Tensor, proc: Process) -> torch.Tensor:
    if proc.world_size > 1:
        dist.all_reduce(totals)
    return totals


def train_one_epoch(model, loader, optimizer, scaler, amp_dtype, scale, proc, desc, profiler=None) -> torch.Tensor:
    model.train()
    totals = torch.zeros(3, device=proc.device, dtype=torch.float64)  # loss sum, correct, samples
    bar = tqdm(loader, desc=desc, disable=None if proc.is_main else True, leave=False, file=sys.stderr, dynamic_ncols=True)
    for step, (images, labels) in enumerate(bar):
        x, y = to_input(images, scale, proc.device), labels.to(proc.device, non_blocking=True)
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
        if proc.is_main and step % PROGRESS_EVERY == 0:
            loss_sum, correct, seen = totals.tolist()
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}")
    return all_reduce(totals, proc)


def make_profiler(run_dir: Path):
    """Profiles a few steps of the first epoch into a trace that TensorBoard and Perfetto open."""
    return torch.profiler.profile(
        schedule=torch.profiler.schedule(wait=1, warmup=1, active=3, repeat=1),
        on_trace_ready=torch.profiler.tensorboard_trace_handler(str(run_dir / "profile")),
        record_shapes=True,
    )


def resumed_config(args) -> tuple[dict, dict, Path]:
    """Settings of the run being resumed: its own config, with the new --epochs, --workers and --device."""
    run_dir, ckpt_path = resolve_resume(args.resume)
    checkpoint = load_checkpoint(ckpt_path)
    config = {**checkpoint["config"], "epochs": args.epochs, "workers": args.workers, "device": args.device}
    return config, checkpoint, run_dir


def train(args) -> list[dict]:
    """Train (or resume) one run; returns the per-epoch history. Every rank calls this."""
    proc = setup_process(args.device)
    try:
        return _train(args, proc)
    finally:
        if proc.world_size > 1:
            dist.destroy_process_group()


def _train(args, proc: Process) -> list[dict]:
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
    seed_everything(config["seed"])
    core = build_model(
        config["model"], len(data.classes), len(data.bands), config["pretrained"], config["weights"] and Path(config["weights"])
    )
    core = core.to(proc.device, memory_format=torch.channels_last)
    model = DistributedDataParallel(core) if proc.world_size > 1 else core
    if config.get("compile"):
        model = torch.compile(model)
    optimizer = torch.optim.Adam(core.parameters(), lr=config["lr"], fused=proc.device.type == "cuda")
    amp_dtype = resolve_precision(config["precision"], proc.device)
    scaler = torch.amp.GradScaler(proc.device.type, enabled=amp_dtype == torch.float16 and proc.device.type == "cuda")

    history: list[dict] = []
    if checkpoint is not None:
        core.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        restore_rng_state(checkpoint["rng"])
        history = checkpoint["history"]
    elif proc.is_main:
        run_dir = create_run_dir(Path(config["out"]), config["model"])
    config.update(classes=list(data.classes), bands_resolved=list(data.bands), scale=data.scale, world_size=proc.world_size)

    batch_per_rank = max(1, config["batch_size"] // proc.world_size)
    train_sampler = DistributedSampler(data.train, proc.world_size, proc.rank, shuffle=True, seed=config["seed"])
    loader_options = {
        "batch_size": batch_per_rank,
        "num_workers": config["workers"],
        "pin_memory": proc.device.type == "cuda",
        "persistent_workers": config["workers"] > 0,
        "worker_init_fn": seed_worker,
    }
    # Worker seeds come from the loader's own generator, so the global RNG (and an exact resume) is untouched.
    train_loader = DataLoader(
        data.train, sampler=train_sampler, generator=torch.Generator().manual_seed(config["seed"]), **loader_options
    )
    val_loader = DataLoader(data.val, sampler=ShardSampler(len(data.val), proc.rank, proc.world_size), **loader_options)

    if proc.is_main:  # only rank 0 writes into the run directory
        write_json(run_dir / "config.json", config)
        record_provenance(run_dir, provenance(config["seed"], proc.device, proc.world_size))
        metrics = MetricsLog(run_dir)
        metrics.restart(history)
        writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=len(history) + 1)
        print(
            f"run {run_dir}: {len(data.train)} train / {len(data.val)} val images, {config['model']} on {proc.device}"
            f" x{proc.world_size}, precision {amp_dtype or torch.float32}",
            flush=True,
        )

    best_acc = max((r["val_acc"] for r in history), default=-1.0)
    for epoch in range(len(history), config["epochs"]):
        train_sampler.set_epoch(epoch)
        profiler = make_profiler(run_dir) if config.get("profile") and epoch == len(history) and proc.is_main else None
        start = time.perf_counter()
        with profiler or contextlib.nullcontext():
            desc = f"Epoch {epoch + 1}/{config['epochs']}"
            train_totals = train_one_epoch(model, train_loader, optimizer, scaler, amp_dtype, data.scale, proc, desc, profiler)
        train_seconds = time.perf_counter() - start  # the all-reduce above synchronised the device
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
            "images_per_s": seen / train_seconds,
            "seconds": time.perf_counter() - start,
        }
        history.append(record)
        if proc.is_main:
            state = {
                "model": core.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch + 1,
                "rng": rng_state(),
                "history": history,
                "config": config,
            }
            save_checkpoint(state, run_dir / "last.ckpt", keep_previous=True)
            if record["val_acc"] > best_acc:
                best_acc = record["val_acc"]
                save_checkpoint(state, run_dir / "best.ckpt")
            metrics.append(record)
            for name in ("loss", "acc", "val_loss", "val_acc", "images_per_s"):
                writer.add_scalar(name, record[name], epoch + 1)
            print(
                f"Epoch {epoch + 1}/{config['epochs']} loss {record['loss']:.4f} acc {record['acc']:.4f} "
                f"val_loss {record['val_loss']:.4f} val_acc {record['val_acc']:.4f} "
                f"({record['images_per_s']:.0f} img/s, {record['seconds']:.1f} s)",
                flush=True,
            )
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


def main(argv=None):
    parser, commands = build_parser(__doc__, PROJECT)
    commands["train"].add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="autocast dtype; auto: bf16 on GPUs that support it, else fp16 with a scaler; fp32 on CPU",
    )
    commands["train"].add_argument("--compile", action="store_true", help="torch.compile the model")
    commands["train"].add_argument(
        "--profile", action="store_true", help="write a torch profiler trace of a few steps to RUN/profile"
    )
    args = parse_args(parser, argv)
    return {"train": train, "evaluate": evaluate_checkpoint, "predict": predict_checkpoint}[args.command](args)


if __name__ == "__main__":
    run_cli(main)
