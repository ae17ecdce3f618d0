"""make cluster-files: the Slurm batch script and the Kubeflow PyTorchJob that run PROJECT on NODES x GPUS.

    python scripts/cluster/render.py --project NAME --nodes 2 --gpus 8 --image REGISTRY/eurosat/torch-ngc:TAG

Both run the same image and the same train.py with the same flags under torchrun: Slurm meets the nodes
with the c10d rendezvous at the first node, Kubernetes with the master address the training operator sets.
An image that `make push` recorded (--pushed) is pinned by its digest.

With --sweep "--seed 1,2,3 --lr 1e-3,3e-4" (make cluster-files SWEEP=...) the Slurm script is one job array, a task
per combination, each an ordinary run that requeues itself; the PyTorchJob file holds one job per combination.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import string
from pathlib import Path

import yaml

from eurosat import manifest, sweep, weights
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


def heredoc_text(text: str) -> str:
    """`text` as an unquoted heredoc reproduces it (where $, ` and \\ are special)."""
    return text.replace("\\", "\\\\").replace("$", "\\$").replace("`", "\\`")


def sweep_task(args, combos: list[list[str]]) -> str:
    """The array task's part of the script: its run directory, its combination's flags, the sweep's manifest."""
    runs = [{"index": i, "flags": combo, "run_dir": f"@SWEEP_DIR@/{i:02d}"} for i, combo in enumerate(combos)]
    record = {"project": args.project, "sweep": args.sweep, "args": shlex.split(args.args), "slurm_array_job": "@ARRAY_JOB@"}
    fields = [f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in record.items()]  # a line each, a run a line
    fields.append('  "runs": [\n' + ",\n".join(f"    {json.dumps(run)}" for run in runs) + "\n  ]")
    text = "{\n" + ",\n".join(fields) + "\n}"
    text = heredoc_text(text).replace("@ARRAY_JOB@", "$SLURM_ARRAY_JOB_ID").replace("@SWEEP_DIR@", "$SWEEP_DIR")
    template = string.Template((HERE / "sweep-task.sbatch.in").read_text().rstrip("\n"))  # the script's next line follows
    return template.substitute(
        PROJECT=args.project,
        JOB_NAME=args.job_name,
        CASES="\n".join(f'  {i}) set -- {shlex.join(combo)} "$@" ;;' for i, combo in enumerate(combos)),
        COUNT=len(combos),
        LAST=len(combos) - 1,
        MANIFEST=text,
    )


ONE_RUN = """# Named from the job, which keeps its id when requeued: every start of the job trains the same run (relative to
# the checkout)
RUN_DIR=${RUN_DIR:-runs/%s/%s-$SLURM_JOB_ID}"""


def slurm_script(args, train_args: list[str], name: str, combos: list[list[str]]) -> str:
    template = string.Template((HERE / "slurm.sbatch.in").read_text())
    if combos:
        run_lines = (f"# A sweep ({args.sweep}) as one job array: task i trains combination i of {len(combos)} in\n"
                     f"# runs/{args.project}/{args.job_name}-<array job id>/<i> (SWEEP_DIR/<i>: SWEEP_DIR may be set at submit),"
                     " listed in sweep.json\n# there. Each task is a job of its own.")  # fmt: skip
        again = f"SWEEP_DIR=$SWEEP_DIR sbatch --array=$SLURM_ARRAY_TASK_ID {name}"
    else:
        run_lines = f"# The run lives in runs/{args.project}/{args.job_name}-<job id> (or RUN_DIR, set at submit)."
        again = f"RUN_DIR=$RUN_DIR sbatch {name}"
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
        RUN_LINES=run_lines,
        CONTINUE=again,
        OUTPUT="%x-%A_%a.out" if combos else "%x-%j.out",
        ARRAY_DIRECTIVE=f"\n#SBATCH --array=0-{len(combos) - 1}" if combos else "",
        RUN_DIR_BLOCK=sweep_task(args, combos) if combos else ONE_RUN % (args.project, args.job_name),
    )


def user_ids(text: str) -> tuple[int, int]:
    """--run-as UID:GID, neither of them root's."""
    match = re.fullmatch(r"([0-9]+):([0-9]+)", text)
    if not match or "0" in (match[1].lstrip("0") or "0", match[2].lstrip("0") or "0"):
        raise argparse.ArgumentTypeError(f"{text!r}: give UID:GID, numbers other than 0 (e.g. 1000:1000)")
    return int(match[1]), int(match[2])


def pytorchjob(args, train_args: list[str], name: str, run_dir: str) -> dict:
    launch = [
        "--nnodes", str(args.nodes), "--nproc_per_node", str(args.gpus),
        "--node_rank", "$(RANK)", "--master_addr", "$(MASTER_ADDR)", "--master_port", "$(MASTER_PORT)",
        f"projects/{args.project}/train.py", "train", "--data", "/data", *train_args,
        "--run-dir", run_dir,  # a restarted pod continues the run from its last.ckpt
    ]  # fmt: skip
    volume = "workspace"  # a claim holding repo/ (a checkout), data/, runs/, cache/ and models/

    def mount(path: str, sub_path: str, read_only: bool = False) -> dict:
        return {"name": volume, "mountPath": path, "subPath": sub_path, "readOnly": read_only}

    container = {
        "name": "pytorch",  # the training operator looks for this name
        "image": args.image,
        "imagePullPolicy": "IfNotPresent",
        "workingDir": "/workspace",
        # the image's entrypoint first (a `command` replaces it): it names the pod's UID, as in compose; then torchrun,
        # exiting as its workers do (143 on SIGTERM)
        "command": ["/usr/local/bin/entrypoint", "python3", "-m", "eurosat.torchrun"],
        "args": launch,
        "env": [
            {"name": "PYTHONPATH", "value": "/workspace/src"},
            {"name": "EUROSAT_CACHE_DIR", "value": "/cache"},
            {"name": "HF_HOME", "value": "/models/huggingface"},  # pretrained weights: make weights fills models/
            {"name": "TORCH_HOME", "value": "/models/torch"},
            {"name": "TORCHINDUCTOR_CACHE_DIR", "value": "/models/inductor"},  # torch.compile's kernels, kept
            {"name": "TRITON_CACHE_DIR", "value": "/models/triton"},
            {"name": "PYTHONNOUSERSITE", "value": "1"},
            {"name": "EUROSAT_IMAGE", "value": args.image},  # provenance.json records the image, by digest when pushed
            {"name": "EUROSAT_RUNNER", "value": "kubernetes"},  # provenance.json records what started the run
            {"name": "HOME", "value": "/home/app"},  # an emptyDir: writable for whichever UID the pod runs as
        ],
        "resources": {"limits": {"nvidia.com/gpu": str(args.gpus)}},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [
            mount("/workspace", "repo", read_only=True),
            mount("/workspace/runs", "runs"),
            mount("/data", "data", read_only=True),
            mount("/cache", "cache"),
            mount("/models", "models"),
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "home", "mountPath": "/home/app"},
        ],
    }
    uid, gid = args.run_as
    template = {
        "spec": {
            # a deleted, evicted or preempted pod gets SIGTERM and then as long as the Slurm script's notice (120 s,
            # not Kubernetes' 30) before SIGKILL: eurosat.torchrun gives training 90 s of it to checkpoint and stop
            "terminationGracePeriodSeconds": 120,
            # as the compose services run: the user's UID and GID (files on the claim are theirs), never root; fsGroup
            # makes the claim's new files group-writable for that GID; the image's `app` group (1000) lets the
            # entrypoint give the UID a passwd entry
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": uid,
                "runAsGroup": gid,
                "fsGroup": gid,
                "fsGroupChangePolicy": "OnRootMismatch",
                "supplementalGroups": [1000],
            },
            "containers": [container],
            "volumes": [
                {"name": volume, "persistentVolumeClaim": {"claimName": args.claim}},
                {"name": "dshm", "emptyDir": {"medium": "Memory"}},
                {"name": "home", "emptyDir": {}},
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
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "eurosat", "eurosat/project": args.project}},
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
    parser.add_argument("--sweep", default="", help='flags with comma-separated values ("--seed 1,2,3"): one job array')
    parser.add_argument("--job-name", help="default: PROJECT")
    parser.add_argument("--cpus-per-node", type=positive_int, default=16)
    parser.add_argument("--time-limit", default="04:00:00", help="Slurm --time")
    parser.add_argument(
        "--max-requeues", type=non_negative_int, default=10, help="times a stopped job requeues itself (default: 10)"
    )
    parser.add_argument(
        "--claim", default="eurosat-workspace", help="Kubernetes PersistentVolumeClaim with repo/ data/ runs/ cache/ models/"
    )
    parser.add_argument(
        "--run-as", type=user_ids, default=(1000, 1000), metavar="UID:GID",
        help="the pods' user and group: whoever owns the claim's files (default: 1000:1000, the image's app)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO / "build" / "cluster")
    args = parser.parse_args(argv)
    manifest.load(args.project)
    args.image = pinned_image(args.image, args.pushed)
    enroot_reference(args.image)  # a reference no runtime can read is one line before anything is written
    args.job_name = args.job_name or args.project
    train_args = train_arguments(args.project, args.nodes, args.gpus, args.args)
    combos = sweep.combinations(sweep.parse_grid(args.sweep)) if args.sweep else []
    if combos:
        sweep.check(args.project, train_args, combos)  # a bad value is one line before anything is written
    # the compute nodes may have no internet and mount the repository read-only: the weights are locked and cached here
    weights.for_runs(args.project, [[*train_args, *combo] for combo in combos] or [train_args])
    out = args.out / f"{args.project}-{args.nodes}x{args.gpus}{'-sweep' if combos else ''}"
    out.mkdir(parents=True, exist_ok=True)
    slurm, job = out / "slurm.sbatch", out / "pytorchjob.yaml"
    slurm.write_text(slurm_script(args, train_args, slurm, combos))
    slurm.chmod(0o755)
    jobs = [pytorchjob(args, train_args, args.job_name, f"runs/{args.project}/{args.job_name}")] if not combos else [
        pytorchjob(args, [*train_args, *combo], f"{args.job_name}-{i:02d}", f"runs/{args.project}/{args.job_name}/{i:02d}")
        for i, combo in enumerate(combos)
    ]  # fmt: skip
    job.write_text(yaml.safe_dump_all(jobs, sort_keys=False))
    pinned = "by digest" if "@sha256:" in args.image else "by tag (no digest recorded by `make push` for it)"
    print(f"image {args.image}: pinned {pinned}")
    what = f"one job array of {len(combos)} tasks and {len(combos)} PyTorchJobs, a combination each: " if combos else ""
    print(f"wrote {what}{slurm} (sbatch {slurm}) and {job} (kubectl apply -f {job})")


if __name__ == "__main__":
    run_cli(main)
