"""MLflow tracking: one run per training, logged by the main process only.

The tracking URI comes from ``MLFLOW_TRACKING_URI``, else ``tracking.uri`` in params, else
``sqlite:///mlflow.db`` in the working directory (the repo root under DVC); ``off`` logs nothing
(the registry stage then refuses to run). A remote server that
does not answer fails the run at start, not after an hour of training.
"""

from __future__ import annotations

import logging
import os
import subprocess
import urllib.error
import urllib.request
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from noisytail.config import flatten
from noisytail.errors import NoisytailError

DEFAULT_URI = "sqlite:///mlflow.db"


class TrackingUnavailable(NoisytailError, RuntimeError):
    """The MLflow tracking server cannot be reached."""


OFF = "off"  # tracking.uri (or MLFLOW_TRACKING_URI) "off": no run is logged (a GPU smoke check)


def tracking_uri(configured: str = "") -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or DEFAULT_URI


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Ask an HTTP tracking server for /health; file and sqlite stores need no check."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
            if response.status != 200:
                raise TrackingUnavailable(f"MLflow server {uri} answered {response.status}")
    except (urllib.error.URLError, OSError) as error:
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} is unreachable ({error}); start it, fix "
            f"MLFLOW_TRACKING_URI / tracking.uri, or unset them to log to {DEFAULT_URI}"
        ) from error


def git_commit(cwd: str | os.PathLike = ".") -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


class RunTracker:
    """A thin wrapper over one MLflow run; every method is a no-op when ``enabled`` is False."""

    def __init__(
        self,
        experiment: str,
        run_name: str,
        uri: str = "",
        enabled: bool = True,
        tags: Mapping[str, str] | None = None,
        resume_file: str | os.PathLike | None = None,
        *,
        nested: bool = False,
        record: bool = True,
    ) -> None:
        """``resume_file`` holds the run id: a run recorded there is continued (a resumed
        training), else a new run is started and, with ``record``, its id written there.
        ``nested`` opens the run as a child of the process's active run."""
        self.uri = tracking_uri(uri)
        self.enabled, self.run_id = enabled and self.uri != OFF, None
        if not self.enabled:
            return
        import mlflow  # heavy: imported only where a run is logged

        self.mlflow, self.client = mlflow, None
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its table-creation chatter
        check_reachable(self.uri)
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_experiment(experiment)
        self.client = mlflow.MlflowClient(self.uri)
        # A resumed training continues the MLflow run it started, rather than opening another.
        resume_file = Path(resume_file) if resume_file else None
        previous = resume_file.read_text().strip() if resume_file and resume_file.exists() else None
        self.run = mlflow.start_run(run_id=previous, run_name=None if previous else run_name,
                                    tags=dict(tags or {}), nested=nested)  # fmt: skip
        self.run_id = self.run.info.run_id
        if resume_file and record and not previous:
            resume_file.parent.mkdir(parents=True, exist_ok=True)
            resume_file.write_text(self.run_id)
        commit = git_commit()
        if commit:
            mlflow.set_tag("mlflow.source.git.commit", commit)

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.enabled and not self.mlflow.get_run(self.run_id).data.params:
            flat = [self.mlflow.entities.Param(k, str(v)[:500]) for k, v in flatten(params).items()]
            self.client.log_batch(self.run_id, params=flat)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.enabled:
            values = {k: float(v) for k, v in metrics.items()}
            self.client.log_batch(
                self.run_id, [self.mlflow.entities.Metric(k, v, now_ms(), step or 0)
                              for k, v in values.items()],
            )  # fmt: skip

    def log_dataset(self, table, source: str, name: str, digest: str, round_: str = "") -> None:
        """The training manifest as an MLflow dataset input (digest and DVC round as tags).
        Logged to the process's active run: call it before a nested run starts."""
        if self.enabled and not self.mlflow.get_run(self.run_id).inputs.dataset_inputs:
            # MLflow infers the table's schema (when logging it, not when building it) and hints
            # about integer columns: advice for model signatures, nothing a user can act on here
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer")
                warnings.filterwarnings("ignore", "The specified dataset source can be interpreted")
                dataset = self.mlflow.data.from_pandas(
                    table, source=source, name=name, digest=digest
                )
                tags = {"dvc_round": round_} if round_ else None
                self.mlflow.log_input(dataset, context="training", tags=tags)

    def log_artifact(self, path: str | os.PathLike, folder: str | None = None) -> None:
        if self.enabled and Path(path).exists():
            self.client.log_artifact(self.run_id, str(path), artifact_path=folder)

    def log_artifacts(self, folder: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Every file of ``folder`` (a gallery, say) under ``artifact_path``."""
        if self.enabled and Path(folder).is_dir():
            self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        if not self.enabled:
            return
        active = self.mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            self.mlflow.end_run(status=status)

    def register(self, name: str, artifact_path: str, tags: Mapping[str, str]) -> str | None:
        """A new version of registered model ``name`` from this run's ``artifact_path``; returns
        the version (the registry keeps every version; aliases, not stages, pick one)."""
        if not self.enabled:
            return None
        try:
            self.client.get_registered_model(name)
        except self.mlflow.exceptions.MlflowException:
            self.client.create_registered_model(name)
        source = f"{self.run.info.artifact_uri.rstrip('/')}/{artifact_path}"
        version = self.client.create_model_version(name, source, self.run_id, tags=dict(tags))
        return version.version

    def adopt(self, run_ids: Sequence[str]) -> None:
        """Nest existing runs under this one (MLflow's UI nests by the mlflow.parentRunId tag)."""
        for run_id in run_ids if self.enabled else ():
            self.client.set_tag(run_id, "mlflow.parentRunId", self.run_id)


def now_ms() -> int:
    import time

    return int(time.time() * 1000)


def log_child_run(name: str, params: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
    """A finished run nested under the process's active run (an Optuna trial, say)."""
    import mlflow

    if mlflow.active_run() is None:
        return
    with mlflow.start_run(run_name=name, nested=True):
        mlflow.log_params({k: str(v) for k, v in params.items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})


class GroupedChildRuns:
    """Child runs of the active run, grouped under one nested run per group: an Optuna study's
    run holding a run per trial."""

    def __init__(self) -> None:
        self.group: str | None = None

    def log(self, group: str, name: str, params: Mapping[str, Any],
            metrics: Mapping[str, float]) -> None:  # fmt: skip
        try:
            import mlflow
        except ImportError:  # tracking off on an image without MLflow
            return
        if mlflow.active_run() is None:
            return
        if group != self.group:
            self.close()
            mlflow.start_run(run_name=group, nested=True, tags={"kind": "optuna_study"})
            self.group = group
        log_child_run(name, params, metrics)

    def close(self) -> None:
        if self.group is not None:
            import mlflow

            mlflow.end_run()
            self.group = None
