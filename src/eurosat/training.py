"""Small helpers both training loops use: precision, seeding, RNG state for exact resumes."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 convolutions then run faster than fp32 (emulated bf16 runs slower)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def set_matmul_precision(device: torch.device) -> None:
    """On a GPU, float32 matrix products may use TF32 ("high"), decided here rather than left to torch's default
    ("highest") and Lightning's hint about it: the models train under bf16/fp16 autocast, and cuDNN's convolutions
    use TF32 by default anyway. On the CPU nothing changes."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")


def autocast_dtype(choice: str, device: torch.device) -> torch.dtype | None:
    """--precision as an autocast dtype (None: fp32). auto: bf16 on GPUs that have it (no gradient scaler
    needed), else fp16 (with one); on the CPU bf16 where it is native, else fp32."""
    if choice == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[choice]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_deterministic() -> None:
    """Deterministic algorithms everywhere (an op without one raises instead of varying between runs)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it before its first call
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class NonFiniteLoss(Exception):
    """The training loss was NaN or infinite at `step` (of the epoch, from 1) on some rank."""

    def __init__(self, step: int):
        super().__init__(step)
        self.step = step


class LossWindow:
    """The losses of the steps since the last check, kept on the device, so that a step costs no host sync.

    check() raises NonFiniteLoss naming the first of them that was not finite on any rank (one sync, and under
    DDP one all-reduce, so every rank must call it at the same steps). Call it at least every `size` steps and
    before anything is saved from the weights those steps produced."""

    def __init__(self, size: int, device: torch.device, first_step: int = 1):
        self.losses = torch.zeros(size, device=device)
        self.checked = self.last = first_step - 1

    def add(self, step: int, loss: torch.Tensor) -> None:
        self.losses[(step - 1) % len(self.losses)] = loss.detach().float()
        self.last = step

    def check(self) -> None:
        if self.last == self.checked:
            return
        steps = torch.arange(self.checked + 1, self.last + 1, device=self.losses.device)
        finite = torch.isfinite(self.losses[(steps - 1) % len(self.losses)])
        first = torch.where(finite, self.last + 1, steps).min()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(first, torch.distributed.ReduceOp.MIN)
        self.checked = self.last
        if int(first) <= self.last:
            raise NonFiniteLoss(int(first))
