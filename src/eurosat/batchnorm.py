"""BatchNorm running statistics that describe the weights being saved, however few steps an epoch has.

BatchNorm keeps exponential averages (momentum 0.1 in timm's models) of the batch statistics seen in training. With
few steps an epoch, those averages mix batches taken while the weights changed fast, so the model in eval mode is
far from the model that trained: resnet10t after one epoch of 5 steps, training accuracy 1.0 on its last batches,
validation accuracy 0.100 as saved and 1.000 once the statistics are recomputed. Before each validation, such a run
recomputes them over the training split in one forward pass without gradients (precise BN, as fvcore's and
torch.optim.swa_utils.update_bn do), so that validation, best.ckpt, last.ckpt, evaluate and predict see statistics
of the current weights. Training itself is unchanged: in train mode BatchNorm normalises with batch statistics.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from eurosat.datasets import to_input

# An epoch of this many steps or more leaves running averages of its last batches only (momentum 0.1: the last 10
# steps weigh 65%), taken with weights that change little from step to step by then: recomputing is left out.
RECOMPUTE_BELOW_STEPS = 100
CHOICES = ("auto", "recompute", "running")


def batchnorms(model: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def needed(model: torch.nn.Module, steps_per_epoch: int, choice: str = "auto") -> bool:
    """Whether a run recomputes the statistics before each validation (--bn-stats)."""
    if choice == "running" or not batchnorms(model):
        return False
    return choice == "recompute" or steps_per_epoch < RECOMPUTE_BELOW_STEPS


@torch.no_grad()
def recompute(model: torch.nn.Module, batches, scale: float, device: torch.device, amp_dtype=None) -> int:
    """Set every BatchNorm's running mean and variance to the average of its batch statistics over `batches`, each
    layer fed as in training (BatchNorms normalise with batch statistics; the rest of the model in eval mode: no
    dropout, no randomness). Under torch.distributed the averages are averaged over the ranks, so that every rank
    ends with the same statistics. The model's mode is restored; returns the batches used."""
    norms = batchnorms(model)
    was_training = model.training
    model.eval()
    saved = [(norm.momentum, norm.num_batches_tracked.clone()) for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: every batch weighs the same
        norm.train()
    count = 0
    for images, _ in batches:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            model(to_input(images, scale, device))
        count += 1
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for norm in norms:  # every rank has as many batches (BatchLoader pads its shards to whole batches)
            for buffer in (norm.running_mean, norm.running_var):
                dist.all_reduce(buffer)
                buffer.div_(dist.get_world_size())
    for norm, (momentum, tracked) in zip(norms, saved, strict=True):
        norm.momentum = momentum
        norm.num_batches_tracked.copy_(tracked)
        norm.eval()
    model.train(was_training)
    return count


def recompute_if_needed(model, train_loader, epoch: int, scale: float, device, amp_dtype, config: dict) -> float:
    """After a training epoch, before its validation: recompute when needed (over the epoch's own batches, from the
    first); the seconds it took (0.0 when not needed)."""
    if not needed(model, len(train_loader), config.get("bn_stats", "running")):
        return 0.0
    start = time.perf_counter()
    position = train_loader.state_dict()  # a checkpoint written after this records the epoch's real position
    train_loader.set_epoch(epoch)
    recompute(model, train_loader, scale, device, amp_dtype)
    train_loader.load_state_dict(position)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
