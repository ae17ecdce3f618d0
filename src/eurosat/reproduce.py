"""make reproduce RUN=runs/<project>/<run-id>: train a recorded run again from its config.json and compare.

The run reruns where it ran: a run made through compose (make train's Docker runner) in the very image it ran in
(by id, through the same compose service), a run made in the venv in the venv; a Slurm or Kubernetes job's rerun is
printed as the commands that render its files for its image and submit them (SUBMIT=1 runs them).
Every difference between the recorded provenance and today's (git commit, lockfile, container image, library
versions, hardware) is printed as a warning, then the recorded and the new metrics side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from eurosat import manifest
from eurosat.cli import ArgumentParser, run_cli
from eurosat.errors import UserError
from eurosat.manifest import REPO_ROOT

NOT_REPLAYED = {
    "help",
    "command",
    "resume",
    "out",
    "run_dir",
    "profile",
    "profiler",
    "tracking",
    "tracking_uri",
}  # where, not what
COMPARED = {
    "git commit": ("git", "commit"),
    "git working tree dirty": ("git", "dirty"),
    "lockfile sha256": ("lockfile", "sha256"),
    "container image": ("container", "image"),
    "container image id": ("container", "image_id"),
    "container image digest": ("container", "digest"),
    "container image built from commit": ("container", "revision"),
    "container image locks": ("container", "locks"),
    "pretrained weights": ("pretrained", "source"),
    "pretrained weights sha256": ("pretrained", "sha256"),
    "python": ("versions", "python"),
    "torch": ("versions", "torch"),
    "CUDA": ("versions", "cuda"),
    "cuDNN": ("versions", "cudnn"),
    "timm": ("versions", "timm"),
    "pytorch_lightning": ("versions", "pytorch_lightning"),
    "numpy": ("versions", "numpy"),
    "device": ("hardware", "device"),
    "GPUs": ("hardware", "gpus"),
    "GPU driver": ("hardware", "driver"),
    "CPUs": ("hardware", "cpus"),
    "platform": ("hardware", "platform"),
    "processes": ("hardware", "world_size"),
}
METRICS = ("loss", "acc", "val_loss", "val_acc")


def read_history(path: Path) -> tuple[list[dict], str | None]:
    """metrics.jsonl's epochs, and what is wrong with its last line when a run stopped while writing it (a kill, a
    full disk): that line is left out. A damaged line before the last is one line of error."""
    lines = path.read_text().splitlines() if path.exists() else []
    history = []
    for number, line in enumerate(lines, 1):
        try:
            history.append(json.loads(line))
        except ValueError:
            if number == len(lines):
                return history, f"{path} ends in a half-written line (the run stopped while writing it)"
            raise UserError(f"{path}: line {number} is not JSON: the run directory is damaged") from None
    return history, None


def read_run(run_dir: Path) -> tuple[dict, dict, list[dict]]:
    try:
        config = json.loads((run_dir / "config.json").read_text())
        provenance = json.loads((run_dir / "provenance.json").read_text())
        if not (run_dir / "metrics.jsonl").exists():
            raise FileNotFoundError(f"no {run_dir / 'metrics.jsonl'}")
        metrics, damaged = read_history(run_dir / "metrics.jsonl")
    except (OSError, ValueError) as exc:
        raise UserError(f"RUN={run_dir} is not a complete run directory ({exc}): pass runs/<project>/<run-id>") from None
    if damaged:
        print(f"warning: {damaged}: read its {len(metrics)} complete epoch(s)", file=sys.stderr)
    return config, provenance, metrics


def train_arguments(project: str, config: dict) -> list[str]:
    """The `train` command line that gives this config: every flag of the project's train parser."""
    from eurosat.lifecycle import make_parser  # torch and timm: here, so that a mistyped RUN answers at once
    from eurosat.projects import load_project

    _, commands = make_parser(load_project(project).EXPERIMENT)
    argv = ["train"]
    for action in commands["train"]._actions:
        if action.dest in NOT_REPLAYED or action.dest not in config or not action.option_strings:
            continue
        value, flag = config[action.dest], action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            argv += [flag] if value else []
        elif isinstance(action, argparse.BooleanOptionalAction):  # --pretrained / --no-pretrained
            argv += [action.option_strings[0] if value else action.option_strings[1]]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def differences(recorded: dict, new: dict) -> list[str]:
    lines = []
    for name, (section, key) in COMPARED.items():
        before, now = recorded.get(section, {}).get(key), new.get(section, {}).get(key)
        if before != now:
            lines.append(f"warning: {name} differs: recorded {before}, now {now}")
    return lines


def metrics_table(recorded: list[dict], new: list[dict]) -> tuple[list[str], int, float]:
    lines = [f"{'epoch':>5}  {'metric':<8}  {'recorded':>10}  {'reproduced':>10}  {'difference':>10}"]
    differing, largest = 0, 0.0
    for epoch in range(max(len(recorded), len(new))):
        for metric in METRICS:
            before = recorded[epoch][metric] if epoch < len(recorded) else None
            now = new[epoch][metric] if epoch < len(new) else None
            gap = abs(before - now) if before is not None and now is not None else float("inf")
            differing += gap != 0
            largest = max(largest, gap)
            show = lambda v: "-" if v is None else f"{v:.6f}"  # noqa: E731
            lines.append(f"{epoch + 1:>5}  {metric:<8}  {show(before):>10}  {show(now):>10}  {gap:>10.2e}")
    return lines, differing, largest


def rerun_where(provenance: dict) -> str:
    """Where a run reruns: where it ran. compose (make train's Docker runner) records the image's id; a cluster job
    (Slurm, Kubernetes) its image reference; a run on this machine's venv neither."""
    name = (provenance.get("runner") or {}).get("name")
    if name in ("slurm", "kubernetes"):
        return name
    if name == "compose" or (name is None and (provenance.get("container") or {}).get("image_id")):
        return "docker"
    return "local"


def engine_has(docker: str, reference: str) -> str | None:
    """The id of `reference` in the engine, or None."""
    result = subprocess.run([docker, "image", "inspect", "--format", "{{.Id}}", reference], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def recorded_image(run_dir: Path, provenance: dict, docker: str) -> str:
    """The id of the image the run ran in, present in this engine; else one line on how to get it back."""
    container = provenance.get("container") or {}
    image_id, image, digest = container.get("image_id"), container.get("image"), container.get("digest")
    found = (image_id and engine_has(docker, image_id)) or (digest and engine_has(docker, image))
    if found:
        return found
    if digest:
        raise UserError(f"RUN={run_dir} ran in {image}, which this engine does not have: `{docker} pull {image}`, then "
                        "make reproduce again (or IN_IMAGE=<image> to rerun in another image)")  # fmt: skip
    layer = (image or "").rsplit("/", 1)[-1].split(":")[0] or "<image>"
    raise UserError(
        f"RUN={run_dir} ran in image {image_id} ({image}, built from commit {container.get('revision')}), which is no "
        f"longer in this engine: `git checkout {container.get('revision')} && make image-{layer}` rebuilds it from the "
        "same commit and locks (a new id: make reproduce then warns of it), or IN_IMAGE=<image> reruns in another image"
    )


def container_out(run_dir: Path) -> str:
    """The rerun's --out as the train service sees it: runs/ is the repository's one writable mount."""
    runs = REPO_ROOT / "runs"
    if not run_dir.parent.is_relative_to(runs):
        raise UserError(f"RUN={run_dir} is outside {runs}, the folder containers write runs into: move it there")
    return f"/workspace/{run_dir.parent.relative_to(REPO_ROOT)}"


def cluster_lines(run_dir: Path, project: manifest.Project, config: dict, provenance: dict, where: str) -> list[list[str]]:
    """The commands that rerun a cluster run in its image: render the files for that image, then submit them."""
    image = (provenance.get("container") or {}).get("image")
    if not image:
        raise UserError(f"RUN={run_dir} was a {where} job that recorded no image (EUROSAT_IMAGE): rerun it by hand")
    nodes = int(((provenance.get("runner") or {}).get("slurm") or {}).get("nodes") or 1)
    gpus = max(1, int(config.get("world_size", 1)) // nodes)
    flags = train_arguments(project.name, config)[1:]
    if "--data" in flags:  # the script gives the data's path on the nodes
        del flags[flags.index("--data") : flags.index("--data") + 2]
    render = ["make", "cluster-files", f"PROJECT={project.name}", f"NODES={nodes}", f"GPUS={gpus}", f"CLUSTER_IMAGE={image}"]
    render.append(f"ARGS={shlex.join(flags)}")
    folder = f"build/cluster/{project.name}-{nodes}x{gpus}"
    if where == "slurm":  # (run outside a job, the script submits itself, converting the image in a CPU job first)
        return [render, ["bash", f"{folder}/slurm.sbatch"]]
    return [render, ["kubectl", "apply", "-f", f"{folder}/pytorchjob.yaml"]]


def reproduce(run_dir: Path, submit: bool = False, image: str | None = None) -> int | None:
    """Reruns RUN where it ran; returns the number of metric values that differ from the recorded ones (None: a cluster
    job, printed or submitted, whose run the cluster writes)."""
    config, provenance, _ = read_run(run_dir)
    if "project" not in config:
        raise UserError(f"RUN={run_dir}: its config.json names no project; it was written before projects had manifests")
    project = manifest.load(config["project"])
    where = "docker" if image else rerun_where(provenance)
    if where in ("slurm", "kubernetes"):
        commands = cluster_lines(run_dir, project, config, provenance, where)
        print(f"RUN={run_dir} ran as a {where} job in {provenance['container']['image']}; it reruns with:")
        print("\n".join(f"  {shlex.join(command)}" for command in commands))
        if submit:
            for command in commands:
                if subprocess.run(command, cwd=REPO_ROOT).returncode:
                    raise UserError(f"`{shlex.join(command)}` failed (see above)")
        return None
    out = run_dir.parent
    before = set(out.iterdir())
    # the replayed flags of a project that launches itself hold its layout already
    processes = int(config.get("world_size", 1)) if project.launcher == "torchrun" else 1
    flags = train_arguments(project.name, config)[1:]
    env = None
    if where == "docker":
        docker = os.environ.get("DOCKER", "docker")
        image_id = engine_has(docker, image) if image else recorded_image(run_dir, provenance, docker)
        if not image_id:
            raise UserError(f"IN_IMAGE={image}: this engine has no such image")
        # compose needs a name: the recorded image, tagged by its id (the tag is the only thing this adds)
        tag = f"eurosat-reproduce/{project.name}:{image_id.removeprefix('sha256:')[:12]}"
        subprocess.run([docker, "tag", image_id, tag], check=True)
        reference = image or (provenance.get("container") or {}).get("image") or tag
        env = {**os.environ, "TRAIN_IMAGE": tag, "TRAIN_IMAGE_REFERENCE": reference, "TRAIN_IMAGE_ID": image_id,
               "PROJECT": project.name}  # fmt: skip
        command = ["scripts/compose.sh", "run", "--rm", "train", *project.launch(processes), *flags]
        command += ["--out", container_out(run_dir)]
        print(f"reproducing in image {image_id} ({tag}), through compose:", flush=True)
    else:
        command = [*project.launch(processes, sys.executable), *flags, "--out", str(out)]
        print("reproducing in this machine's venv:", flush=True)
    print("  " + " ".join(command), flush=True)
    if subprocess.run(command, cwd=REPO_ROOT, env=env).returncode:
        raise UserError(f"the rerun of {run_dir} failed (see above)")
    (new_dir,) = set(out.iterdir()) - before
    return compare(run_dir, new_dir)


def compare(run_dir: Path, new_dir: Path) -> int:
    """Prints how the run in new_dir differs from the recorded one: provenance, then metrics side by side; returns the
    number of metric values that differ."""
    _, recorded_provenance, recorded_metrics = read_run(run_dir)
    _, new_provenance, new_metrics = read_run(new_dir)
    print(f"\nrecorded run {run_dir}\nnew run      {new_dir}")
    warnings = differences(recorded_provenance, new_provenance)
    print("\n".join(warnings) or "same git commit, lockfile, container image, library versions and hardware")
    table, differing, largest = metrics_table(recorded_metrics, new_metrics)
    print("\n".join(["", *table, ""]))
    if differing:
        print(f"metrics: {differing} value(s) differ from the recorded run, by up to {largest:.3g}")
    else:
        print("metrics: identical to the recorded run (timings excepted)")
    return differing


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, metavar="RUN", help="a run directory, runs/<project>/<run-id>")
    parser.add_argument("--submit", action="store_true", help="a cluster run: render and submit, not only print")
    parser.add_argument("--image", help="rerun in this image (a reference or id) instead of the recorded one")
    args = parser.parse_args(argv)
    if not args.run.is_dir():
        raise UserError(f"RUN={args.run}: no such run directory; pass RUN=runs/<project>/<run-id>")
    reproduce(args.run.resolve(), submit=args.submit, image=args.image)


if __name__ == "__main__":
    run_cli(main)
