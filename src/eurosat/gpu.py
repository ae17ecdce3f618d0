"""Can this process use NVIDIA GPUs, and if not, why not: no silent fall back to the CPU.

The facts are gathered by `process_facts()`; the decisions are pure functions of them, so the tests feed them
outputs recorded on real hosts. `python -m eurosat.gpu` prints the facts as JSON: `make doctor` runs it inside
the training image, where the container's real devices, shm and memlock are. torch is imported only where its
facts are read, so `make doctor` (the standard library only) can use the decisions before any venv exists.
"""

from __future__ import annotations

import json
import os
import re
import resource

from eurosat.errors import UserError

DEVICE_NODE = re.compile(r"nvidia\d+$")
# What NVIDIA_VISIBLE_DEVICES / CUDA_VISIBLE_DEVICES hold when they name no particular GPU. "all" is not
# evidence: every CUDA image (nvidia/cuda, NGC) sets NVIDIA_VISIBLE_DEVICES=all in its environment.
NAMES_NO_GPU = {"", "all", "none", "void", "nodevfiles", "-1"}
HOST_GPUS_ENV = "EUROSAT_HOST_GPUS"  # set by scripts/compose.sh: the GPUs the host has, seen from a container
FIX = "run `make doctor` to see why, or pass --device cpu to train on the CPU anyway"


def device_nodes() -> list[str]:
    """This process's NVIDIA GPU device nodes (nvidia0, nvidia1, ...; not nvidiactl or nvidia-uvm)."""
    return sorted(name for name in os.listdir("/dev") if DEVICE_NODE.match(name)) if os.path.isdir("/dev") else []


def names_gpus(value: str) -> bool:
    return value.strip().lower() not in NAMES_NO_GPU


def gpu_evidence(env: dict[str, str], dev_entries: list[str]) -> list[str]:
    """What says NVIDIA GPUs are meant for this process: device nodes, variables naming GPUs, the host's GPUs.
    An explicit CUDA_VISIBLE_DEVICES that names none (e.g. "" or -1) hides them all on purpose."""
    cuda_visible = env.get("CUDA_VISIBLE_DEVICES")
    if cuda_visible is not None and not names_gpus(cuda_visible):
        return []
    evidence = []
    nodes = sorted(name for name in dev_entries if DEVICE_NODE.match(name))
    if nodes:
        evidence.append("devices " + " ".join(f"/dev/{name}" for name in nodes))
    for variable in ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
        if names_gpus(env.get(variable, "")):
            evidence.append(f"{variable}={env[variable]}")
    host_gpus = env.get(HOST_GPUS_ENV, "")
    if host_gpus.isdigit() and int(host_gpus) > 0:
        evidence.append(f"the host's {host_gpus} NVIDIA GPU{'s' if int(host_gpus) > 1 else ''}")
    return evidence


def capability_supported(capability: str, arch_list: list[str]) -> bool:
    """Whether torch has kernels for a GPU of this compute capability, by torch's own rule: a cubin sm_XY runs
    on X.Z for Z >= Y (an arch-specific sm_XYa only on X.Y). PTX (compute_XY) does not count, as in torch."""
    major, minor = (int(part) for part in capability.split("."))
    for arch in arch_list:
        match = re.fullmatch(r"sm_(\d+)(\d)([a-z]?)", arch)
        if match and int(match[1]) == major and (int(match[2]) == minor if match[3] else int(match[2]) <= minor):
            return True
    return False


def unsupported_gpus(facts: dict) -> list[str]:
    """The visible GPUs this torch has no kernels for, each as "GPU i (name, compute capability X.Y)"."""
    return [
        f"GPU {index} ({gpu['name']}, compute capability {gpu['capability']})"
        for index, gpu in enumerate(facts.get("gpus", []))
        if not capability_supported(gpu["capability"], facts.get("arch_list", []))
    ]


def built_for(facts: dict) -> str:
    archs = [arch for arch in facts.get("arch_list", []) if arch.startswith("sm_")]
    return f"torch {facts['torch']} is built for {' '.join(archs) or 'no GPU architecture'}"


def cuda_cause(facts: dict, evidence: list[str]) -> str:
    """Why torch cannot use the GPUs, in words, from what torch.cuda.init() raised."""
    error = facts.get("error") or ""
    if not facts.get("cuda"):
        return f"torch {facts['torch']} is a CPU-only build"
    too_old = re.search(r"driver on your system is too old \(found version (\d+)\)", error)
    if too_old:
        found = int(too_old[1])
        return (
            f"the NVIDIA driver supports CUDA up to {found // 1000}.{found % 1000 // 10}, "
            f"but torch {facts['torch']} needs CUDA {facts['cuda']}: update the driver"
        )
    if "Found no NVIDIA driver" in error:
        if any(item.startswith("the host's") for item in evidence):
            return "this container was started without them (the engine has neither the nvidia runtime nor CDI)"
        return "no NVIDIA driver library (libcuda.so.1) is reachable from this process"
    if "No CUDA GPUs are available" in error:
        return "CUDA sees no GPU (check CUDA_VISIBLE_DEVICES and the container's GPU request)"
    return f"torch.cuda could not start: {error or 'torch.cuda.is_available() is False'}"


def choose_device(choice: str, facts: dict, evidence: list[str]) -> str:
    """--device as "cpu" or "cuda". auto takes the GPU when torch can use it and the CPU when no GPU is meant
    for this process; it stops with one line when GPUs are there but torch cannot use them."""
    if choice == "cpu":
        return "cpu"
    if facts.get("available"):
        unsupported = unsupported_gpus(facts)
        if unsupported:
            raise UserError(
                f"--device {choice}: {', '.join(unsupported)} is not supported: {built_for(facts)}; "
                "use an image whose torch supports it, or --device cpu"
            )
        return "cuda"
    if choice == "cuda":
        raise UserError(f"--device cuda: no usable CUDA GPU: {cuda_cause(facts, evidence)}; {FIX}")
    if evidence:
        raise UserError(
            f"--device auto: NVIDIA GPUs are here ({', '.join(evidence)}) but torch cannot use them: "
            f"{cuda_cause(facts, evidence)}; {FIX}"
        )
    return "cpu"


def torch_facts(inspect_gpus: bool = True) -> dict:
    """What torch.cuda says: the build's CUDA and architectures, and the GPUs, or the error that hides them.
    inspect_gpus=False leaves CUDA uninitialised when it works (a process that forks workers needs that) and
    so skips the GPUs' names and compute capabilities."""
    import warnings

    import torch

    facts = {"torch": torch.__version__, "cuda": torch.version.cuda, "available": False, "error": None, "gpus": []}
    if torch.version.cuda is None:
        return facts
    facts["arch_list"] = torch.cuda.get_arch_list()
    if not inspect_gpus and torch.cuda.is_available():
        facts["available"] = True
        return facts
    try:
        with warnings.catch_warnings():  # torch warns about unsupported GPUs itself; the decision names them
            warnings.simplefilter("ignore")
            torch.cuda.init()
    except (RuntimeError, AssertionError) as error:
        facts["error"] = str(error).strip().splitlines()[0]
        return facts
    facts["available"] = True
    facts["gpus"] = [
        {"name": torch.cuda.get_device_name(i), "capability": "{}.{}".format(*torch.cuda.get_device_capability(i))}
        for i in range(torch.cuda.device_count())
    ]
    facts["nccl"] = ".".join(str(part) for part in torch.cuda.nccl.version())
    return facts


def process_facts() -> dict:
    """Everything the decisions need about this process: torch's view, the evidence, shm and memlock."""
    facts = torch_facts()
    facts["device_nodes"] = device_nodes()
    facts["evidence"] = gpu_evidence(dict(os.environ), facts["device_nodes"])
    try:
        shm = os.statvfs("/dev/shm")
        facts["shm_bytes"] = shm.f_frsize * shm.f_blocks
    except OSError:
        facts["shm_bytes"] = None
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    facts["memlock_bytes"] = None if soft == resource.RLIM_INFINITY else soft
    return facts


def resolve_device(choice: str, inspect_gpus: bool = True):
    """--device auto|cpu|cuda as a torch.device, under the rule above."""
    import torch

    if choice == "cpu":
        return torch.device("cpu")
    facts = torch_facts(inspect_gpus)
    return torch.device(choose_device(choice, facts, gpu_evidence(dict(os.environ), device_nodes())))


if __name__ == "__main__":
    print(json.dumps(process_facts()))
