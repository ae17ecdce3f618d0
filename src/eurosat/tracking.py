"""Experiment tracking with MLflow (`--tracking mlflow`), opt-in and offline-friendly.

The run's main process logs its settings as params, each epoch's record as metrics (step: the epoch), and
provenance.json, config.json, metrics and the checkpoints as artifacts. The default store is a local SQLite
database under runs/ (MLflow's file store is retired); `--tracking-uri http://...` (or $MLFLOW_TRACKING_URI) logs
to a tracking server instead. Tracking never stops training: a store that fails is one warning line, and the
run goes on untracked. A resumed run continues the MLflow run its provenance.json names.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

DEFAULT_URI = "sqlite:///runs/mlflow.db"  # relative to the working directory: the repository root or /workspace
ARTIFACTS = ("config.json", "provenance.json", "metrics.jsonl", "metrics.json", "last.ckpt", "best.ckpt")
ARTIFACTS += ("evaluation.json", "confusion_matrix.csv", "confusion_matrix.png")
ARTIFACTS += (
    "test_evaluation.json",
    "test_confusion_matrix.csv",
    "test_confusion_matrix.png",
)  # (when the split has a test part)
# A tracking server that is down must not hold training up for minutes of retries (MLflow's default is 7).
HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}  # fmt: skip


def default_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def local_store(uri: str) -> Path | None:
    """The database file of a local sqlite:/// store (its artifacts go beside it, in mlartifacts/)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///")).absolute()


def normalized(uri: str) -> str:
    """A local store by its absolute path, so that a resume from another directory finds the same one."""
    store = local_store(uri)
    return f"sqlite:///{store}" if store else uri


def previous_run_id(provenance: dict, uri: str) -> str | None:
    """The MLflow run of the newest start or resume recorded in provenance.json that tracked to the same store."""
    for record in reversed([provenance, *provenance.get("resumes", [])]):
        tracked = record.get("tracking", {}).get("mlflow", {})
        if tracked.get("tracking_uri") == uri and tracked.get("run_id"):
            return tracked["run_id"]
    return None


class MlflowTracker:
    """One MLflow run. Every call is guarded: the first failure prints one warning and turns the tracker off."""

    def __init__(self, uri: str):
        self.uri = normalized(uri)
        self.client = None
        self.run_id = self.experiment_id = None

    @property
    def active(self) -> bool:
        return self.run_id is not None

    def _guard(self, what: str, action) -> None:
        try:
            action()
        except Exception as exc:  # any failure of the store: tracking is never worth a lost training run
            reason = (str(exc).strip().splitlines() or [""])[0][:200]
            print(
                f"warning: MLflow tracking at {self.uri} failed to {what} ({exc.__class__.__name__}: {reason}); "
                "training goes on without tracking",
                file=sys.stderr,
                flush=True,
            )
            self.run_id = None

    def start(self, experiment: str, run_name: str, config: dict, resume_id: str | None = None) -> None:
        self._guard("start a run", lambda: self._start(experiment, run_name, config, resume_id))

    def _start(self, experiment: str, run_name: str, config: dict, resume_id: str | None) -> None:
        for key, value in HTTP_SETTINGS.items():
            os.environ.setdefault(key, value)
        from mlflow import MlflowClient
        from mlflow.entities import Param

        for name in ("mlflow", "alembic"):  # a new database's schema migrations log at INFO
            logging.getLogger(name).setLevel(logging.WARNING)

        store = local_store(self.uri)
        if store:
            store.parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(self.uri)
        if resume_id:
            self.client.update_run(resume_id, status="RUNNING")
            self.run_id = resume_id
            self.experiment_id = self.client.get_run(resume_id).info.experiment_id
            return
        found = self.client.get_experiment_by_name(experiment)
        if found:
            self.experiment_id = found.experiment_id
        else:  # a local store keeps artifacts beside its database; a server decides where it keeps them
            location = (store.parent / "mlartifacts").as_uri() if store else None
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        run = self.client.create_run(self.experiment_id, run_name=run_name)
        params = [Param(key, str(value)[:6000]) for key, value in sorted(config.items())]
        for first in range(0, len(params), 100):  # MLflow takes at most 100 params per call
            self.client.log_batch(run.info.run_id, params=params[first : first + 100])
        self.run_id = run.info.run_id

    def record(self) -> dict:
        """What provenance.json keeps about the tracking run."""
        return {"mlflow": {"tracking_uri": self.uri, "experiment_id": self.experiment_id, "run_id": self.run_id}}

    def log_epoch(self, record: dict, names) -> None:
        if self.active:
            self._guard("log metrics", lambda: self._log_epoch(record, names))

    def _log_epoch(self, record: dict, names) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(name, float(record[name]), stamp, record["epoch"]) for name in names if name in record]
        self.client.log_batch(self.run_id, metrics=metrics)

    def end(self, directory: Path | None, status: str) -> None:
        """Log the run directory's files, then mark the run FINISHED, KILLED (stopped by a signal) or FAILED."""
        if self.active:
            self._guard("log artifacts", lambda: self._end(directory, status))

    def _end(self, directory: Path | None, status: str) -> None:
        for name in ARTIFACTS:
            if directory and (directory / name).is_file():
                self.client.log_artifact(self.run_id, str(directory / name))
        self.client.set_terminated(self.run_id, status=status)

    def url(self) -> str:
        if self.uri.startswith(("http://", "https://")):
            return f"{self.uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return f"{self.uri} (see it with: make mlflow)"
