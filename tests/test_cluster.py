"""make cluster-files: the rendered Kubeflow PyTorchJob is checked against the operator's own API models (the
OpenAPI-generated kubeflow-training and kubernetes clients: no unknown field, the right types, required fields
present); the Slurm script passes bash -n and shellcheck. Both launch the same train.py with the same flags."""

import re
import shlex
import subprocess
from pathlib import Path

import kubernetes.client.models as k8s_models
import pytest
import yaml
from helpers import PROJECTS, REPO, run
from kubeflow.training import models as kubeflow_models

from eurosat import manifest

REGISTRY = "registry.example.org/team"


def schema_problems(value, type_name: str, where: str = "") -> list[str]:
    """Everything in `value` that the OpenAPI type `type_name` does not allow."""
    if match := re.fullmatch(r"list\[(.+)\]", type_name):
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [p for i, item in enumerate(value) for p in schema_problems(item, match[1], f"{where}[{i}]")]
    if match := re.fullmatch(r"dict\(str, (.+)\)", type_name):
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping"]
        return [p for key, item in value.items() for p in schema_problems(item, match[1], f"{where}.{key}")]
    primitives = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}
    if type_name in primitives:
        ok = isinstance(value, primitives[type_name]) and not (type_name == "int" and isinstance(value, bool))
        return [] if ok else [f"{where}: expected {type_name}, got {value!r}"]
    model = getattr(kubeflow_models, type_name, None) or getattr(k8s_models, type_name)
    if not isinstance(value, dict):
        return [f"{where}: expected a {type_name} mapping"]
    attributes = {json_name: attr for attr, json_name in model.attribute_map.items()}
    problems = [f"{where}.{key}: not a field of {type_name}" for key in value if key not in attributes]
    for key, item in value.items():
        if key in attributes:
            problems += schema_problems(item, model.openapi_types[attributes[key]], f"{where}.{key}")
    try:  # the generated constructors reject missing required fields and values outside an enum
        model(**{attributes[key]: item for key, item in value.items() if key in attributes})
    except (ValueError, TypeError) as exc:
        problems.append(f"{where}: {exc}")
    return problems


def render(project: str, nodes: int, gpus: int, args: str) -> Path:
    result = run(
        "make", "cluster-files", f"PROJECT={project}", f"NODES={nodes}", f"GPUS={gpus}", f"REGISTRY={REGISTRY}", f"ARGS={args}"
    )
    assert "wrote " in result.stdout
    return REPO / "build" / "cluster" / f"{project}-{nodes}x{gpus}"


@pytest.mark.parametrize("project", PROJECTS)
@pytest.mark.parametrize("nodes", [2, 3])
def test_rendered_cluster_files_are_valid_and_launch_the_same_training(project, nodes):
    image, layout = manifest.load(project).image, manifest.load(project).layout(nodes, 4)
    out = render(project, nodes, 4, "--epochs 3 --batch-size 1024")
    job = yaml.safe_load((out / "pytorchjob.yaml").read_text())
    assert schema_problems(job, "KubeflowOrgV1PyTorchJob", "PyTorchJob") == []
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == nodes - 1
    (container,) = replicas["Master"]["template"]["spec"]["containers"]
    assert container["name"] == "pytorch" and container["image"].startswith(f"{REGISTRY}/{image}:")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    k8s_launch = container["args"]
    assert k8s_launch[:4] == ["--nnodes", str(nodes), "--nproc_per_node", "4"]

    script = out / "slurm.sbatch"
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    shellcheck = subprocess.run([REPO / ".venv" / "bin" / "shellcheck", script], capture_output=True, text=True)
    assert shellcheck.returncode == 0, shellcheck.stdout
    text = script.read_text()
    assert f"#SBATCH --nodes={nodes}" in text and "#SBATCH --gpus-per-node=4" in text and "--nproc_per_node=4" in text
    assert f"IMAGE={container['image']}" in text  # the same image
    train_line = next(line for line in text.splitlines() if f"projects/{project}/train.py" in line)
    slurm_train = shlex.split(train_line)
    assert slurm_train == k8s_launch[k8s_launch.index(f"projects/{project}/train.py") :]  # the same script and flags
    assert slurm_train[2:4] == ["--data", "/data"] and slurm_train[4:] == [*layout, "--epochs", "3", "--batch-size", "1024"]


def test_the_schema_check_catches_a_broken_manifest():
    out = render(PROJECTS[0], 2, 1, "")
    job = yaml.safe_load((out / "pytorchjob.yaml").read_text())
    worker = job["spec"]["pytorchReplicaSpecs"]["Worker"]
    worker["replica"] = worker.pop("replicas")  # a typo
    worker["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = 1.5
    del worker["template"]["spec"]["containers"][0]["name"]
    problems = schema_problems(job, "KubeflowOrgV1PyTorchJob", "PyTorchJob")
    assert any(p.endswith("Worker.replica: not a field of KubeflowOrgV1ReplicaSpec") for p in problems), problems
    assert any("nvidia.com/gpu: expected str" in p for p in problems), problems
    assert any("`name`, must not be `None`" in p for p in problems), problems


def test_cluster_files_need_a_registry():
    result = run("make", "cluster-files", f"PROJECT={PROJECTS[0]}", "NODES=2", check=False)
    assert result.returncode == 2 and "error: set REGISTRY" in result.stderr
