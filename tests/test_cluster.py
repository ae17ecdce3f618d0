"""make cluster-files: the rendered Kubeflow PyTorchJob is checked against the operator's own API models (the
OpenAPI-generated kubeflow-training and kubernetes clients: no unknown field, the right types, required fields
present); the Slurm script passes bash -n and shellcheck. Both launch the same train.py with the same flags."""

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import kubernetes.client.models as k8s_models
import pytest
import yaml
from helpers import PROJECTS, REPO, SMALL, main_in_process, pinned_stand_in, run, script_module, single_run_dir
from kubeflow.training import models as kubeflow_models

from eurosat import manifest
from eurosat.torchrun import stop_timeout

# The rendering writes into this repository's build/cluster: one pytest-xdist worker runs the module
pytestmark = pytest.mark.xdist_group("cluster-files")
REGISTRY = "registry.example.org/team"
DIGEST = "sha256:" + "0123456789abcdef" * 4


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


@pytest.fixture(scope="module", autouse=True)
def default_weights(tmp_path_factory):
    """The default model's weights locked and cached (a stand-in file): make cluster-files checks them on the host."""
    folder = tmp_path_factory.mktemp("weights")
    lock = folder / "weights.lock"
    shutil.copy(REPO / "weights.lock", lock)
    entry = pinned_stand_in(folder / "models", lock, "tf_efficientnet_b5")
    pinned_stand_in(folder / "models", lock, "resnet10t", b"resnet10t stand-in")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EUROSAT_WEIGHTS_LOCK", str(lock))
        patch.setenv("MODEL_CACHE", str(folder / "models"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield entry


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
    assert slurm_train[2:4] == ["--data", "$data"] and slurm_train[-1] == "$@"  # /data in a container; sbatch's args
    # each names its run's folder after the job, so that a requeued job or a restarted pod continues it
    assert slurm_train[-3:-1] == ["--run-dir", "$RUN_DIR"] and "RUN_DIR=${RUN_DIR:-runs/" in text
    assert k8s_launch[-2:] == ["--run-dir", f"runs/{project}/{project}"]
    slurm_train = [*slurm_train[:3], "/data", *slurm_train[4:-3]]
    k8s_train = k8s_launch[k8s_launch.index(f"projects/{project}/train.py") : -2]
    assert slurm_train == k8s_train  # the same script and flags
    assert slurm_train[4:] == [*layout, "--epochs", "3", "--batch-size", "1024"]
    # requeued on a signal (Slurm: the script itself and --requeue; the operator: exit statuses 128-255), not on a bad flag
    assert "#SBATCH --requeue" in text and "scontrol requeue" in text and "MAX_REQUEUES=${MAX_REQUEUES:-10}" in text
    assert {spec["restartPolicy"] for spec in replicas.values()} == {"ExitCode"} and job["spec"]["runPolicy"][
        "backoffLimit"
    ] == 10
    assert container["command"] == ["/usr/local/bin/entrypoint", "python3", "-m", "eurosat.torchrun"]
    # a signalled pod, like a signalled Slurm job, outlasts the time eurosat.torchrun gives training to stop
    notice = int(re.search(r"#SBATCH --signal=TERM@(\d+)", text)[1])
    for spec in replicas.values():
        assert spec["template"]["spec"]["terminationGracePeriodSeconds"] == notice > stop_timeout({}) + 20


def test_pods_run_as_the_given_user_with_a_writable_home_and_never_as_root():
    """As the compose services: the user's UID and GID (RUN_AS, else the image's app), the claim's new files in their
    group, a HOME of its own, the image's group that names the UID, no privilege to gain; root is refused in one line."""
    project = PROJECTS[0]
    run("make", "cluster-files", f"PROJECT={project}", f"REGISTRY={REGISTRY}", "RUN_AS=4242:4343", "ARGS=--epochs 1")
    job = yaml.safe_load((REPO / "build" / "cluster" / f"{project}-1x1" / "pytorchjob.yaml").read_text())
    assert schema_problems(job, "KubeflowOrgV1PyTorchJob", "PyTorchJob") == []
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 4242, "runAsGroup": 4343, "fsGroup": 4343,
                                      "fsGroupChangePolicy": "OnRootMismatch", "supplementalGroups": [1000]}  # fmt: skip
    (container,) = pod["containers"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    home = next(mount for mount in container["volumeMounts"] if mount["mountPath"] == "/home/app")
    assert {"name": home["name"], "emptyDir": {}} in pod["volumes"]
    assert {"name": "HOME", "value": "/home/app"} in container["env"]
    refused = run("make", "cluster-files", f"PROJECT={project}", f"REGISTRY={REGISTRY}", "RUN_AS=0:0", check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "--run-as: '0:0': give UID:GID, numbers other than 0 (e.g. 1000:1000)" in refused.stderr


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


@pytest.mark.parametrize("project", PROJECTS)
def test_a_sweep_renders_as_one_job_array_and_one_pytorchjob_per_combination(project):
    result = run("make", "cluster-files", f"PROJECT={project}", "NODES=2", "GPUS=4", f"REGISTRY={REGISTRY}",
                 "ARGS=--epochs 3", "SWEEP=--seed 1,2,3 --lr 1e-3,3e-4")  # fmt: skip
    assert "one job array of 6 tasks and 6 PyTorchJobs" in result.stdout
    out = REPO / "build" / "cluster" / f"{project}-2x4-sweep"
    script = out / "slurm.sbatch"
    shellcheck = subprocess.run([REPO / ".venv" / "bin" / "shellcheck", script], capture_output=True, text=True)
    assert shellcheck.returncode == 0, shellcheck.stdout
    text = script.read_text()
    assert "#SBATCH --array=0-5" in text and "#SBATCH --output=%x-%A_%a.out" in text and "#SBATCH --requeue" in text
    assert 'RUN_DIR=$SWEEP_DIR/$(printf %02d "$SLURM_ARRAY_TASK_ID")' in text and "scontrol requeue" in text
    cases = re.findall(r"^  (\d)\) set -- (.*) \"\$@\" ;;$", text, re.MULTILINE)
    assert cases[0] == ("0", "--seed 1 --lr 1e-3") and cases[5] == ("5", "--seed 3 --lr 3e-4") and len(cases) == 6

    jobs = list(yaml.safe_load_all((out / "pytorchjob.yaml").read_text()))
    assert [job["metadata"]["name"] for job in jobs] == [f"{project}-{i:02d}" for i in range(6)]
    for i, (job, (_, flags)) in enumerate(zip(jobs, cases, strict=True)):
        assert schema_problems(job, "KubeflowOrgV1PyTorchJob", "PyTorchJob") == []
        launch = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["args"]
        assert launch[-6:] == [*flags.split(), "--run-dir", f"runs/{project}/{project}/{i:02d}"]


def test_the_sweep_manifest_survives_the_heredoc_it_is_written_by():
    text = 'a $HOME `date` \\n "quoted" \\\\ $(echo x) end'
    script = f"cat <<EOF\n{renderer().heredoc_text(text)}\nEOF\n"
    assert subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout == text + "\n"


def test_a_bad_sweep_value_is_one_line_before_anything_is_written():
    out = REPO / "build" / "cluster" / f"{PROJECTS[0]}-1x1-sweep"
    shutil.rmtree(out, ignore_errors=True)
    result = run("make", "cluster-files", f"PROJECT={PROJECTS[0]}", f"REGISTRY={REGISTRY}", "SWEEP=--seed 1,2 --lr 1e-3,abc",
                 check=False)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: SWEEP/ARGS: argument --lr: 'abc' is not a number" in result.stderr and not out.exists()


def test_cluster_files_need_a_registry():
    result = run("make", "cluster-files", f"PROJECT={PROJECTS[0]}", "NODES=2", check=False)
    assert result.returncode == 2 and "error: set REGISTRY" in result.stderr


def renderer():
    return script_module(REPO / "scripts" / "cluster" / "render.py", "render")


# Enroot's image grammar before 4.0 (its docs: docker://[USER@][REGISTRY#]IMAGE[:TAG]); 4.x reads these forms the
# same way. Either asks the registry for https://REGISTRY/v2/IMAGE/manifests/TAG (TAG may be a digest).
ENROOT_3 = re.compile(r"(?:(?P<registry>[^#]+)#)?(?P<image>[a-z0-9/._-]+)(?::(?P<tag>[A-Za-z0-9._:-]+))?")


def enroot_manifest_url(reference: str) -> str:
    parts = ENROOT_3.fullmatch(reference)
    assert parts, f"enroot cannot read {reference}"
    registry = parts["registry"] or "registry-1.docker.io"
    image = parts["image"] if "/" in parts["image"] or parts["registry"] else f"library/{parts['image']}"
    return f"https://{registry}/v2/{image}/manifests/{parts['tag'] or 'latest'}"


@pytest.mark.parametrize(
    ("docker_reference", "pyxis_reference", "manifest_url"),
    [
        ("registry.example.org/team/torch-ngc:1a2b3c4", "registry.example.org#team/torch-ngc:1a2b3c4",
         "https://registry.example.org/v2/team/torch-ngc/manifests/1a2b3c4"),
        ("registry.example.org:5000/team/lightning:latest", "registry.example.org:5000#team/lightning:latest",
         "https://registry.example.org:5000/v2/team/lightning/manifests/latest"),
        ("ghcr.io/org/group/sub/torch-ngc:v1.0", "ghcr.io#org/group/sub/torch-ngc:v1.0",
         "https://ghcr.io/v2/org/group/sub/torch-ngc/manifests/v1.0"),
        (f"registry.example.org:5000/team/torch-ngc@{DIGEST}", f"registry.example.org:5000#team/torch-ngc:{DIGEST}",
         f"https://registry.example.org:5000/v2/team/torch-ngc/manifests/{DIGEST}"),
        (f"registry.example.org/a/b/torch-ngc:1a2b3c4@{DIGEST}", f"registry.example.org#a/b/torch-ngc:{DIGEST}",
         f"https://registry.example.org/v2/a/b/torch-ngc/manifests/{DIGEST}"),
        ("localhost:5000/torch-ngc", "localhost:5000#torch-ngc", "https://localhost:5000/v2/torch-ngc/manifests/latest"),
        ("nvcr.io/nvidia/pytorch:25.10-py3", "nvcr.io#nvidia/pytorch:25.10-py3",
         "https://nvcr.io/v2/nvidia/pytorch/manifests/25.10-py3"),
        ("team/torch-ngc:1a2b3c4", "team/torch-ngc:1a2b3c4",  # Docker Hub: no registry to name
         "https://registry-1.docker.io/v2/team/torch-ngc/manifests/1a2b3c4"),
    ],
)  # fmt: skip
def test_the_pyxis_image_reference_names_the_registry_the_way_every_enroot_reads_it(
    docker_reference, pyxis_reference, manifest_url
):
    assert renderer().enroot_reference(docker_reference) == pyxis_reference
    assert enroot_manifest_url(pyxis_reference) == manifest_url


def test_the_docker_form_is_what_enroot_3_misreads():
    """Why the renderer rewrites the reference: enroot 3 takes the registry for a Docker Hub namespace."""
    assert enroot_manifest_url("registry.example.org/team/torch-ngc:1a2b3c4") == (
        "https://registry-1.docker.io/v2/registry.example.org/team/torch-ngc/manifests/1a2b3c4"
    )


def test_the_rendered_script_hands_pyxis_the_enroot_form():
    text = (render(PROJECTS[0], 2, 1, "") / "slurm.sbatch").read_text()
    image = manifest.load(PROJECTS[0]).image
    assert re.search(rf"^ENROOT_IMAGE='?registry\.example\.org#team/{image}:[0-9a-f]+'?$", text, re.M), text
    assert 'pyxis) image_file+=.sqsh source="docker://$ENROOT_IMAGE" convert=(enroot import --output) ;;' in text  # enroot's
    assert 'apptainer) image_file+=.sif source="docker://$IMAGE" convert=(apptainer build) ;;' in text  # Docker's form


def test_cluster_files_pin_the_image_by_the_digest_make_push_recorded(tmp_path):
    image = manifest.load(PROJECTS[0]).image
    sha = run("git", "rev-parse", "--short", "HEAD").stdout.strip()
    pushed = tmp_path / "pushed-images.txt"
    pushed.write_text(
        f"{REGISTRY}/{image}:{sha} {REGISTRY}/{image}@sha256:{'f' * 64}\n{REGISTRY}/{image}:{sha} {REGISTRY}/{image}@{DIGEST}\n"
    )  # pushed again: the last one counts
    result = run("make", "cluster-files", f"PROJECT={PROJECTS[0]}", "NODES=2", f"REGISTRY={REGISTRY}", f"PUSHED={pushed}")
    assert f"image {REGISTRY}/{image}@{DIGEST}: pinned by digest" in result.stdout
    out = REPO / "build" / "cluster" / f"{PROJECTS[0]}-2x1"
    assert f"ENROOT_IMAGE='registry.example.org#team/{image}:{DIGEST}'" in (out / "slurm.sbatch").read_text()
    job = yaml.safe_load((out / "pytorchjob.yaml").read_text())
    (container,) = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    assert container["image"] == f"{REGISTRY}/{image}@{DIGEST}"
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["EUROSAT_IMAGE"] == container["image"] and env["PYTHONNOUSERSITE"] == "1"  # provenance.json records it
    unpinned = run("make", "cluster-files", f"PROJECT={PROJECTS[0]}", "NODES=2", f"REGISTRY={REGISTRY}",
                   f"PUSHED={tmp_path / 'none.txt'}")  # fmt: skip
    assert f"image {REGISTRY}/{image}:{sha}: pinned by tag" in unpinned.stdout


def test_a_sweep_over_models_checks_each_models_weights_once_before_rendering():
    result = run("make", "cluster-files", f"PROJECT={PROJECTS[0]}", "NODES=1", f"REGISTRY={REGISTRY}",
                 "SWEEP=--model tf_efficientnet_b5,resnet10t --seed 1,2")  # fmt: skip
    checked = [line.split(":")[1].strip() for line in result.stdout.splitlines() if line.startswith("weights: ")]
    assert checked == ["tf_efficientnet_b5", "resnet10t"]
    assert result.stdout.index("weights: resnet10t") < result.stdout.index("wrote one job array of 4 tasks")


def test_cluster_files_refuse_a_model_whose_weights_the_host_cannot_get(tmp_path):
    """The nodes may have no internet: weights the host cannot lock and cache are one line, before any file is written."""
    script = REPO / "build" / "cluster" / f"{PROJECTS[0]}-2x1" / "slurm.sbatch"
    before = script.stat().st_mtime_ns if script.exists() else None
    unlocked = {key: value for key, value in os.environ.items() if key != "LOCKED"}  # (CI sets it)
    result = run("make", "cluster-files", f"PROJECT={PROJECTS[0]}", "NODES=2", f"REGISTRY={REGISTRY}",
                 "ARGS=--model resnet18", f"MODEL_CACHE={tmp_path}", check=False, env=unlocked)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: --pretrained: cannot get ImageNet weights for resnet18 (LocalEntryNotFoundError")
    assert (script.stat().st_mtime_ns if script.exists() else None) == before


def test_a_registry_no_runtime_can_read_is_one_line():
    result = run("make", "cluster-files", f"PROJECT={PROJECTS[0]}", "NODES=2", "REGISTRY=https://Registry.example.org",
                 check=False)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: --image https://Registry.example.org/" in result.stderr and "not an image reference" in result.stderr


def test_cluster_files_hand_training_the_weights_cache(default_weights):
    """HF_HOME and TORCH_HOME point into the shared models/ folder that `make weights` fills, in every runtime, and
    torch.compile's Inductor and Triton caches live beside them. The host checks the locked file is there first."""
    project = manifest.default_project()
    result = run("make", "cluster-files", f"PROJECT={project}", "NODES=2", f"REGISTRY={REGISTRY}", "ARGS=--pretrained")
    assert "weights: tf_efficientnet_b5: " in result.stdout and f"(sha256 {default_weights['sha256']} checked)" in result.stdout
    out = REPO / "build" / "cluster" / f"{project}-2x1"
    job = yaml.safe_load((out / "pytorchjob.yaml").read_text())
    (container,) = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["HF_HOME"] == "/models/huggingface" and env["TORCH_HOME"] == "/models/torch"
    assert env["TORCHINDUCTOR_CACHE_DIR"] == "/models/inductor" and env["TRITON_CACHE_DIR"] == "/models/triton"
    assert {"name": "workspace", "mountPath": "/models", "subPath": "models", "readOnly": False} in container["volumeMounts"]

    text = (out / "slurm.sbatch").read_text()
    assert "MODEL_DIR=${MODEL_DIR:-$REPO_DIR/.cache/models}" in text
    assert '"HF_HOME=$models/huggingface" "TORCH_HOME=$models/torch"\n' in text
    caches = '"TORCHINDUCTOR_CACHE_DIR=$models/inductor" "TRITON_CACHE_DIR=$models/triton"'
    assert f"{caches} PYTHONNOUSERSITE=1 EUROSAT_RUNNER=slurm\n" in text
    assert text.count("$MODEL_DIR:/models") == 2  # pyxis and Apptainer mount it; CONTAINER_RUNTIME=none reads it in place
    assert "none) workdir=$REPO_DIR data=$DATA_DIR cache=$CACHE_DIR models=$MODEL_DIR ;;" in text


def image_environment() -> dict[str, str]:
    """The torch-ngc image's own environment as pyxis sees it: its Dockerfile's ENV of HOME and the caches."""
    text = (REPO / "images" / "torch-ngc" / "Dockerfile").read_text()
    instruction = re.search(r"^ENV (HOME=(?:.*\\\n)*.*)$", text, re.M).group(1)
    return dict(item.split("=", 1) for item in instruction.replace("\\\n", " ").split() if "=" in item)


PYXIS_SRUN = """#!/usr/bin/env python3
# srun with pyxis, as far as the script depends on it: --export passes the named variables of the job (ALL by default);
# in the container the image's environment comes first and keeps its value of a variable the image sets unless
# --container-env names it (NVIDIA/pyxis#124); the command is not run, the environment it would get is recorded.
import json, os, subprocess, sys
args, options = sys.argv[1:], {}
log = open(os.environ["LOG"], "a")
while args and args[0].startswith("--"):
    name, _, value = args.pop(0).partition("=")
    options[name] = value
    print(f"srun {name}" + (f"={value}" if value else ""), file=log)
if "--container-image" not in options:
    log.close()
    os.execvp(args[0], args)
exported = options.get("--export", "ALL")
job = dict(os.environ) if exported == "ALL" else {n: os.environ[n] for n in exported.split(",") if n in os.environ}
named = set(filter(None, options.get("--container-env", "").split(",")))
image = json.loads(os.environ["IMAGE_ENV"])
env = {**image, **{k: v for k, v in job.items() if k not in image or k in named}}
print("pyxis", options["--container-image"], json.dumps(env, sort_keys=True), file=log)
"""
STAND_INS = {  # what the script calls on a node, as the real commands behave for it (no Slurm, enroot or Apptainer)
    "scontrol": 'if [[ $1 == show ]]; then echo node1; else echo "scontrol $*" >>"$LOG"; fi',
    "enroot": 'echo "enroot $*" >>"$LOG"; sleep 1; echo squashfs >"$3"',
    "apptainer": """if [[ $1 == build ]]; then echo "apptainer $*" >>"$LOG"; sleep 1; echo sif >"$2"; exit 0; fi
echo "apptainer $*" >>"$LOG\"""",
    # sbatch of the submission: records its options, answers a job id as --parsable does
    "sbatch": """{ printf sbatch; printf ' %q' "$@"; echo; } >>"$LOG"; echo "$((100 + $(grep -c ^sbatch "$LOG")));cluster\"""",
}


def stand_ins(tmp_path: Path, runtime: str, **replaced: str) -> dict:
    """A bin folder of stand-ins first on PATH, and the environment a job of the rendered script starts with."""
    bin_dir, repo, log = tmp_path / "bin", tmp_path / "repo", tmp_path / "calls.log"
    bin_dir.mkdir()
    for name, body in {**STAND_INS, **replaced}.items():
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    (bin_dir / "srun").write_text(PYXIS_SRUN)
    (bin_dir / "srun").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(log), "REPO_DIR": str(repo),
            "CONTAINER_RUNTIME": runtime, "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "node1",
            "PYTHONNOUSERSITE": "", "IMAGE_ENV": json.dumps(image_environment()), "SUBMITTERS_OWN": "1"}  # fmt: skip


def rendered(sweep: str = "") -> tuple[Path, str]:
    """The Slurm script of the first project on one node, and its IMAGE."""
    project = PROJECTS[0]
    run("make", "cluster-files", f"PROJECT={project}", "NODES=1", f"REGISTRY={REGISTRY}", *([f"SWEEP={sweep}"] if sweep else []))
    script = REPO / "build" / "cluster" / f"{project}-1x1{'-sweep' if sweep else ''}" / "slurm.sbatch"
    return script, re.search(r"^IMAGE=(\S+)$", script.read_text(), re.M).group(1).strip("'")


@pytest.mark.parametrize("runtime", ["pyxis", "apptainer"])
def test_the_image_is_converted_once_for_every_start_and_array_task(runtime, tmp_path):
    """Two array tasks starting together and a requeued start: one conversion (the first, under a lock, into a name
    of its own renamed in one step), every start runs that file with training's environment and no other: under
    pyxis the job's caches and HOME win over the image's (--container-env) and nothing else of the submitter's gets
    in (--export), HOME a writable mount. Slurm, enroot and Apptainer are not installable here: the commands the
    script calls are stand-ins that record how they were called (pyxis's srun: what environment it would give)."""
    script, image = rendered("--seed 1,2")
    env = {**stand_ins(tmp_path, runtime), "SLURM_ARRAY_JOB_ID": "41"}
    repo, log = Path(env["REPO_DIR"]), Path(env["LOG"])

    def start(task: int, restart: int = 0) -> subprocess.Popen:
        settings = {"SLURM_JOB_ID": str(42 + task), "SLURM_ARRAY_TASK_ID": str(task), "SLURM_RESTART_COUNT": str(restart)}
        streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        return subprocess.Popen(["bash", script], env={**env, **settings}, **streams)

    together = [start(0), start(1)]
    outputs = [process.communicate(timeout=60) for process in together]
    requeued = start(0, restart=1)
    outputs.append(requeued.communicate(timeout=60))
    assert [process.returncode for process in [*together, requeued]] == [0, 0, 0], outputs
    calls = log.read_text().splitlines()
    suffix = "sqsh" if runtime == "pyxis" else "sif"
    (converted,) = (repo / ".cache" / "images").glob(f"*.{suffix}")
    assert not list(converted.parent.glob("*.partial*"))
    conversions = [call for call in calls if call.startswith(("enroot import", "apptainer build"))]
    home = repo / ".cache" / "home"
    if runtime == "pyxis":
        enroot_image = re.search(r"^ENROOT_IMAGE=(\S+)$", script.read_text(), re.M).group(1).strip("'")
        (conversion,) = conversions
        assert re.fullmatch(rf"enroot import --output {re.escape(str(converted))}\.partial\.\w{{6}} docker://{re.escape(enroot_image)}",
                            conversion)  # fmt: skip
        starts = [call.split(" ", 2) for call in calls if call.startswith("pyxis ")]
        assert [start[1] for start in starts] == [str(converted)] * 3
        for _, _, environment in starts:
            seen = json.loads(environment)
            assert {name: seen.get(name) for name in ("HOME", "XDG_CACHE_HOME", "TORCH_HOME", "TRITON_CACHE_DIR", "MPLCONFIGDIR",
                    "HF_HOME", "PYTHONNOUSERSITE", "EUROSAT_IMAGE", "EUROSAT_RUNNER")} == {  # fmt: skip
                "HOME": "/home/app", "XDG_CACHE_HOME": "/home/app/.cache", "TORCH_HOME": "/models/torch",
                "TRITON_CACHE_DIR": "/models/triton", "MPLCONFIGDIR": "/home/app/.cache/matplotlib",
                "HF_HOME": "/models/huggingface", "PYTHONNOUSERSITE": "1", "EUROSAT_IMAGE": image, "EUROSAT_RUNNER": "slurm",
            }  # fmt: skip
            assert "SUBMITTERS_OWN" not in seen and "LOG" not in seen  # the submitter's shell stays outside
        assert calls.count("srun --no-container-mount-home") == 3
        mounts = [call for call in calls if call.startswith("srun --container-mounts=")]
        assert mounts and all(call.endswith(f",{home}:/home/app") for call in mounts) and home.is_dir()
    else:
        assert len(conversions) == 1 and re.fullmatch(
            rf"apptainer build {re.escape(str(converted))}\.partial\.\w{{6}} docker://{re.escape(image)}", conversions[0]
        )
        starts = [call for call in calls if call.startswith("apptainer exec")]
        assert len(starts) == 3
        for call in starts:
            words = call.split()
            assert {"--cleanenv", "--writable-tmpfs", str(converted)} <= set(words)
            assert words[words.index("--home") + 1] == f"{home}:/home/app"
            environment = dict(item.split("=", 1) for item in words[words.index("--env") + 1].split(","))
            assert environment["PYTHONNOUSERSITE"] == "1" and environment["EUROSAT_IMAGE"] == image
            assert environment["TORCH_HOME"] == "/models/torch" and "HOME" not in environment  # (Apptainer's --home)
    assert sum("converting" in err for _, err in outputs) == 1
    warned = ["converts it in its GPU allocation" in err for _, err in outputs]  # sbatch'd directly: said
    assert warned[0] or warned[1] and not warned[2]  # (the tasks that started before it was converted)


@pytest.mark.parametrize("runtime", ["pyxis", "apptainer"])
def test_a_failed_conversion_fails_the_job_and_leaves_no_image(runtime, tmp_path):
    """enroot or Apptainer failing (a registry refusing the pull, a full disk) ends the job with one error line, no
    training started, no file that a later start would take for the image."""
    tool, failing = {
        "pyxis": ("enroot", 'echo "enroot $*" >>"$LOG"; echo half >"$3"; echo "[ERROR] 401 Unauthorized" >&2; exit 1'),
        "apptainer": ("apptainer", 'echo "apptainer $*" >>"$LOG"; echo half >"$2"; echo "FATAL: no space left" >&2; exit 255'),
    }[runtime]
    script, image = rendered()
    env = {**stand_ins(tmp_path, runtime, **{tool: failing}), "SLURM_JOB_ID": "7"}
    result = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    said = f"error: converting {image} for {runtime} failed (above): nothing was trained; fix it and submit again"
    assert said in result.stderr
    store = Path(env["REPO_DIR"]) / ".cache" / "images"
    assert [path.name for path in store.iterdir() if not path.name.endswith(".lock")] == []
    calls = Path(env["LOG"]).read_text()
    assert "pyxis " not in calls and "apptainer exec" not in calls


def test_submitting_converts_the_image_in_a_cpu_job_the_training_waits_for(tmp_path):
    """`bash slurm.sbatch [flags]` outside a job submits a CPU job that converts the image, then the training job
    depending on it, so that no GPU allocation waits for the conversion; once converted, it submits training alone."""
    script, image = rendered()
    env = stand_ins(tmp_path, "pyxis")
    log = Path(env["LOG"])
    result = subprocess.run(["bash", script, "--epochs", "1"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    convert, train = log.read_text().splitlines()
    words = shlex.split(convert)
    assert words[:2] == ["sbatch", "--parsable"] and "--export=ALL,EUROSAT_STEP=convert" in words
    assert not [word for word in words if "gpu" in word or "gres" in word]  # a CPU job
    assert words[-1] == f"--wrap=bash {script}"
    assert shlex.split(train) == ["sbatch", "--dependency=afterok:101", str(script), "--epochs", "1"]
    assert "submitted job 101: converts" in result.stdout

    step = subprocess.run(
        ["bash", script],
        env={**env, "EUROSAT_STEP": "convert", "SLURM_JOB_ID": "101"},
        capture_output=True,
        text=True,
        timeout=60,
    )  # (what the CPU job runs)
    assert step.returncode == 0, step.stderr
    assert len(list((Path(env["REPO_DIR"]) / ".cache" / "images").glob("*.sqsh"))) == 1
    log.write_text("")
    subprocess.run(["bash", script], env=env, check=True, capture_output=True, timeout=60)
    assert shlex.split(log.read_text()) == ["sbatch", str(script)]  # converted already: no CPU job


def test_make_reproduce_of_a_slurm_run_prints_and_submits_its_rerun_in_its_image(sample_dir, tmp_path):
    """A run a Slurm job made (its provenance: the runner, the nodes, the image by digest) reruns as a cluster job in
    that image: make reproduce prints the two commands; SUBMIT=1 runs them (sbatch is a stand-in that records)."""
    project = PROJECTS[0]
    out = tmp_path / "runs"
    main_in_process(project, "train", "--data", sample_dir, "--out", out, "--epochs", "1", *SMALL)
    run_dir = single_run_dir(out)
    provenance = json.loads((run_dir / "provenance.json").read_text())
    image = f"{REGISTRY}/{manifest.load(project).image}@{DIGEST}"
    provenance["runner"] = {"name": "slurm", "slurm": {"job_id": "77", "nodes": 1}}
    provenance["container"].update(in_container=True, image=image, digest=DIGEST)
    (run_dir / "provenance.json").write_text(json.dumps(provenance))
    printed = run("make", "reproduce", f"RUN={run_dir}")
    lines = printed.stdout.strip().splitlines()
    assert lines[0] == f"RUN={run_dir} ran as a slurm job in {image}; it reruns with:"
    render, submit = (shlex.split(line) for line in lines[1:3])
    assert render[:6] == ["make", "cluster-files", f"PROJECT={project}", "NODES=1", "GPUS=1", f"CLUSTER_IMAGE={image}"]
    flags = shlex.split(render[6].removeprefix("ARGS="))
    assert flags[flags.index("--epochs") + 1] == "1" and "--no-pretrained" in flags and "--data" not in flags
    assert submit == ["bash", f"build/cluster/{project}-1x1/slurm.sbatch"]

    env = stand_ins(tmp_path, "pyxis")
    submitted = run("make", "reproduce", f"RUN={run_dir}", "SUBMIT=1", env={**env, "REPO_DIR": str(REPO)})
    assert "submitted job 101: converts" in submitted.stdout
    convert, train = Path(env["LOG"]).read_text().splitlines()
    script = REPO / "build" / "cluster" / f"{project}-1x1" / "slurm.sbatch"
    assert shlex.split(train) == ["sbatch", "--dependency=afterok:101", str(script.relative_to(REPO))]
    text = script.read_text()
    assert f"\nIMAGE={image}\n" in text and "--no-pretrained" in text  # rendered for the recorded image and flags
