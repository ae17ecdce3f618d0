"""make gpu-check: what a GPU does with this project, measured in one command, offline, in about 10 minutes.

Writes a synthetic EuroSAT of the official size (27,000 13-band TIFFs), trains both projects with their defaults,
profiles the start-up phase by phase (bench/startup.py), times the first step per depthwise-convolution layout
(bench/first_step.py), runs the benchmark's figures that the targets need (the model-only ceiling), the
--deterministic pair (identical metrics and weights?) and a --compile run, in that order (what the targets need
first; compile, which takes minutes, last), and writes one report, JSON and markdown, into bench/results/ (the GPU,
driver, CUDA, cuDNN and torch, every step's seconds and figures, and the GPU targets met or missed). Each step is
its own process; one that fails or runs out of time is reported, and the others still run.

It needs only what a stock CUDA PyTorch environment has (torch, torchvision, timm, pytorch-lightning, torchmetrics,
tifffile, scikit-image, scikit-learn) and the repository's src on PYTHONPATH, which make sets:

    make gpu-check                                      # in the venv if there is one, else python3
    PYTHONPATH=src python scripts/gpu_check.py          # anywhere
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from eurosat import manifest  # noqa: E402
from eurosat.cli import ArgumentParser, run_cli  # noqa: E402
from eurosat.errors import UserError  # noqa: E402
from eurosat.reproduce import metrics_table, read_run  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from first_step import markdown as first_step_table  # noqa: E402

# The GPU targets (docs/speed.md), on an H100 or H200 with the default project and settings: a whole default
# train from process start to exit (its end-of-run evaluation included), its first step, process start to model built
FIRST_EPOCH_RATIO, CEILING_SHARE, PROJECTS_APART, WHOLE_TRAIN_SECONDS = 1.5, 0.95, 0.10, 20.0
FIRST_STEP_SECONDS, MODEL_BUILT_SECONDS = 3.0, 5.0
# The benchmark's first rows (input pipeline, project path, model only, baseline) take about 35 s on an H200; its
# time-to-accuracy runs and ablations are make bench's own (bench/results/vm-20261128-203548.md)
BENCH_BUDGET, BENCH_START_AND_REPORT = 60, 30  # and the seconds of its imports, prepare and report on top


class Check:
    """Runs the steps one after another in one scratch folder, within the overall time budget."""

    def __init__(self, args, work: Path, logs: Path):
        self.args, self.work, self.logs = args, work, logs
        self.deadline = time.monotonic() + args.budget
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
        self.env["EUROSAT_CACHE_DIR"] = str(work / "cache")  # decoded once, by the first training
        self.steps: list[dict] = []

    def run(self, name: str, command: list) -> dict:
        """One step in its own process group, its output in a log beside the report; its seconds, exit status and,
        when it failed, the tail of its output. At the end of the budget the step and its children are killed."""
        command = [str(c) for c in command]
        step = {"name": name, "command": shlex.join(command)}
        self.steps.append(step)
        left = self.deadline - time.monotonic()
        if left <= 1:
            step.update(ok=False, error="not run: the check's time budget was spent")
            print(f"gpu-check: {name}: not run (budget spent)", file=sys.stderr, flush=True)
            return step
        log = self.logs / f"{len(self.steps):02d}-{name.replace(' ', '-')}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        with open(log, "w") as output:
            process = subprocess.Popen(
                command, cwd=REPO, env=self.env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                code = process.wait(timeout=left)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                code = None
        step["seconds"] = round(time.monotonic() - start, 1)
        step["ok"] = code == 0
        if code != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            step["error"] = "timed out (the check's time budget)" if code is None else f"exit {code}: " + " / ".join(tail)
        print(f"gpu-check: {name}: {'ok' if step['ok'] else step['error']} ({step['seconds']} s)", file=sys.stderr, flush=True)
        return step

    def train(self, name: str, project: str, *extra) -> tuple[dict, Path | None]:
        """A train.py run with the defaults (and --train-args, then `extra`); its run directory if it finished."""
        out = self.work / "runs" / name.replace(" ", "-")
        script = manifest.load(project).train_script
        # from random weights: the device machine has no internet, and the weights change no timing but their loading
        command = [sys.executable, script, "train", "--data", self.work / "eurosat", "--out", out, "--no-pretrained"]
        step = self.run(name, [*command, *self.args.train_args, *extra])
        run_dir = next((p.parent for p in out.rglob("metrics.json")), None) if step["ok"] else None
        if run_dir:
            step.update(run_figures(run_dir))
        return step, run_dir


def run_figures(run_dir: Path) -> dict:
    """What a finished run recorded of its time: the timeline, each epoch's seconds and images/s, the last val_acc."""
    summary = json.loads((run_dir / "metrics.json").read_text())
    _, _, history = read_run(run_dir)
    figures = {
        "timeline": summary["timeline"],
        "epoch_seconds": [round(r["seconds"], 2) for r in history],
        "images_per_s": [round(r["images_per_s"]) for r in history],
        "val_acc": history[-1]["val_acc"],
    }
    if len(history) > 1:  # steady: the epochs after the first; the first pays the one-time costs
        figures["steady_images_per_s"] = statistics.median(r["images_per_s"] for r in history[1:])
        figures["first_epoch_ratio"] = history[0]["seconds"] / statistics.median(r["seconds"] for r in history[1:])
    return figures


def deterministic_pair(check: Check, project: str) -> None:
    """Two --deterministic runs of one epoch: the second step is ok when metrics (as `make reproduce` compares them)
    and weights are identical."""
    _, first = check.train("deterministic 1", project, "--deterministic", "--epochs", "1")
    step, second = check.train("deterministic 2", project, "--deterministic", "--epochs", "1")
    if first and second:
        step["identical"] = {
            "metrics": metrics_table(read_run(first)[2], read_run(second)[2])[1] == 0,
            "weights": weights_digest(first / "last.ckpt") == weights_digest(second / "last.ckpt"),
        }
        if not all(step["identical"].values()):
            step.update(ok=False, error=f"the two runs differ: {step['identical']}")


def weights_digest(checkpoint: Path) -> str:
    """sha256 over a checkpoint's network weights (plain PyTorch's "model" or Lightning's "state_dict")."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state = state.get("state_dict") or state["model"]
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def machine(run_dir: Path | None) -> dict:
    """The GPU, driver, CUDA, cuDNN and library versions, as the default run's provenance recorded them."""
    if run_dir is None:
        import torch

        return {"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": [], "driver": None}
    _, provenance, _ = read_run(run_dir)
    return {**provenance["versions"], **provenance["hardware"]}


def targets(steps: dict, bench: dict | None, projects: list[str], default: str) -> list[dict]:
    """The GPU targets, each with the measured figure and whether it was met (None: not measured)."""
    trained = {project: steps.get(f"train {project}", {}) for project in projects}
    compiled = steps.get("train --compile", {})
    rows = []

    def target(name, value, met):
        rows.append({"target": name, "value": value, "met": None if value is None else bool(met(value))})

    for project, step in trained.items():
        target(
            f"{project}: first epoch / steady epoch <= {FIRST_EPOCH_RATIO}",
            step.get("first_epoch_ratio"),
            FIRST_EPOCH_RATIO.__ge__,
        )
    steady = trained[default].get("steady_images_per_s")
    ceiling = bench and bench.get("model_only_images_per_s")
    share = steady / ceiling if steady and ceiling else None
    target(f"{default} steady images/s / model-only ceiling >= {CEILING_SHARE}", share, CEILING_SHARE.__le__)
    speeds = [step.get("steady_images_per_s") for step in trained.values()]
    apart = (max(speeds) - min(speeds)) / max(speeds) if all(speeds) else None
    target(f"the projects' steady images/s apart <= {PROJECTS_APART:.0%}", apart, PROJECTS_APART.__ge__)
    for project, step in trained.items():  # the step's seconds: from starting the process to its exit
        seconds = step.get("seconds") if step.get("ok") else None
        name = f"{project}: whole default train, process start to exit < {WHOLE_TRAIN_SECONDS:.0f} s"
        target(name, seconds, WHOLE_TRAIN_SECONDS.__gt__)
    timeline = trained[default].get("timeline", {})
    first_step = timeline["first_step_s"] - timeline["model_built_s"] if "first_step_s" in timeline else None
    target(f"{default}: first training step < {FIRST_STEP_SECONDS:.0f} s", first_step, FIRST_STEP_SECONDS.__gt__)
    built = timeline.get("model_built_s")
    target(f"{default}: process start to model built < {MODEL_BUILT_SECONDS:.0f} s", built, MODEL_BUILT_SECONDS.__gt__)
    speedup = compiled.get("steady_images_per_s") and steady and compiled["steady_images_per_s"] / steady
    target("--compile steady speed-up (published, no target)", speedup, lambda v: True)
    epochs = compiled.get("epoch_seconds") or []
    compile_seconds = epochs[0] - statistics.median(epochs[1:]) if len(epochs) > 1 else None
    target("--compile compile time, s: first epoch - steady epoch (published, no target)", compile_seconds, lambda v: True)
    return rows


def markdown(report: dict) -> str:
    m = report["machine"]
    gpus = ", ".join(m.get("gpus") or []) or "no GPU"
    lines = [
        f"# gpu-check {report['started']}",
        "",
        f"{gpus}; driver {m.get('driver')}, CUDA {m.get('cuda')}, cuDNN {m.get('cudnn')}, torch {m.get('torch')}, "
        f"timm {m.get('timm')}, pytorch_lightning {m.get('pytorch_lightning')}, python {m.get('python')}; "
        f"{report['images']} images; {report['seconds']:.0f} s in all",
        "",
        "| step | ok | seconds | figures |",
        "| --- | --- | ---: | --- |",
    ]
    for step in report["steps"]:
        figures = step.get("error", "")
        if "timeline" in step:
            t = step["timeline"]
            figures = (
                f"data ready {t.get('data_ready_s', 0):.1f} s, first step {t.get('first_step_s', 0):.1f} s, epochs "
                f"{' / '.join(f'{s:.1f}' for s in step['epoch_seconds'])} s, images/s "
                f"{' / '.join(f'{v:,}' for v in step['images_per_s'])}, val_acc {step['val_acc']:.4f}"
            )
        elif "identical" in step:
            figures = f"metrics identical: {step['identical']['metrics']}, weights identical: {step['identical']['weights']}"
        elif "bench" in step:
            figures = f"report {step['bench']}"
        elif "result" in step:
            figures = "below"
        lines.append(f"| {step['name']} | {'yes' if step['ok'] else 'no'} | {step.get('seconds', '')} | {figures} |")
    for step in report["steps"]:
        if step["name"] == "start-up profile" and "result" in step:
            phases = step["result"]["phases"]
            lines += ["", f"Start-up, phase by phase ({step['result']['model']}, bench/startup.py):", ""]
            lines += ["| phase | seconds |", "| --- | ---: |"] + [f"| {name} | {seconds:.2f} |" for name, seconds in phases]
            lines.append(f"| in all, from process start | {sum(seconds for _, seconds in phases):.2f} |")
        if step["name"] == "first-step study" and "result" in step:
            result = step["result"]
            lines += ["", f"First step per depthwise layout ({result['model']}, batch {result['batch_size']}, "
                      "bench/first_step.py):", "", *first_step_table(result["rows"])]  # fmt: skip
    lines += ["", "| target | measured | met |", "| --- | ---: | --- |"]
    for row in report["targets"]:
        value = "" if row["value"] is None else f"{row['value']:.3g}"
        met = {None: "not measured", True: "yes", False: "no"}[row["met"]]
        lines.append(f"| {row['target']} | {value} | {met} |")
    return "\n".join(lines) + "\n"


def gpu_check(args, work: Path, logs: Path) -> dict:
    check = Check(args, work, logs)
    sample = [sys.executable, "-m", "eurosat.sample", "--out", work / "eurosat", "--fraction", args.fraction]
    check.run("write data", sample)
    runs = {}
    for project in args.projects:  # the default first
        _, runs[project] = check.train(f"train {project}", project)
    study(check, "start-up profile", "startup.py", ["--data", work / "eurosat"])
    study(check, "first-step study", "first_step.py", args.study_args)
    bench_result = benchmark(check, work / "bench")
    deterministic_pair(check, args.default_project)
    # last: on an H200 its first epoch took 174 s, and before, it left the benchmark no time (gpu-check-20261128-202441)
    check.train("train --compile", args.default_project, "--compile", "--epochs", str(args.compile_epochs))
    return {
        "machine": machine(runs.get(args.default_project)),
        "images": int(args.images),
        "steps": check.steps,
        "targets": targets({step["name"]: step for step in check.steps}, bench_result, args.projects, args.default_project),
    }


def study(check: Check, name: str, script: str, extra: list) -> None:
    """One of bench/'s studies in its own step, on the check's device; its JSON goes into the step (and the report)."""
    out = check.work / f"{name.replace(' ', '-')}.json"
    step = check.run(name, [sys.executable, REPO / "bench" / script, "--device", check.args.device, "--out", out, *extra])
    if out.exists():
        step["result"] = json.loads(out.read_text())


def benchmark(check: Check, out: Path) -> dict | None:
    """make bench within --bench-budget, without its torch.compile row (the check's own --compile run measures that,
    in train.py's path), ending within the check's own budget; its report goes beside the check's."""
    args = check.args
    budget = min(args.bench_budget, check.deadline - time.monotonic() - BENCH_START_AND_REPORT)
    command = [sys.executable, REPO / "bench" / "run.py", "--data", check.work / "eurosat", "--device", args.device]
    command += ["--project", args.default_project, "--out", out, "--budget", f"{max(budget, 1):.0f}", "--no-compile"]
    command += args.bench_args
    step = check.run("bench", command)
    if not step["ok"]:
        return None
    (result_file,) = out.glob("*.json")
    result = json.loads(result_file.read_text())
    for path in out.iterdir():
        (args.out / path.name).write_bytes(path.read_bytes())
    step.update(bench=result_file.name, budget=result["budget"], model_only_images_per_s=result.get("model_only_images_per_s"))
    return result


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: try the check without a GPU")
    parser.add_argument("--fraction", type=float, default=1.0, help="share of the official 27,000 images (default: all)")
    parser.add_argument("--budget", type=float, default=540, help="seconds for all steps (default: 540)")
    parser.add_argument(
        "--bench-budget", type=float, default=BENCH_BUDGET, help=f"seconds for the benchmark's rows (default: {BENCH_BUDGET})"
    )
    parser.add_argument("--compile-epochs", type=int, default=2, help="epochs of the --compile run (default: 2)")
    parser.add_argument("--train-args", type=shlex.split, default=[], help="extra flags for every training run")
    parser.add_argument("--bench-args", type=shlex.split, default=[], help="extra flags for bench/run.py")
    parser.add_argument("--study-args", type=shlex.split, default=[], help="extra flags for bench/first_step.py")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="where the report goes")
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible to torch here; run on a GPU machine, or --device cpu to try")
    args.default_project = manifest.default_project()
    args.projects = [args.default_project, *(name for name in manifest.project_names() if name != args.default_project)]
    args.train_args += ["--device", args.device]
    from eurosat.sample import OFFICIAL_COUNTS

    args.images = sum(max(5, round(count * args.fraction)) for count in OFFICIAL_COUNTS.values())
    started, start = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"gpu-check-{time.strftime('%Y%m%d-%H%M%S')}"  # the report, and each step's output in stem/
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        report = {"started": started, **gpu_check(args, Path(work), stem)}
    report["seconds"] = round(time.monotonic() - start, 1)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(f"report: {stem}.json, {stem}.md; each step's output: {stem}/")
    if not all(step["ok"] for step in report["steps"]):
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
