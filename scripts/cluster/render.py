"""make cluster-files: the Slurm batch script and the Kubeflow PyTorchJob that run PROJECT on NODES x GPUS.

    python scripts/cluster/render.py --project NAME --nodes 2 --gpus 8 --image REGISTRY/eurosat/torch-ngc:TAG

Both run the same image and the same train.py with the same flags under torchrun: Slurm meets the nodes
with the c10d rendezvous at the first node, Kubernetes with the master address the training operator sets.
An image that `make push` recorded (--pushed) is pinned by its digest.
"""

from __future__ import annotations

import argparse
import re
import shlex
import string
from pathlib import Path

import yaml

from eurosat import manifest
from eurosat.cli import ArgumentParser, non_negative_int, positive_int, run_cli
from eurosat.errors import UserError

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


# Docker's reference grammar, as far as a registry path goes: [HOST[:PORT]/]PATH[:TAG][@sha256:HEX]
REFERENCE = re.compile(
    r"(?:(?P<host>[a-zA-Z0-9.-]+(?::[0-9]+)?|localhost)/(?=.))?"
    r"(?P<path>[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?"
)


def parse_reference(image: str) -> dict:
    """The parts of a Docker image reference; the first component is a registry when it has a dot or a port
    (or is localhost), else the reference is a Docker Hub path."""
    match = REFERENCE.fullmatch(image)
    if not match:
        raise UserError(f"--image {image}: not an image reference (registry.example.org[:port]/team/name:tag)")
    parts = match.groupdict()
    host = parts["host"]
    if host and not ("." in host or ":" in host or host == "localhost"):  # a Docker Hub namespace
        parts["host"], parts["path"] = None, f"{host}/{parts['path']}"
    return parts


def enroot_reference(image: str) -> str:
    """The image as pyxis's --container-image names it for every enroot: REGISTRY#PATH[:TAG].

    Enroot before 4.0 reads registry.example.org/team/name as a Docker Hub path; the `#` after the registry
    is read the same way before and after 4.0. A digest takes the tag's place (PATH:sha256:HEX): enroot 3
    has no `@` in its grammar but asks the registry for /v2/PATH/manifests/<tag>, which takes a digest too.
    """
    parts = parse_reference(image)
    reference = parts["digest"] or parts["tag"]
    return (f"{parts['host']}#" if parts["host"] else "") + parts["path"] + (f":{reference}" if reference else "")


def pinned_image(image: str, pushed: Path | None) -> str:
    """`image` by the digest `make push` recorded for it (its last line in `pushed`), else as given."""
    if pushed is None or not pushed.is_file():
        return image
    digests = dict(line.split() for line in pushed.read_text().splitlines() if len(line.split()) == 2)
    return digests.get(image, image)


def train_arguments(project: str, nodes: int, gpus: int, extra: str) -> list[str]:
    """The training flags: first the layout flags of the project's manifest (a framework that launches its own
    processes must be told the layout torchrun gives it), then ARGS."""
    return [*manifest.load(project).layout(nodes, gpus), *shlex.split(extra)]


def slurm_script(args, train_args: list[str], name: str) -> str:
    template = string.Template((HERE / "slurm.sbatch.in").read_text())
    return template.substitute(
        PROJECT=args.project,
        NODES=args.nodes,
        GPUS=args.gpus,
        IMAGE=shlex.quote(args.image),
        ENROOT_IMAGE=shlex.quote(enroot_reference(args.image)),
        JOB_NAME=args.job_name,
        CPUS_PER_NODE=args.cpus_per_node,
        TIME_LIMIT=args.time_limit,
        TRAIN_ARGS=shlex.join(train_args),
        OUT_NAME=name,
        MAX_REQUEUES=args.max_requeues,
    )


def pytorchjob(args, train_args: list[str]) -> dict:
    launch = [
        "--nnodes", str(args.nodes), "--nproc_per_node", str(args.gpus),
        "--node_rank", "$(RANK)", "--master_addr", "$(MASTER_ADDR)", "--master_port", "$(MASTER_PORT)",
        f"projects/{args.project}/train.py", "train", "--data", "/data", *train_args,
        "--run-dir", f"runs/{args.project}/{args.job_name}",  # a restarted pod continues the run from its last.ckpt
    ]  # fmt: skip
    volume = "workspace"  # a claim holding repo/ (a checkout), data/, runs/, cache/ and models/

    def mount(path: str, sub_path: str, read_only: bool = False) -> dict:
        return {"name": volume, "mountPath": path, "subPath": sub_path, "readOnly": read_only}

    container = {
        "name": "pytorch",  # the training operator looks for this name
        "image": args.image,
        "imagePullPolicy": "IfNotPresent",
        "workingDir": "/workspace",
        "command": ["python3", "-m", "eurosat.torchrun"],  # torchrun, exiting as its workers do (143 on SIGTERM)
        "args": launch,
        "env": [
            {"name": "PYTHONPATH", "value": "/workspace/src"},
            {"name": "EUROSAT_CACHE_DIR", "value": "/cache"},
            {"name": "HF_HOME", "value": "/models/huggingface"},  # pretrained weights: make weights fills models/
            {"name": "TORCH_HOME", "value": "/models/torch"},
            {"name": "TORCHINDUCTOR_CACHE_DIR", "value": "/models/inductor"},  # torch.compile's kernels, kept
            {"name": "TRITON_CACHE_DIR", "value": "/models/triton"},
        ],
        "resources": {"limits": {"nvidia.com/gpu": str(args.gpus)}},
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "allowPrivilegeEscalation": False},
        "volumeMounts": [
            mount("/workspace", "repo", read_only=True),
            mount("/workspace/runs", "runs"),
            mount("/data", "data", read_only=True),
            mount("/cache", "cache"),
            mount("/models", "models"),
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }
    template = {
        "spec": {
            "containers": [container],
            "volumes": [
                {"name": volume, "persistentVolumeClaim": {"claimName": args.claim}},
                {"name": "dshm", "emptyDir": {"medium": "Memory"}},
            ],
        }
    }
    # ExitCode: the operator restarts a replica that exited 128-255 (a signal: preemption, eviction, a lost node) and
    # not one that exited 1-127 (a bad flag's 2, a diverged loss); the restarted pods continue the run (--run-dir)
    replicas = {"Master": {"replicas": 1, "restartPolicy": "ExitCode", "template": template}}
    if args.nodes > 1:
        replicas["Worker"] = {"replicas": args.nodes - 1, "restartPolicy": "ExitCode", "template": template}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": args.job_name, "labels": {"app.kubernetes.io/name": "eurosat", "eurosat/project": args.project}},
        "spec": {"runPolicy": {"cleanPodPolicy": "None", "backoffLimit": args.max_requeues}, "pytorchReplicaSpecs": replicas},
    }


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", required=True)
    parser.add_argument("--nodes", type=positive_int, default=1)
    parser.add_argument("--gpus", type=positive_int, default=1, help="GPUs per node")
    parser.add_argument("--image", required=True, help="the image in a registry the cluster can pull from")
    parser.add_argument("--pushed", type=Path, help="`make push`'s record of digests (build/pushed-images.txt)")
    parser.add_argument("--args", default="", help="training flags, as one string")
    parser.add_argument("--job-name", help="default: PROJECT")
    parser.add_argument("--cpus-per-node", type=positive_int, default=16)
    parser.add_argument("--time-limit", default="04:00:00", help="Slurm --time")
    parser.add_argument(
        "--max-requeues", type=non_negative_int, default=10, help="times a stopped job requeues itself (default: 10)"
    )
    parser.add_argument(
        "--claim", default="eurosat-workspace", help="Kubernetes PersistentVolumeClaim with repo/ data/ runs/ cache/ models/"
    )
    parser.add_argument("--out", type=Path, default=REPO / "build" / "cluster")
    args = parser.parse_args(argv)
    manifest.load(args.project)
    args.image = pinned_image(args.image, args.pushed)
    enroot_reference(args.image)  # a reference no runtime can read is one line before anything is written
    args.job_name = args.job_name or args.project
    train_args = train_arguments(args.project, args.nodes, args.gpus, args.args)
    out = args.out / f"{args.project}-{args.nodes}x{args.gpus}"
    out.mkdir(parents=True, exist_ok=True)
    slurm, job = out / "slurm.sbatch", out / "pytorchjob.yaml"
    slurm.write_text(slurm_script(args, train_args, slurm))
    slurm.chmod(0o755)
    job.write_text(yaml.safe_dump(pytorchjob(args, train_args), sort_keys=False))
    pinned = "by digest" if "@sha256:" in args.image else "by tag (no digest recorded by `make push` for it)"
    print(f"image {args.image}: pinned {pinned}")
    print(f"wrote {slurm} (sbatch {slurm}) and {job} (kubectl apply -f {job})")


if __name__ == "__main__":
    run_cli(main)
