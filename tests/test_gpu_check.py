"""make gpu-check on the CPU with a small data size: every step runs in its own process and the one report is
written; the --compile run's kernels land in MODEL_CACHE, where a second run would find them."""

import json
import os
import sys

import pytest
from helpers import MODEL, run

pytestmark = pytest.mark.slow

STEPS = ["write data", "train eurosat-amp", "train eurosat-lightning", "start-up profile", "first-step study", "bench"]
STEPS += ["deterministic 1", "deterministic 2", "train --compile"]
TRAIN = f"--model {MODEL} --batch-size 32 --epochs 2 --no-pretrained"
BENCH = f"--model {MODEL} --batch-size 32 --workers 0 --warmup-steps 1 --steps 2 --accuracy-epochs 1 --repeats 1"
STUDY = "--model tf_mobilenetv3_small_minimal_100 --batch-size 8 --steps 1"  # depthwise convolutions, as the default


def test_gpu_check_runs_every_step_and_writes_one_report(tmp_path):
    out, models = tmp_path / "results", tmp_path / "models"
    args = f"--device cpu --fraction 0.005 --budget 1800 --bench-budget 600 --out {out}"
    args += f" --train-args '{TRAIN}' --bench-args '{BENCH}' --study-args '{STUDY}'"
    make = ["make", "gpu-check", f"MODEL_CACHE={models}", f"ARGS={args}", f"GPU_CHECK_PYTHON={sys.executable}"]
    env = {**os.environ, "TORCH_LOGS": "recompiles"}  # torch.compile says when it compiles a function again
    result = run(*make, timeout=1800, env=env)  # seven steps in their own processes: minutes on a slow 2-core machine
    (report_file,) = out.glob("gpu-check-*.json")
    report = json.loads(report_file.read_text())
    assert [step["name"] for step in report["steps"]] == STEPS and all(step["ok"] for step in report["steps"])
    assert report["images"] == 133 and report["machine"]["device"] == "cpu" and report["machine"]["torch"]
    assert {"cuda", "cudnn", "driver", "gpus", "timm", "pytorch_lightning"} <= set(report["machine"])
    steps = {step["name"]: step for step in report["steps"]}
    assert steps["deterministic 2"]["identical"] == {"metrics": True, "weights": True}
    for name in ("train eurosat-amp", "train eurosat-lightning", "train --compile"):
        step = steps[name]  # read from the run's own record of its time
        assert len(step["epoch_seconds"]) == 2 and step["first_epoch_ratio"] > 0 and step["steady_images_per_s"] > 0
        assert 0 < step["timeline"]["data_ready_s"] < step["timeline"]["first_step_s"] < step["timeline"]["finished_s"]
    assert (out / steps["bench"]["bench"]).is_file() and steps["bench"]["budget"]["skipped"] == []
    rows = [row["name"] for row in steps["bench"]["budget"]["rows"]]
    assert "model only" in rows and not any("torch.compile" in row for row in rows)  # compile: the check's own run
    phases = dict(steps["start-up profile"]["result"]["phases"])
    assert list(phases)[:3] == ["interpreter start", "import torch", "import timm"] and all(v >= 0 for v in phases.values())
    assert "cache check (shape, size, checksum)" in phases and "build tf_efficientnet_b5" in phases
    layouts = [row["layout"] for row in steps["first-step study"]["result"]["rows"]]
    assert layouts == ["channels_last", "nchw", "depthwise-nchw", "depthwise-native"]
    targets = {row["target"]: row for row in report["targets"]}
    assert len(targets) == 10 and all(row["value"] is not None for row in targets.values())
    assert targets["eurosat-lightning: whole default train, process start to exit < 20 s"]["value"] == pytest.approx(
        steps["train eurosat-lightning"]["seconds"]
    )
    assert targets["eurosat-amp: first epoch / steady epoch <= 1.5"]["value"] == pytest.approx(
        steps["train eurosat-amp"]["first_epoch_ratio"]
    )
    table = report_file.with_suffix(".md").read_text()
    assert "| train --compile | yes |" in table and "| target | measured | met |" in table
    assert "| depthwise layout | first step, s | steady images/s |" in table and "| import timm | " in table
    logs = sorted(report_file.with_suffix("").glob("*.log"))
    assert len(logs) == len(STEPS)  # each step's output, kept
    compiled = logs[STEPS.index("train --compile")].read_text()
    assert "Epoch 2/2" in compiled and "Recompiling function" not in compiled  # validation runs eagerly, no second graph
    assert any((models / "inductor").rglob("*")), "torch.compile's cache is not in MODEL_CACHE"
    assert result.stdout.rstrip().splitlines()[-1].startswith(f"report: {report_file}")


def test_gpu_check_without_a_gpu_is_one_line(tmp_path):
    result = run(sys.executable, "scripts/gpu_check.py", "--out", tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "error: --device cuda: no CUDA GPU is visible to torch here; run on a GPU machine, or --device cpu to try"
    )
    assert not list(tmp_path.iterdir())


def test_gpu_check_keeps_to_its_budget_and_reports_what_did_not_run(tmp_path):
    """A budget that ends during the first training: that step is killed with its children, the rest are not
    started, the report names each, and the exit status says the check is incomplete."""
    # 10,000 epochs: no machine finishes them within the budget, so the budget ends during this step on any CPU
    train = f"{TRAIN} --epochs 10000"
    args = ["--device", "cpu", "--fraction", "0.005", "--budget", "15", "--out", tmp_path, "--train-args", train]
    result = run(sys.executable, "scripts/gpu_check.py", *args, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (report_file,) = tmp_path.glob("gpu-check-*.json")
    steps = json.loads(report_file.read_text())["steps"]
    assert [step["name"] for step in steps] == STEPS and steps[0]["ok"]
    assert steps[1]["error"] == "timed out (the check's time budget)" and steps[1]["seconds"] < 15 + 2
    assert all(step["error"] == "not run: the check's time budget was spent" for step in steps[2:])
    assert "gpu-check: train eurosat-amp: timed out (the check's time budget)" in result.stderr
