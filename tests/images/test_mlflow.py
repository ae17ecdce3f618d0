"""make mlflow: the tracking server over runs/mlflow.db, serving runs tracked in a container (make train) and on
the host (RUNNER=local), each with its checkpoint, on 127.0.0.1 only."""

import urllib.parse
import urllib.request

import pytest
from engine import docker, make_settings, write_dotenv
from helpers import PROJECTS, SMALL, copy_repository, make_in_clone

from eurosat import manifest

mlflow = pytest.importorskip("mlflow", reason="mlflow is in requirements.lock: run make venv")
from mlflow import MlflowClient  # noqa: E402


@pytest.fixture
def repo_copy(tmp_path):
    root = copy_repository(tmp_path / "repo")
    yield root, write_dotenv(root, "MLFLOW_PORT")["MLFLOW_PORT"]
    make_in_clone(root, "down", *make_settings(), check=False)


def test_make_mlflow_serves_runs_tracked_in_containers_and_on_the_host(built_images, repo_copy, sample_dir):
    root, port = repo_copy
    in_container, on_host = manifest.default_project(), next(p for p in PROJECTS if p != manifest.default_project())
    args = " ".join([*SMALL, "--epochs", "1", "--tracking", "mlflow"])
    for project, runner in ((in_container, "docker"), (on_host, "local")):
        make_in_clone(root, "train", f"PROJECT={project}", f"RUNNER={runner}", f"DATA={sample_dir}", f"ARGS={args}",
                      *make_settings())  # fmt: skip
    assert (root / "runs" / "mlflow.db").is_file()

    result = make_in_clone(root, "mlflow", *make_settings())
    url = f"http://127.0.0.1:{port}/"
    assert f"MLflow: {url}" in result.stdout
    server = docker("ps", "--quiet", "--filter", "label=com.docker.compose.service=mlflow").stdout.split()
    assert docker("port", *server, "5000").stdout.startswith("127.0.0.1:")  # private to this machine by default
    assert "huey" not in docker("top", *server).stdout  # the tracking server alone, without MLflow's job runner

    client = MlflowClient(url.rstrip("/"))
    for project in (in_container, on_host):
        (run_dir,) = (root / "runs" / project).iterdir()
        experiment = client.get_experiment_by_name(project)
        (tracked,) = client.search_runs([experiment.experiment_id])
        assert tracked.info.run_name == run_dir.name and tracked.info.status == "FINISHED"
        assert "val_acc" in tracked.data.metrics
        # what the web UI downloads: the server reads the artifact from the folder it has mounted
        query = urllib.parse.urlencode({"path": "last.ckpt", "run_uuid": tracked.info.run_id})
        with urllib.request.urlopen(f"{url}get-artifact?{query}", timeout=30) as served:
            assert served.read() == (run_dir / "last.ckpt").read_bytes(), project
