"""--tracking mlflow against a real MLflow tracking server on 127.0.0.1, the local default store, and a server
that is down (one warning line; training goes on)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import (
    MODEL,
    PROJECTS,
    SMALL,
    free_port,
    main_in_process,
    read_metrics,
    run_project,
    single_run_dir,
    wait_until_serving,
)

from eurosat.tracking import previous_run_id

# real processes and servers; make test-all runs them, on one pytest-xdist worker (one server for the module)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("tracking")]
mlflow = pytest.importorskip("mlflow", reason="mlflow is in requirements.lock: run make venv")
from mlflow import MlflowClient  # noqa: E402


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """The URI of an `mlflow server` process keeping its runs and artifacts in a temporary folder (started as make
    mlflow starts it: without MLflow's job runner)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    with open(root / "server.log", "w") as log:
        server = subprocess.Popen(
            [Path(sys.executable).with_name("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts"),
             "--workers", "1"],
            cwd=root, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(f"{uri}/health", server, "mlflow server")
    except AssertionError as problem:
        raise AssertionError(f"{problem}:\n{(root / 'server.log').read_text()[-3000:]}") from None
    yield uri
    server.terminate()
    server.wait(timeout=30)


def tracked_run_id(run_dir: Path) -> str:
    return json.loads((run_dir / "provenance.json").read_text())["tracking"]["mlflow"]["run_id"]


@pytest.mark.parametrize("project", PROJECTS)
def test_a_run_and_its_resume_log_to_one_mlflow_run_on_a_real_server(project, mlflow_server, sample_dir, tmp_path):
    out = tmp_path / "runs"
    common = ["--data", sample_dir, "--out", out, *SMALL, "--tracking", "mlflow", "--tracking-uri", mlflow_server]
    first = run_project(project, *common, "--epochs", "1")
    run_dir = single_run_dir(out)
    run_id = tracked_run_id(run_dir)
    assert f"tracking: MLflow run {run_id} at {mlflow_server}/#/experiments/" in first.stdout
    client = MlflowClient(mlflow_server)
    assert client.get_run(run_id).info.status == "FINISHED"

    run_project(project, "--resume", run_dir, "--epochs", "2", "--tracking", "mlflow", "--tracking-uri", mlflow_server)
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["resumes"][0]["tracking"]["mlflow"]["run_id"] == run_id  # the same MLflow run, continued

    tracked = client.get_run(run_id)
    assert tracked.info.status == "FINISHED" and tracked.info.run_name == run_dir.name
    assert client.get_experiment(tracked.info.experiment_id).name == project
    config = json.loads((run_dir / "config.json").read_text())
    assert tracked.data.params["model"] == MODEL and tracked.data.params["seed"] == str(config["seed"])
    metrics = read_metrics(run_dir)
    for name in ("loss", "acc", "val_loss", "val_acc", "images_per_s"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))
        assert [step for step, _ in history] == [r["epoch"] for r in metrics], name
        assert [value for _, value in history] == pytest.approx([r[name] for r in metrics]), name

    evaluation = json.loads((run_dir / "evaluation.json").read_text())  # the end of the resumed run, epoch 2
    for average in ("macro", "weighted"):  # each end (epoch 1, then the resume's epoch 2) logs its evaluation
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, f"{average}_f1"))
        assert [step for step, _ in history] == [1, 2]
        assert history[-1][1] == pytest.approx(evaluation["averages"][average]["f1"])

    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"provenance.json", "config.json", "metrics.jsonl", "last.ckpt", "best.ckpt"} <= artifacts
    assert {"evaluation.json", "confusion_matrix.csv", "confusion_matrix.png"} <= artifacts
    downloaded = Path(client.download_artifacts(run_id, "last.ckpt", str(tmp_path)))
    assert downloaded.read_bytes() == (run_dir / "last.ckpt").read_bytes()
    served = json.loads(Path(client.download_artifacts(run_id, "provenance.json", str(tmp_path))).read_text())
    assert served["resumes"][0]["tracking"]["mlflow"]["run_id"] == run_id


def test_a_tracking_server_that_is_down_is_one_warning_and_training_goes_on(sample_dir, tmp_path):
    out = tmp_path / "runs"
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    result = run_project(PROJECTS[0], "--data", sample_dir, "--out", out, *SMALL, "--epochs", "1", "--tracking", "mlflow",
                         "--tracking-uri", uri)  # fmt: skip
    warnings = [line for line in result.stderr.splitlines() if "MLflow" in line]
    assert len(warnings) == 1, result.stderr
    assert warnings[0].startswith(f"warning: MLflow tracking at {uri} failed to start a run")
    assert warnings[0].endswith("training goes on without tracking")
    run_dir = single_run_dir(out)
    assert len(read_metrics(run_dir)) == 1 and (run_dir / "last.ckpt").is_file()
    assert "tracking" not in json.loads((run_dir / "provenance.json").read_text())
    print(f"training with the tracking server down took {time.monotonic() - started:.1f} s")


def test_the_default_store_is_a_local_database_under_runs(sample_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project = PROJECTS[0]
    main_in_process(project, "--data", sample_dir, *SMALL, "--epochs", "1", "--tracking", "mlflow")
    run_dir = single_run_dir(tmp_path / "runs" / project)
    store = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["tracking"]["mlflow"]["tracking_uri"] == store
    assert previous_run_id(provenance, store) == tracked_run_id(run_dir)
    client = MlflowClient(store)
    tracked = client.get_run(tracked_run_id(run_dir))
    assert tracked.info.status == "FINISHED" and tracked.data.metrics["val_acc"] == read_metrics(run_dir)[0]["val_acc"]
    checkpoint = Path(tracked.info.artifact_uri.removeprefix("file://")) / "last.ckpt"
    assert checkpoint.read_bytes() == (run_dir / "last.ckpt").read_bytes()
    assert checkpoint.is_relative_to(tmp_path / "runs" / "mlartifacts")
