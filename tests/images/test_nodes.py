"""make train-nodes: two containers on a compose network act as two nodes and train one eurosat-amp run
(torchrun, c10d rendezvous at node0, gloo on the CPU), compared with a single process at the same global batch."""

import json
import shutil
import subprocess
import time

import pytest
from engine import docker, make, make_settings
from helpers import MODEL, REPO, read_metrics, run_project, single_run_dir

# The global batch of 16 is 8 per node. Each step's samples are the same as the single process's (the shards
# interleave one shuffled order) and DDP averages the gradients, so only BatchNorm differs: it normalises
# over each node's 8 images instead of 16. Hence the tolerance, on the final validation accuracy.
ARGS = f"--epochs 2 --model {MODEL} --batch-size 16 --deterministic --no-pretrained"
TOLERANCE = 0.05


def node_containers() -> list[str]:
    return docker("ps", "--all", "--quiet", "--filter", "label=com.docker.compose.project=eurosat",
                  "--filter", "label=com.docker.compose.service=node1").stdout.split()  # fmt: skip


@pytest.fixture
def out():
    path = f"runs/image-test-nodes-{int(time.time())}"
    yield path
    shutil.rmtree(REPO / path, ignore_errors=True)


def test_two_nodes_train_to_completion_like_one_process(built_images, sample_dir, out, tmp_path):
    result = make("train-nodes", "PROJECT=eurosat-amp", f"DATA={sample_dir}", f"ARGS={ARGS} --out {out}")
    run_dir = single_run_dir(REPO / out)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["world_size"] == 2
    nodes = read_metrics(run_dir)
    assert [r["epoch"] for r in nodes] == [1, 2] and (run_dir / "last.ckpt").is_file()
    assert "Epoch 2/2" in result.stdout

    run_project("eurosat-amp", "train", "--data", sample_dir, "--out", tmp_path, *ARGS.split())
    single = read_metrics(single_run_dir(tmp_path))
    print(f"\ntwo nodes: {nodes}\none process: {single}")
    assert [r["val_samples"] for r in nodes] == [r["val_samples"] for r in single] == [108, 108]  # each counted once
    assert nodes[-1]["val_acc"] >= 0.9 and single[-1]["val_acc"] >= 0.9  # both trained, far above chance (0.1)
    assert abs(nodes[-1]["val_acc"] - single[-1]["val_acc"]) <= TOLERANCE


def test_killing_one_node_stops_the_other_with_an_error(built_images, sample_dir, out):
    command = ["make", "train-nodes", "PROJECT=eurosat-amp", f"DATA={sample_dir}", f"ARGS={ARGS} --epochs 50 --out {out}"]
    process = subprocess.Popen(
        [*command, *make_settings()], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 300
        while not list((REPO / out).glob("*/metrics.jsonl")):  # both nodes are training: one epoch is done
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0][-3000:]
            time.sleep(1)
        (node1,) = node_containers()
        docker("kill", node1)
        killed = time.monotonic()
        output, _ = process.communicate(timeout=180)
        seconds = time.monotonic() - killed
    finally:
        if process.poll() is None:
            process.kill()
    print(f"\nthe other node exited {seconds:.0f} s after node1 was killed")
    assert process.returncode != 0
    assert "error: lost another training process (a node or rank stopped): " in output
    assert "error: node0 exited with status 1" in output and seconds < 120  # torchrun: 1 when a worker failed
    assert node_containers() == []  # both removed
