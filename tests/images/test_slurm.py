"""make slurm-up: a real Slurm cluster (Debian's slurmctld, slurmd and munge) in three containers on the lightning
image runs the script `make cluster-files` renders, unchanged, with CONTAINER_RUNTIME=none: sbatch from the
controller, torchrun's c10d rendezvous at the first node of the allocation, gloo between the nodes. A job that
stops on a signal requeues itself and its next start continues the run (runs/<project>/<project>-<job id>).

The cluster works on a copy of the repository (its shared storage), so runs and job output stay out of this one."""

import csv
import json
import os
import re
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest
import torch
from engine import docker, make_settings
from helpers import (
    PACED,
    PROJECTS,
    assert_same_weights,
    copy_repository,
    make_in_clone,
    read_metrics,
    run_project,
    single_run_dir,
    weights,
    without_timings,
)

pytestmark = pytest.mark.xdist_group("slurm")  # make test-images runs it beside the other modules
# 432 training images at a global batch of 16 (8 per node); a checkpoint every 4 steps, to stop mid-epoch.
ARGS = f"--device cpu --epochs 2 {' '.join(PACED)} --deterministic --checkpoint-every 4"
TOLERANCE = 0.05  # final val_acc: only BatchNorm differs from one process (it sees 8 images, not 16)


@pytest.fixture(scope="module")
def cluster(built_images, sample_dir, tmp_path_factory):
    """A copy of the repository with the cluster up on it (the lightning image: it carries torch-ngc's packages
    too, so one cluster runs both projects), and the job scripts of both projects rendered for 2 nodes x 1 GPU."""
    repo = copy_repository(tmp_path_factory.mktemp("slurm") / "repo")
    started = time.monotonic()
    result = make_in(repo, "slurm-up", "PROJECT=eurosat-lightning", f"DATA={sample_dir}")
    print(f"\nmake slurm-up: {time.monotonic() - started:.0f} s; {result.stdout.strip().splitlines()[-1]}")
    for project in PROJECTS:
        make_in(repo, "cluster-files", f"PROJECT={project}", "NODES=2", "REGISTRY=registry.example.org/team",
                f"ARGS={ARGS} --out runs/slurm/{project}")  # fmt: skip
    yield repo
    make_in(repo, "slurm-down", check=False)


def make_in(repo, *args, check=True):
    return make_in_clone(repo, *args, *make_settings(), check=check, timeout=900)


def on_controller(repo, *command, check=True):
    """A command on the controller, as the host user, in the shared checkout (what a user types after ssh)."""
    return make_in(repo, "slurm-shell", f"CMD={shlex.join(command)}", check=check)


def submit(repo, project, *train_flags, wait=True, env=(), script=None, options=()):
    """sbatch the rendered script (CONTAINER_RUNTIME=none: the nodes carry the image); returns the job id. The two
    nodes share this machine's cores: one thread each (torch would start one per core on both, and wait on them).
    The jobs use the CPU kernels this process's trainings use (ATEN_CPU_CAPABILITY, when set), so that a run there
    equals a run here."""
    script = script or f"build/cluster/{project}-2x1/slurm.sbatch"
    kernels = [f"ATEN_CPU_CAPABILITY={os.environ['ATEN_CPU_CAPABILITY']}"] if "ATEN_CPU_CAPABILITY" in os.environ else []
    result = on_controller(repo, "env", "CONTAINER_RUNTIME=none", "OMP_NUM_THREADS=1", *kernels, *env, "sbatch",
                           *(["--wait"] if wait else []), *options, script, *train_flags, check=False)  # fmt: skip
    job = re.search(r"Submitted batch job (\d+)", result.stdout)
    assert job, result.stdout + result.stderr
    return job[1], result.returncode


def job_record(repo, job: str) -> dict[str, str]:
    line = on_controller(repo, "scontrol", "--oneliner", "show", "job", job).stdout
    return dict(re.findall(r"(\w+)=(\S+)", line))


def job_state(repo, job: str) -> str:
    return job_record(repo, job)["JobState"]


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(2)


def job_output(repo, project, job) -> str:
    return (repo / f"{project}-{job}.out").read_text()


def job_run_dir(repo, project, job):
    """The run directory the rendered script names after the job."""
    return repo / "runs" / project / f"{project}-{job}"


def start_requeued_now(repo, job) -> None:
    """Slurm holds a requeued job about two minutes before it may start again (its BeginTime): once the job is back
    in the queue, move that to now, as an administrator may, so the test need not wait."""
    wait_until(lambda: job_record(repo, job).get("Restarts", "0") != "0" or ended(repo, job), 300, "the requeue")
    if job_state(repo, job) == "PENDING":
        on_controller(repo, "scontrol", "update", f"JobId={job}", "StartTime=now", check=False)


def ended(repo, job) -> bool:
    return job_state(repo, job) not in ("PENDING", "RUNNING", "COMPLETING", "REQUEUED", "CONFIGURING")


@pytest.fixture(scope="module")
def uninterrupted(cluster):
    """project -> its run directory of a whole two-node job."""
    runs = {}
    for project in PROJECTS:
        started = time.monotonic()
        job, status = submit(cluster, project)
        waited = time.monotonic() - started
        record = job_record(cluster, job)
        ran = (datetime.fromisoformat(record["EndTime"]) - datetime.fromisoformat(record["SubmitTime"])).total_seconds()
        print(f"{project}: two-node job {job} ran {ran:.0f} s; sbatch --wait returned after {waited:.0f} s")
        assert status == 0, job_output(cluster, project, job)[-3000:]
        # MinJobAge=16: sbatch --wait polls every 8 s (with Slurm's default, after 2, 10, 42, 74 s...)
        assert waited - ran < 12, f"sbatch --wait returned {waited - ran:.0f} s after the job ended"
        runs[project] = job_run_dir(cluster, project, job)
        assert record["Restarts"] == "0" and "requeue:" not in job_output(cluster, project, job)
    return runs


def assert_close_weights(first, second) -> None:
    """The same network to float32 rounding (two ranks sum their gradients in either order)."""
    a, b = weights(first), weights(second)
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-5, atol=1e-6) for k in a)


def test_the_cluster_has_two_idle_nodes_with_the_projects_environment(cluster):
    nodes = on_controller(cluster, "sinfo", "--noheader", "--Node", "--format", "%N %t %c %G").stdout.split("\n")
    assert sorted(filter(None, nodes)) == ["node1 idle 16 gpu:1", "node2 idle 16 gpu:1"]
    imported = on_controller(cluster, "srun", "--nodes=2", "python3", "-c", "import pytorch_lightning, timm; print('ok')")
    assert imported.stdout.split() == ["ok", "ok"]  # each node ran it in the image's environment


@pytest.mark.parametrize("project", PROJECTS)
def test_the_rendered_script_trains_on_two_nodes_like_one_process(cluster, uninterrupted, sample_dir, project, tmp_path):
    run_dir = uninterrupted[project]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["world_size"] == 2
    nodes = read_metrics(run_dir)
    assert [r["epoch"] for r in nodes] == [1, 2] and (run_dir / "last.ckpt").is_file()
    assert (run_dir / "last.ckpt").stat().st_uid == cluster.stat().st_uid  # written as the submitting user

    run_project(project, "train", "--data", sample_dir, "--out", tmp_path, *ARGS.split())
    single = read_metrics(single_run_dir(tmp_path))
    print(f"\n{project} two Slurm nodes: {nodes}\none process: {single}")
    assert [r["val_samples"] for r in nodes] == [r["val_samples"] for r in single] == [108, 108]
    assert nodes[-1]["val_acc"] >= 0.9 and single[-1]["val_acc"] >= 0.9
    assert abs(nodes[-1]["val_acc"] - single[-1]["val_acc"]) <= TOLERANCE


@pytest.mark.parametrize("project", PROJECTS)
def test_sigterm_to_the_batch_shell_checkpoints_requeues_and_the_next_start_finishes_the_same_run(
    cluster, uninterrupted, project
):
    job, _ = submit(cluster, project, wait=False)
    run_dir = job_run_dir(cluster, project, job)
    wait_until(lambda: (run_dir / "last.ckpt").exists(), 300, "the first checkpoint")
    on_controller(cluster, "scancel", "--signal=TERM", "--batch", job)  # as preemption does: the batch shell only
    start_requeued_now(cluster, job)
    wait_until(lambda: ended(cluster, job), 600, "the requeued job to finish")
    record, output = job_record(cluster, job), job_output(cluster, project, job)
    print(f"\n{project}: job {job} {record['JobState']} after {record['Restarts']} requeue(s)")
    # mid-epoch, or at the epoch's end when the signal lands after the ranks' last vote of the epoch (every 10 steps)
    (stopped,) = [line for line in output.splitlines() if line.startswith("stopped by SIGTERM at ")]
    assert stopped.endswith(f"continue with --resume {run_dir.relative_to(cluster)}")
    assert f"requeue: training stopped (exit 143): job {job} goes back in the queue (requeue 1 of 10)" in output
    assert record["JobState"] == "COMPLETED" and record["Restarts"] == "1" and "[rank" not in output
    whole = without_timings(read_metrics(uninterrupted[project]))  # equal up to float32 summation order
    assert without_timings(read_metrics(run_dir)) == [pytest.approx(record, rel=1e-6) for record in whole]
    assert_close_weights(run_dir / "last.ckpt", uninterrupted[project] / "last.ckpt")


def test_scontrol_requeue_by_hand_continues_the_run_and_the_limit_ends_the_job(cluster, uninterrupted):
    project = PROJECTS[0]
    job, _ = submit(cluster, project, wait=False)
    run_dir = job_run_dir(cluster, project, job)
    wait_until(lambda: (run_dir / "last.ckpt").exists(), 300, "the first checkpoint")
    on_controller(cluster, "scontrol", "requeue", job)  # what an administrator or a preempting scheduler does
    start_requeued_now(cluster, job)
    wait_until(lambda: ended(cluster, job), 600, "the requeued job to finish")
    assert job_record(cluster, job)["JobState"] == "COMPLETED" and int(job_record(cluster, job)["Restarts"]) >= 1
    whole = without_timings(read_metrics(uninterrupted[project]))
    assert without_timings(read_metrics(run_dir)) == [pytest.approx(record, rel=1e-6) for record in whole]

    limited, _ = submit(cluster, project, wait=False, env=["MAX_REQUEUES=0"])
    wait_until(lambda: (job_run_dir(cluster, project, limited) / "last.ckpt").exists(), 300, "the first checkpoint")
    on_controller(cluster, "scancel", "--signal=TERM", "--batch", limited)
    wait_until(lambda: ended(cluster, limited), 300, "the job to end")
    output = job_output(cluster, project, limited)
    assert f"requeue: not requeued: job {limited} was requeued 0 time(s), MAX_REQUEUES=0" in output
    assert job_record(cluster, limited)["Restarts"] == "0" and job_state(cluster, limited) == "FAILED"


@pytest.mark.parametrize("project", PROJECTS)
def test_a_bad_flag_ends_the_job_without_a_requeue(cluster, project):
    bad, status = submit(cluster, project, "--lr", "abc")  # exit 2 on both nodes
    assert status != 0 and job_record(cluster, bad)["Restarts"] == "0" and job_state(cluster, bad) == "FAILED"
    assert "'abc' is not a number" in job_output(cluster, project, bad) and "requeue" not in job_output(cluster, project, bad)


def test_a_killed_node_requeues_the_job_in_bounded_time(cluster, uninterrupted):
    project = PROJECTS[0]
    job, _ = submit(cluster, project, "--epochs", "50", wait=False)
    run_dir = job_run_dir(cluster, project, job)
    wait_until(lambda: (run_dir / "metrics.jsonl").exists(), 300, "the first epoch")
    (node2,) = docker("ps", "--quiet", "--filter", "label=com.docker.compose.project=eurosat-slurm",
                      "--filter", "label=com.docker.compose.service=node2").stdout.split()  # fmt: skip
    docker("kill", node2)
    killed = time.monotonic()
    wait_until(lambda: job_record(cluster, job)["Restarts"] != "0" or ended(cluster, job), 180, "the job to requeue")
    seconds = time.monotonic() - killed
    docker("start", node2)  # it rejoins (ReturnToService=2), and the requeued job can run again
    record, output = job_record(cluster, job), job_output(cluster, project, job)
    print(f"\nthe job was requeued {seconds:.0f} s after node2 was killed: {record['JobState']}, {record['Restarts']} restart(s)")
    assert "error: lost another training process (a node or rank stopped): " in output, output[-3000:]
    assert record["Restarts"] == "1" and seconds < 120, output[-3000:]
    on_controller(cluster, "scancel", job)
    wait_until(lambda: "node2 idle" in on_controller(cluster, "sinfo", "-N", "-h", "-o", "%N %t").stdout, 180,
               "node2 to rejoin")  # fmt: skip


# Slurm signals a task's first start within 30 s of its first checkpoint (run_arrays_to_the_end); beside the other
# seven trainings on two cores an epoch takes a task 10 s (AVX-512 with bf16) to 100 s (AVX2), so six epochs keep it
# training past that.
SWEPT = f"--device cpu --epochs 6 {' '.join(PACED)} --deterministic --checkpoint-every 4"
LONG_LIMIT = 20  # minutes: a task's limit until it trains, and after its requeue
NOTICE = 150  # seconds: --signal=TERM@NOTICE; a stop under load (the epoch's validation, the exit) takes up to ~40 s


def array_tasks(repo, array: str) -> dict[str, dict[str, str]]:
    """<array>_<task> -> its scontrol record, for the tasks Slurm still keeps (a finished one for MinJobAge)."""
    lines = on_controller(repo, "scontrol", "--oneliner", "show", "job", array, check=False).stdout.splitlines()
    records = [dict(re.findall(r"(\w+)=(\S+)", line)) for line in lines]
    return {f"{array}_{r['ArrayTaskId']}": r for r in records if r.get("ArrayTaskId", "").isdigit()}


def slurm_seconds(duration: str) -> int:
    """Slurm's [days-]hours:minutes:seconds (RunTime) in seconds."""
    days, _, clock = duration.rpartition("-")
    hours, minutes, seconds = (int(part) for part in clock.split(":"))
    return int(days or 0) * 86400 + hours * 3600 + minutes * 60 + seconds


def run_arrays_to_the_end(repo, arrays: list[str], tasks: int, timeout: float, trains) -> dict[str, list[tuple]]:
    """Polls the arrays' tasks until each has ended; returns each task's timeline, (seconds since the first poll,
    state, restarts) at every change. A first start gets its time limit once it trains (trains(task): it wrote a
    checkpoint), NOTICE - 60 to NOTICE s ahead: with --signal=TERM@NOTICE, Slurm, which checks limits every 30 s,
    signals it at its next check, while it trains however long its start-up took on this CPU, and 60 to 150 s before
    the limit. A requeued task gets its long limit back and starts at once (Slurm would hold it about two minutes)."""
    timelines: dict[str, list[tuple]] = {}
    limited = set()
    started = time.monotonic()
    while True:
        for array in arrays:
            for task, record in array_tasks(repo, array).items():
                now = (record["JobState"], int(record["Restarts"]))
                if not timelines.get(task) or timelines[task][-1][1:] != now:
                    timelines.setdefault(task, []).append((round(time.monotonic() - started), *now))
                if now == ("RUNNING", 0) and task not in limited and trains(task):
                    minutes = (slurm_seconds(record["RunTime"]) + NOTICE) // 60
                    on_controller(repo, "scontrol", "update", f"JobId={task}", f"TimeLimit={minutes}")
                    limited.add(task)
                    print(f"{task}: time limit {minutes} min at {round(time.monotonic() - started)} s, after {record['RunTime']}")
                if now[0] == "PENDING" and now[1]:
                    on_controller(repo, "scontrol", "update", f"JobId={task}", "StartTime=now", f"TimeLimit={LONG_LIMIT}",
                                  check=False)  # fmt: skip
        states = [timeline[-1][1] for timeline in timelines.values()]
        if len(states) == tasks and not {"PENDING", "RUNNING", "COMPLETING", "REQUEUED", "CONFIGURING"} & set(states):
            return timelines
        assert time.monotonic() - started < timeout, f"timed out waiting for the arrays: {timelines}"
        time.sleep(1)


def test_a_sweep_is_one_job_array_whose_tasks_slurm_s_time_limit_stops_requeue_and_finish(cluster, sample_dir, tmp_path):
    """Both projects' sweeps over two seeds, each one job array of one-node tasks whose time limit falls 90 to 150 s
    after their first checkpoint, with the signal due at once: Slurm signals each task before its limit, the task
    checkpoints and requeues itself alone, its next start continues, and each run ends with the metrics and weights
    of an uninterrupted run of its combination; make summary then averages each sweep. The four tasks share the two
    nodes (no GPU asked) beside the four local references."""
    arrays = {}
    for project in PROJECTS:
        make_in(cluster, "cluster-files", f"PROJECT={project}", "NODES=1", "REGISTRY=registry.example.org/team",
                f"ARGS={SWEPT}", "SWEEP=--seed 1,2")  # fmt: skip
        script = f"build/cluster/{project}-1x1-sweep/slurm.sbatch"
        limits = [f"--time={LONG_LIMIT}", f"--signal=TERM@{NOTICE}", "--gpus-per-node=0", "--cpus-per-task=8"]
        arrays[project], _ = submit(cluster, project, wait=False, script=script, options=limits)
    project_of = {array: project for project, array in arrays.items()}

    def trains(task: str) -> bool:
        array, index = task.split("_")
        project = project_of[array]
        return (job_run_dir(cluster, project, array) / f"{int(index):02d}" / "last.ckpt").exists()

    def reference(project_seed):
        project, seed = project_seed
        out = tmp_path / f"{project}-{seed}"
        run_project(project, "train", "--data", sample_dir, *SWEPT.split(), "--seed", seed, "--run-dir", out,
                    env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=900)  # fmt: skip
        return out

    combinations = [(project, seed) for project in PROJECTS for seed in ("1", "2")]
    with ThreadPoolExecutor(4) as pool:
        pending = pool.map(reference, combinations)  # beside the arrays
        timelines = run_arrays_to_the_end(cluster, list(arrays.values()), 4, timeout=1500, trains=trains)
        references = dict(zip(combinations, pending, strict=True))
    print(f"\ntask timelines (seconds, state, requeues): {json.dumps(timelines)}")

    for project, array in arrays.items():
        sweep_dir = job_run_dir(cluster, project, array)
        record = json.loads((sweep_dir / "sweep.json").read_text())
        assert record["slurm_array_job"] == array
        assert [run["flags"] for run in record["runs"]] == [["--seed", "1"], ["--seed", "2"]]
        for index, seed in enumerate(("1", "2")):
            task, run_dir = f"{array}_{index}", cluster / record["runs"][index]["run_dir"]
            output = (cluster / f"{project}-{task}.out").read_text()
            state, requeues = timelines[task][-1][1:]
            assert state == "COMPLETED", output[-3000:]
            assert requeues >= 1, f"{task} finished before Slurm's signal: it was not requeued ({timelines[task]})"
            assert "stopped by SIGTERM at " in output and f"requeue: training stopped (exit 143): job {task} goes back" in output
            assert json.loads((run_dir / "config.json").read_text())["seed"] == int(seed)
            whole = without_timings(read_metrics(references[(project, seed)]))
            assert without_timings(read_metrics(run_dir)) == [pytest.approx(epoch, rel=1e-6) for epoch in whole]
            assert_same_weights(run_dir / "last.ckpt", references[(project, seed)] / "last.ckpt")

        make_in(cluster, "summary", f"RUNS=runs/{project}/{project}-{array}")
        print((sweep_dir / "summary.md").read_text())
        (row,) = csv.DictReader((sweep_dir / "summary.csv").open())  # one setting, its two seeds
        finals = [read_metrics(references[(project, seed)])[-1]["val_acc"] for seed in ("1", "2")]
        assert row["runs"] == "2" and row["seeds"] == "1,2" and float(row["final_val_acc_mean"]) == pytest.approx(sum(finals) / 2)
