"""EuroSAT land-cover classification in pure PyTorch with mixed precision; data-parallel under torchrun.

python projects/eurosat-amp/train.py train --epochs 3
torchrun --nproc_per_node 2 projects/eurosat-amp/train.py train
python projects/eurosat-amp/train.py evaluate runs/eurosat-amp/<run>/best.ckpt
python projects/eurosat-amp/train.py predict runs/eurosat-amp/<run>/best.ckpt image.tif
"""

from __future__ import annotations

import contextlib
import functools
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from eurosat import batchnorm, lifecycle, normalization, recipe
from eurosat.datasets import BatchLoader, load_configured_splits, resident_device
from eurosat.errors import UserError
from eurosat.inference import evaluate, split_totals
from eurosat.loop import all_reduce, gather_totals, make_profiler, setup_process, train_one_epoch
from eurosat.models import build_model
from eurosat.training import autocast_dtype, make_deterministic, seed_everything


def add_flags(train):
    train.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="autocast dtype; auto: bf16 on GPUs that have it, else fp16 with a scaler; bf16 on CPUs with native bf16, else fp32",
    )
    train.add_argument("--compile", action="store_true", help="torch.compile the model")
    train.add_argument("--profile", action="store_true", help="write a torch profiler trace of a few steps to RUN/profile")


def fit(run: lifecycle.Run) -> None:
    proc = setup_process(run.config["device"])
    try:
        _fit(run, proc)
    finally:
        if proc.world_size > 1:
            dist.destroy_process_group()


def _fit(run: lifecycle.Run, proc) -> None:
    config, checkpoint = run.config, run.checkpoint
    if proc.is_main:  # decode the images once; the other ranks wait, then open the same cache
        data = load_configured_splits(config)
    if proc.world_size > 1:
        dist.barrier()
    if not proc.is_main:
        data = load_configured_splits(config, progress=False)
    run.timeline.mark("data_ready")

    # cudnn.benchmark stays off: on an H200 it gave the same steady speed (4,469 against 4,481 images/s NCHW,
    # 5,692 against 5,709 channels_last) but autotunes every new input shape, a one-time cost larger than a whole
    # epoch of a default run (docs/speed.md, "First GPU run").
    if config.get("deterministic"):
        make_deterministic()
    seed_everything(config["seed"])
    size = data.input_spec()["height"]  # a model built for one input size (a ViT) is built for the data's
    core = build_model(
        config["model"], len(data.classes), len(data.bands), run.initial_weights, size, drop_path=config.get("drop_path")
    )
    config["normalization"] = normalization.statistics(config, data)  # --normalize: in the model, and recorded
    core = normalization.normalized(core, config["normalization"])
    # channels_last: the fastest whole default run measured (docs/speed.md, H100 2026-12-05): NCHW's first step is
    # 5.4 s shorter, but it trains at 54% of the speed and is behind again within the first epoch
    core = core.to(proc.device, memory_format=torch.channels_last)
    model = DistributedDataParallel(core) if proc.world_size > 1 else core
    # --compile compiles the training step alone: validation (eval mode, no gradients) would be a second graph to
    # compile, a fifth to a quarter of the compile time on the CPU, for well under a second an epoch. It runs the same
    # weights eagerly.
    train_model = torch.compile(model) if config.get("compile") else model
    run.timeline.mark("model_built", proc.device)
    optimizer = recipe.make_optimizer(core, config, proc.device)
    amp_dtype = autocast_dtype(config["precision"], proc.device)
    scaler = torch.amp.GradScaler(proc.device.type, enabled=amp_dtype == torch.float16)

    # the recipe (eurosat.recipe): replace any of these with a function of this project's own
    batch_per_rank = max(1, config["batch_size"] // proc.world_size)
    data_device = resident_device(data.train, proc.device, config["data_on"])
    shards = {"rank": proc.rank, "world_size": proc.world_size, "device": data_device, "for_cuda": proc.device.type == "cuda"}
    train_loader = BatchLoader(data.train, batch_per_rank, shuffle=True, seed=config["seed"], **shards)
    val_loader = BatchLoader(data.val, batch_per_rank, shuffle=False, **shards)
    scheduler = recipe.make_scheduler(optimizer, config, recipe.optimizer_steps(len(train_loader), config))
    ema = recipe.make_ema(core, config)  # validated and saved as "model" (evaluate and predict use it), when set
    loss_fn, augment = recipe.training_loss(config), recipe.make_augment(config)
    validated = core if ema is None else ema.module  # (under DDP, validation runs the wrapper: rank 0's buffers)

    first_step, partial_totals = 0, None
    if checkpoint is not None:
        core.load_state_dict(checkpoint["current_model_state"] if ema is not None else checkpoint["model"])
        if ema is not None:
            ema.module.load_state_dict(checkpoint["model"])
            ema.n_averaged.copy_(checkpoint["averaging_state"]["n_averaged"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        if "scheduler" in checkpoint:  # (not in runs from before --sched, whose learning rate was constant)
            scheduler.load_state_dict(checkpoint["scheduler"])
        run.restore_rng()
        if checkpoint["step"]:  # written mid-epoch: skip the batches already trained, keep their totals
            if len(checkpoint["epoch_totals"]) != proc.world_size:
                raise UserError(
                    f"--resume {run.directory}: the checkpoint was written mid-epoch by {len(checkpoint['epoch_totals'])} "
                    f"process(es); resume it with the same number, or from the epoch checkpoint {run.directory}/best.ckpt"
                )
            first_step = checkpoint["step"]
            partial_totals = checkpoint["epoch_totals"][proc.rank].to(proc.device)

    precision = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[amp_dtype]
    run.begin(data, proc.device, proc.world_size, proc.is_main, precision, f", data in {data_device or 'host memory'}")

    def state(epoch: int, step: int = 0, totals=None) -> dict:
        # with --ema, "model" is the average, and the weights training goes on from are kept beside it, as Lightning's
        # EMAWeightAveraging keeps them
        model_state = {"model": validated.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict()}
        if ema is not None:
            model_state |= {"current_model_state": core.state_dict(), "averaging_state": {"n_averaged": ema.n_averaged}}
        model_state["scheduler"] = scheduler.state_dict()
        return {**model_state, "epoch": epoch, "step": step, "epoch_totals": totals}

    def after_step(epoch: int):
        def check(step: int, totals: torch.Tensor, losses) -> None:
            run.timeline.mark("first_step", proc.device)  # once per process
            every, accum = config["checkpoint_every"], config.get("accum_steps") or 1
            stopping = run.stop.agreed(proc.world_size, proc.device, step)
            # called after optimizer steps only: a multiple of --checkpoint-every passed since the last one
            if stopping or (every and step % every < accum and step < len(train_loader)):
                losses.check()  # never a checkpoint of weights a non-finite loss has reached
                run.save(state(epoch, step, gather_totals(totals, proc)))
            if stopping:
                raise run.stopped(f"epoch {epoch + 1} step {step}/{len(train_loader)}")

        return check

    for epoch in range(len(run.history), config["epochs"]):
        train_loader.set_epoch(epoch, skip_batches=first_step)
        profiler = make_profiler(run.directory) if config["profile"] and epoch == len(run.history) and proc.is_main else None
        start = time.perf_counter()
        seen_before = 0 if partial_totals is None else float(partial_totals[2])
        with profiler or contextlib.nullcontext(), run.stops_at_a_nonfinite_loss(epoch):
            train_totals = train_one_epoch(
                train_model,
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
                loss_fn=loss_fn,
                clip_grad=config.get("clip_grad"),
                accum_steps=config.get("accum_steps") or 1,
                scheduler=scheduler,
                ema=ema,
                augment=augment and functools.partial(augment, epoch=epoch, rank=proc.rank),
            )
        first_step, partial_totals = 0, None
        train_seen_here = float(all_reduce(torch.tensor([float(train_totals[2]) - seen_before], device=proc.device), proc))
        train_seconds = time.perf_counter() - start  # the all-reduce above synchronised the device
        bn_seconds = batchnorm.recompute_if_needed(validated, train_loader, epoch, data.scale, proc.device, amp_dtype, config)
        loss_sum, correct, seen = all_reduce(train_totals, proc).tolist()
        # the confusion matrix too: the end of the run reports the best epoch's classes from it, without a second pass
        validating = model if ema is None else ema.module
        val_totals = all_reduce(evaluate(validating, val_loader, data.scale, proc.device, amp_dtype, len(data.classes)), proc)
        (val_loss_sum, val_correct, val_seen), val_matrix = split_totals(val_totals, len(data.classes))
        best = run.end_epoch(
            {
                "epoch": epoch + 1,
                "loss": loss_sum / seen,
                "acc": correct / seen,
                "val_loss": val_loss_sum / val_seen,
                "val_acc": val_correct / val_seen,
                "val_samples": int(val_seen),
                "images_per_s": train_seen_here / train_seconds,
                "bn_recompute_s": bn_seconds,
                "seconds": time.perf_counter() - start,
            },
            val_matrix,
        )
        run.save(state(epoch + 1), best=best)
        if run.stop.agreed(proc.world_size, proc.device, 0) and epoch + 1 < config["epochs"]:
            raise run.stopped(f"the end of epoch {epoch + 1}")


EXPERIMENT = lifecycle.Experiment(Path(__file__).parent.name, __doc__, fit, add_flags)


def main(argv=None):
    return lifecycle.main(EXPERIMENT, argv)


if __name__ == "__main__":
    lifecycle.run(EXPERIMENT)
