"""make doctor and the no-silent-fallback rule.

The decisions are pure functions; they are fed outputs recorded on real hosts (tests/data/recorded_hosts.json
says where each came from), and the GPU-less paths also run for real on this machine."""

import json
import os
import re
import subprocess
import sys
import tomllib

import pytest
from helpers import PROJECTS, REPO, SMALL, main_in_process, run, run_project

from eurosat import doctor, gpu
from eurosat.errors import UserError
from eurosat.sample import write_sample

RECORDED = json.loads((REPO / "tests" / "data" / "recorded_hosts.json").read_text())
TABLE = tomllib.loads((REPO / "images" / "drivers.toml").read_text())
CU130_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]  # torch 2.14.1+cu130 and NGC 25.10 here


def recorded(name: str) -> str:
    return RECORDED[name]["output"]


def facts_from_arch_warning(text: str) -> dict:
    """torch.cuda's own warning about a GPU it has no kernels for, as the facts eurosat.gpu gathers."""
    gpu_match = re.search(r"^(.+) with CUDA capability sm_(\d+)(\d) is not compatible", text, re.MULTILINE)
    archs = re.search(r"supports CUDA capabilities (.+)\.$", text, re.MULTILINE)[1].split()
    name, capability = gpu_match[1], f"{gpu_match[2]}.{gpu_match[3]}"
    return {
        "torch": "1.13.1+cu117",
        "cuda": "11.7",
        "available": True,
        "arch_list": archs,
        "gpus": [{"name": name, "capability": capability}],
    }


# --- no silent fallback ----------------------------------------------------------------------------


def test_auto_is_the_cpu_where_no_gpu_is_meant_even_with_ngcs_nvidia_visible_devices_all():
    probe = json.loads(recorded("vm_probe_ngc_standin"))
    # NGC and nvidia/cuda images set NVIDIA_VISIBLE_DEVICES=all in their environment: a request, not a GPU
    evidence = gpu.gpu_evidence({"NVIDIA_VISIBLE_DEVICES": "all"}, ["null", "shm", "nvidiactl"])
    assert evidence == []
    assert gpu.choose_device("auto", probe, evidence) == "cpu"


def test_evidence_is_device_nodes_named_gpus_or_the_hosts_gpus():
    assert gpu.gpu_evidence({}, ["nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"]) == ["devices /dev/nvidia0 /dev/nvidia1"]
    assert gpu.gpu_evidence({"NVIDIA_VISIBLE_DEVICES": "GPU-5a2b"}, []) == ["NVIDIA_VISIBLE_DEVICES=GPU-5a2b"]
    assert gpu.gpu_evidence({"CUDA_VISIBLE_DEVICES": "0,1"}, []) == ["CUDA_VISIBLE_DEVICES=0,1"]
    assert gpu.gpu_evidence({gpu.HOST_GPUS_ENV: "2"}, []) == ["the host's 2 NVIDIA GPUs"]
    assert gpu.gpu_evidence({gpu.HOST_GPUS_ENV: "0"}, []) == []
    # an explicit CUDA_VISIBLE_DEVICES naming no GPU hides them on purpose: the CPU, without a word
    assert gpu.gpu_evidence({"CUDA_VISIBLE_DEVICES": ""}, ["nvidia0"]) == []
    assert gpu.gpu_evidence({"CUDA_VISIBLE_DEVICES": "-1", gpu.HOST_GPUS_ENV: "4"}, ["nvidia0"]) == []


def test_a_container_started_without_the_hosts_gpus_stops_auto():
    probe = json.loads(recorded("vm_probe_ngc_standin"))
    evidence = gpu.gpu_evidence({gpu.HOST_GPUS_ENV: "1"}, [])
    with pytest.raises(UserError) as error:
        gpu.choose_device("auto", probe, evidence)
    message = str(error.value)
    assert message.startswith("--device auto: NVIDIA GPUs are here (the host's 1 NVIDIA GPU) but torch cannot use them")
    assert "started without them (the engine has neither the nvidia runtime nor CDI)" in message
    assert "make doctor" in message and "--device cpu" in message and "\n" not in message


def test_a_driver_too_old_for_torchs_cuda_is_named_with_both_versions():
    error = recorded("torch_cu130_driver_too_old").removeprefix("RuntimeError: ").splitlines()[0]
    facts = {"torch": "2.9.1+cu130", "cuda": "13.0", "available": False, "error": error, "arch_list": CU130_ARCHS, "gpus": []}
    for choice in ("auto", "cuda"):
        with pytest.raises(UserError) as raised:
            gpu.choose_device(choice, facts, ["devices /dev/nvidia0"])
        assert "the NVIDIA driver supports CUDA up to 12.4, but torch 2.9.1+cu130 needs CUDA 13.0" in str(raised.value)
        assert str(raised.value).startswith(f"--device {choice}: ")


def test_a_gpu_the_installed_torch_has_no_kernels_for_is_named():
    facts = facts_from_arch_warning(recorded("torch_without_sm90"))
    with pytest.raises(UserError) as raised:
        gpu.choose_device("auto", facts, ["devices /dev/nvidia0"])
    message = str(raised.value)
    assert "GPU 0 (NVIDIA H100 80GB HBM3, compute capability 9.0) is not supported" in message
    assert "built for sm_37 sm_50 sm_60 sm_61 sm_70 sm_75 sm_80 sm_86" in message
    # the same GPU under NGC 25.10's (and this machine's cu130) torch is supported
    assert gpu.choose_device("auto", {**facts, "arch_list": CU130_ARCHS}, ["devices /dev/nvidia0"]) == "cuda"


@pytest.mark.parametrize(
    ("capability", "archs", "supported"),
    [
        ("9.0", CU130_ARCHS, True),
        ("8.9", CU130_ARCHS, True),  # sm_86 cubins run on 8.9 (same major, higher minor)
        ("12.1", CU130_ARCHS, True),
        ("7.0", CU130_ARCHS, False),  # V100 / TITAN V: dropped by CUDA 13 builds
        ("9.0", ["sm_80", "compute_80"], False),  # PTX does not count, as in torch's own check
        ("9.0", ["sm_90a"], True),
        ("9.1", ["sm_90a"], False),  # an arch-specific cubin runs on its own capability only
    ],
)
def test_capability_against_the_arch_list(capability, archs, supported):
    assert gpu.capability_supported(capability, archs) is supported


def test_cpu_only_torch_and_no_gpus_visible():
    facts = {"torch": "2.14.1+cpu", "cuda": None, "available": False, "error": None, "gpus": []}
    with pytest.raises(UserError, match=r"torch 2.14.1\+cpu is a CPU-only build"):
        gpu.choose_device("auto", facts, ["devices /dev/nvidia0"])
    facts = {"torch": "2.14.1+cu130", "cuda": "13.0", "available": False, "error": "No CUDA GPUs are available"}
    with pytest.raises(UserError, match="CUDA sees no GPU"):
        gpu.choose_device("cuda", facts, [])
    assert gpu.choose_device("cpu", facts, ["devices /dev/nvidia0"]) == "cpu"


# --- the real process on this machine (no GPU) ----------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("doctor") / "eurosat"
    write_sample(path, fraction=0.001)
    return path


@pytest.mark.parametrize("project", PROJECTS)
def test_device_cuda_without_a_gpu_is_one_line(project, data, tmp_path):
    result = main_in_process(
        project, "train", "--data", data, "--out", tmp_path, "--epochs", "1", *SMALL, "--device", "cuda", check=False
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: --device cuda: no usable CUDA GPU: no NVIDIA driver library (libcuda.so.1) is reachable from this "
        "process; run `make doctor` to see why, or pass --device cpu to train on the CPU anyway"
    ]
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.slow
def test_auto_stops_when_a_gpu_is_named_that_torch_cannot_use(data, tmp_path):
    project = PROJECTS[0]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0"}  # what Slurm sets for an allocated GPU
    result = run_project(project, "train", "--data", data, "--out", tmp_path, "--epochs", "1", *SMALL, check=False, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: --device auto: NVIDIA GPUs are here (CUDA_VISIBLE_DEVICES=0) but torch cannot use them: no NVIDIA driver "
        "library (libcuda.so.1) is reachable from this process; run `make doctor` to see why, or pass --device cpu to "
        "train on the CPU anyway"
    ]
    env["CUDA_VISIBLE_DEVICES"] = ""  # hidden on purpose: the CPU, as asked
    run_project(project, "train", "--data", data, "--out", tmp_path, "--epochs", "1", *SMALL, env=env)


def test_the_probe_prints_this_processes_facts():
    facts = json.loads(run(sys.executable, "-m", "eurosat.gpu").stdout)
    assert facts["available"] is False and facts["evidence"] == [] and facts["device_nodes"] == []
    assert facts["torch"].startswith("2.") and facts["shm_bytes"] > 0


# --- the engine, the driver, the table -------------------------------------------------------------------


def test_how_engines_hand_out_gpus():
    vm = doctor.parse_engine_info(recorded("vm_docker_info"))
    assert vm["engine"] == "docker" and vm["version"].startswith("20.10") and vm["root_dir"] == "/var/lib/docker"
    assert doctor.gpu_exposure(vm, []) is None
    desktop = doctor.parse_engine_info(recorded("docker_desktop_28_info"))
    # Docker Desktop lists the nvidia runtime on a VM without any NVIDIA GPU: compose.sh adds no GPU file there
    # unless nvidia-smi sees GPUs; its CDI device is a WebGPU, not nvidia.com/gpu
    assert doctor.gpu_exposure(desktop, []) == "nvidia"
    assert desktop["cdi_devices"] == ["docker.com/gpu=webgpu"]
    without_runtime = {**desktop, "runtimes": ["io.containerd.runc.v2", "runc"]}
    assert doctor.gpu_exposure(without_runtime, []) is None
    assert doctor.gpu_exposure({**without_runtime, "cdi_devices": ["nvidia.com/gpu=0", "nvidia.com/gpu=all"]}, []) == "cdi"


def test_cdi_spec_files_count_for_engines_that_do_not_list_devices(tmp_path):
    (tmp_path / "nvidia.yaml").write_text(recorded("dgx_a100_cdi_spec"))
    (tmp_path / "other.json").write_text('{"kind": "vendor.com/device"}')
    assert doctor.nvidia_cdi_specs([str(tmp_path), str(tmp_path / "missing")]) == [str(tmp_path / "nvidia.yaml")]
    docker_26 = {**doctor.parse_engine_info(recorded("vm_docker_info")), "cdi_spec_dirs": [str(tmp_path)]}
    assert doctor.gpu_exposure(docker_26, doctor.nvidia_cdi_specs([str(tmp_path)])) == "cdi"
    podman = doctor.parse_engine_info(
        json.dumps({"host": {"arch": "amd64"}, "store": {"graphRoot": "/x"}, "version": {"Version": "5.1.2"}})
    )
    assert podman["engine"] == "podman" and podman["cdi_spec_dirs"] == list(doctor.CDI_SPEC_DIRS)


def test_an_old_driver_on_workstation_gpus_blocks_cuda_13():
    gpus = doctor.parse_nvidia_smi(recorded("titan_v_rtx5880_nvidia_smi"))
    assert [(g["name"], g["compute_cap"], g["driver_version"]) for g in gpus] == [
        ("NVIDIA TITAN V", "7.0", "570.86.15"),
        ("NVIDIA RTX 5880 Ada Generation", "8.9", "570.86.15"),
    ]
    row = doctor.driver_row(gpus, "13.0", TABLE)
    assert row.status == "FAIL" and row.needed == "580 or newer (CUDA 13.0)" and "branch 580 or newer" in row.fix


def test_an_h100_on_r580_is_fine_and_on_r550_runs_through_forward_compatibility():
    gpus = doctor.parse_nvidia_smi(recorded("h100_nvidia_smi"))
    assert gpus[0]["name"] == "NVIDIA H100 80GB HBM3" and gpus[0]["memory.total"] == "81559 MiB"
    assert doctor.driver_row(gpus, "13.0", TABLE).status == "ok"
    r550 = [{**gpus[0], "driver_version": "550.163.01"}]
    row = doctor.driver_row(r550, "13.0", TABLE)
    assert row.status == "warn" and "forward compatibility (R550)" in row.fix
    workstation = [{"name": "NVIDIA RTX 5880 Ada Generation", "driver_version": "550.163.01"}]
    assert doctor.driver_row(workstation, "13.0", TABLE).status == "FAIL"
    assert doctor.driver_row(gpus, "12.9", TABLE).status == "warn"  # a CUDA without a row in drivers.toml


def test_every_root_base_has_a_cuda_row():
    from eurosat import manifest

    hierarchy = manifest.image_hierarchy()
    for image in hierarchy.order:
        base = doctor.root_base(image, hierarchy).split("@")[0]
        assert TABLE["cuda"][TABLE["bases"][base]["cuda"]]["minimum_branch"] == 580, base


def test_container_start_failures_are_explained():
    row = doctor.probe_failure_row(recorded("hook_cuda_too_new").splitlines()[-1])
    assert row.status == "FAIL" and row.found == "the NVIDIA hook refused to start it"
    row = doctor.probe_failure_row(recorded("no_gpu_driver_in_engine"))
    assert row.status == "FAIL" and "nvidia-ctk" in row.fix
    row = doctor.probe_failure_row(recorded("vm_memlock_refused"))
    assert row.found == "the engine may not raise memlock" and "MEMLOCK_LIMIT" in row.fix


def test_disk_blocks_only_what_still_has_to_be_built():
    building = ["nvcr.io/nvidia/pytorch:25.10-py3", "eurosat/torch-ngc"]
    assert doctor.disk_row(40.0, 28, "/var/lib/docker", building).status == "ok"
    assert doctor.disk_row(10.0, 28, "/var/lib/docker", building).status == "FAIL"
    assert doctor.disk_row(3.0, 5, "/var/lib/docker", []).status == "warn"  # the images are there already
    assert doctor.disk_row(None, 5, "/remote", []).found == "unknown: /remote is not on this host"


def test_compose_must_be_v2(tmp_path):
    assert doctor.compose_row([str(REPO / ".venv" / "bin" / "compose-v2")]).status == "ok"
    assert doctor.compose_row([str(tmp_path / ".venv" / "bin" / "compose-v2")]).found == "not installed yet"
    assert doctor.compose_row(["false"]).status == "FAIL"


def test_a_broken_drivers_table_is_one_line(tmp_path):
    broken = tmp_path / "drivers.toml"
    broken.write_text('[bases."nvcr.io/nvidia/pytorch:25.10-py3"\ncuda = "13.0"\n')
    with pytest.raises(UserError, match=r"drivers.toml: .*restore it with `git checkout"):
        doctor.read_drivers(broken)
    broken.write_text('[cuda."13.0"]\nminimum_branch = 580\n')
    with pytest.raises(UserError, match=r"no \[bases\] table"):
        doctor.read_drivers(broken)
    assert doctor.read_drivers() == TABLE


def test_buildkit_follows_the_client():
    assert doctor.buildkit_row("20.10.24+dfsg1", None).status == "ok"  # Debian's client: BuildKit built in
    assert doctor.buildkit_row("28.2.2", None).status == "FAIL"  # /usr/local/bin/docker here: no buildx
    assert doctor.buildkit_row("28.2.2", "github.com/docker/buildx v0.23.0").status == "ok"


def test_in_image_rows_on_a_cpu_host_and_on_a_gpu_host():
    probe = json.loads(recorded("vm_probe_ngc_standin"))
    rows = {row.check: row for row in doctor.image_rows(probe, host_gpus=0)}
    assert rows["torch.cuda"].status == "ok" and "CPU" in rows["torch.cuda"].found
    assert rows["/dev/shm"].found == "8.0 GB" and rows["memlock"].status == "ok"
    rows = {row.check: row for row in doctor.image_rows({**probe, "evidence": []}, host_gpus=1)}
    assert rows["torch.cuda"].status == "FAIL" and "started without them" in rows["torch.cuda"].fix
    assert rows["memlock"].status == "warn"  # NCCL wants it unlimited
    h100 = {
        **probe,
        "available": True,
        "error": None,
        "gpus": [{"name": "NVIDIA H100 80GB HBM3", "capability": "9.0"}],
        "nccl": "2.27.7",
    }
    rows = {row.check: row for row in doctor.image_rows({**h100, "memlock_bytes": None}, host_gpus=1)}
    assert [rows[name].status for name in ("torch.cuda", "GPU architecture", "NCCL", "memlock")] == ["ok"] * 4
    line, status = doctor.summary(list(rows.values()) + [doctor.Row("x", "FAIL", "y")])
    assert status == 1 and line.endswith("block `make train`: x")


# --- for real ------------------------------------------------------------------------------------------------


def test_a_client_that_reaches_no_engine_is_no_engine():
    """Debian's docker 20.10 client exits 0 when its engine is down, with the error inside the JSON (recorded)."""
    text = (
        '{"ServerErrors":["Cannot connect to the Docker daemon at unix:///nonexistent/docker.sock. Is the docker daemon '
        'running?"],"ClientInfo":{"Debug":false,"Context":"default","Plugins":[],"Warnings":null}}'
    )
    assert doctor.parse_engine_info(text) is None


def test_make_doctor_without_an_engine_says_so_and_exits_0():
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    result = subprocess.run(["make", "doctor"], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("RUNNER=local")
    gpus = [line for line in lines if line.startswith("GPUs ")]
    assert len(gpus) == 1 and "none on this host" in gpus[0] and "training runs on the CPU" in gpus[0]
    assert any(re.match(r"local venv +ok", line) for line in lines)
    assert any(re.match(r"torch\.cuda +ok .*CPU", line) for line in lines)
    assert lines[-1] == "make doctor: nothing blocks `make train`"


def replay(folder, name: str, recording: str):
    """An executable that prints what a real host's command printed (tests/data/recorded_hosts.json)."""
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(f"#!/bin/sh\ncat <<'RECORDED'\n{recorded(recording)}\nRECORDED\n")
    (folder / name).chmod(0o755)


@pytest.mark.parametrize(("engine", "added"), [("vm_docker_info", None), ("docker_desktop_28_info", "compose/gpu.nvidia.yaml")])
def test_compose_sh_on_a_host_with_two_gpus(tmp_path, engine, added):
    bin_dir = tmp_path / "bin"
    replay(bin_dir, "nvidia-smi", "titan_v_rtx5880_nvidia_smi_list")
    replay(bin_dir, "docker", engine)
    (bin_dir / "compose").write_text('#!/bin/sh\necho "HOST_GPUS=$HOST_GPUS $*"\n')
    (bin_dir / "compose").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "DOCKER": "docker",
        "COMPOSE": "compose",
        "PYTHON": sys.executable,
    }
    result = subprocess.run(["scripts/compose.sh", "run", "train"], cwd=REPO, capture_output=True, text=True, env=env)
    files = ["-f", "compose/compose.yaml", *(["-f", added] if added else [])]
    assert result.stdout.split() == ["HOST_GPUS=2", "--project-directory", ".", *files, "run", "train"]
    if added is None:  # the host has GPUs, the engine no way to hand them out: said, and the containers will stop
        assert "this host has 2 NVIDIA GPU(s) but docker hands them to containers neither" in result.stderr


def test_compose_sh_adds_no_gpu_file_on_a_host_without_gpus():
    env = {**os.environ, "COMPOSE": "echo"}
    result = subprocess.run(["scripts/compose.sh", "run", "train"], cwd=REPO, capture_output=True, text=True, env=env)
    assert result.stdout.split() == ["--project-directory", ".", "-f", "compose/compose.yaml", "run", "train"]


@pytest.mark.parametrize(
    ("how", "device"),
    [("nvidia", {"driver": "nvidia", "count": -1}), ("cdi", {"driver": "cdi", "device_ids": ["nvidia.com/gpu=all"]})],
)
def test_each_gpu_file_reserves_the_gpus_for_every_gpu_service(how, device):
    env = {
        **os.environ,
        "REPO_DIR": str(REPO),
        "DATA_DIR": str(REPO / "data"),
        "CACHE_DIR": str(REPO / ".cache"),
        "MODEL_DIR": str(REPO / ".cache"),
        "WEIGHTS_LOCK": str(REPO / "weights.lock"),
        "PROJECT": PROJECTS[0],
    }
    compose = str(REPO / ".venv" / "bin" / "compose-v2")
    files = ["-f", "compose/compose.yaml", "-f", f"compose/gpu.{how}.yaml"]
    result = run(compose, "--project-directory", ".", *files, "--profile", "*", "config", "--format", "json", env=env)
    services = json.loads(result.stdout)["services"]
    reserved = {name for name, service in services.items() if service.get("deploy")}
    assert reserved == {"train", "node0", "node1", "notebook"}
    for name in reserved:
        (request,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert {key: request[key] for key in device} == device and request["capabilities"] == ["gpu"]
