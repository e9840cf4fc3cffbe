"""Every file the pipeline reads or writes, named once, from ``base.paths`` of params.yaml.

dvc.yaml names the same outputs through ``${base.paths.*}``; a test checks that both agree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from vaelab.core.params import Params

SPLITS = ("train", "val", "test")
MLFLOW_STORE = "mlflow.db"  # the embedded SQLite tracking store, at the project root
MLFLOW_ARTIFACTS = "mlartifacts"
REPORTS = Path("reports")  # what commands over many runs write (compare, sweep)
ABLATION = Path("docs/ablation")  # the ablation's results, committed: what resumes it


def project_root(environ: Mapping[str, str] = os.environ, cwd: Path | None = None) -> Path:
    """$DVC_ROOT if set, else the nearest folder upwards holding dvc.yaml, else ``cwd``.

    For a queued or ``--temp`` experiment DVC points $DVC_ROOT at the user's repository, not
    at the temporary copy the stage runs in: what must outlive the run (the MLflow store, the
    outbox) goes there.
    """
    if environ.get("DVC_ROOT"):
        return Path(environ["DVC_ROOT"]).resolve()
    here = (cwd or Path.cwd()).resolve()
    return next((p for p in (here, *here.parents) if (p / "dvc.yaml").is_file()), here)


@dataclass(frozen=True)
class TrainingState:
    """One training's resume state: never a DVC output, since `dvc repro` deletes those."""

    folder: Path

    @property
    def best(self) -> Path:
        """The best checkpoint so far."""
        return self.folder / "best.keras"

    @property
    def backup(self) -> Path:
        """Keras' BackupAndRestore folder."""
        return self.folder / "backup"

    @property
    def run_id(self) -> Path:
        """The training's MLflow run id."""
        return self.folder / "mlflow_run_id"

    @property
    def history(self) -> Path:
        """The per-epoch history so far."""
        return self.folder / "history.csv"

    @property
    def fitted(self) -> Path:
        """Written once `fit` has returned: from then on only the outputs are left to write."""
        return self.folder / "fitted"


@dataclass(frozen=True)
class Artifacts:
    """Paths relative to the stage's working directory (the project root or DVC's copy)."""

    raw: Path
    prepared: Path
    models: Path
    results: Path
    state: Path

    @classmethod
    def of(cls, params: Params) -> Artifacts:
        p = params.base.paths
        return cls(Path(p.raw), Path(p.prepared), Path(p.models), Path(p.results), Path(p.state))

    def prepared_split(self, split: str) -> Path:
        return self.prepared / f"{split}.npz"

    @property
    def prepared_meta(self) -> Path:
        return self.prepared / "meta.json"

    @property
    def model(self) -> Path:
        return self.models / "model.keras"

    @property
    def classifier_model(self) -> Path:
        return self.models / "classifier.keras"

    @property
    def train_history(self) -> Path:
        return self.results / "train" / "history.csv"

    @property
    def train_metrics(self) -> Path:
        return self.results / "train" / "metrics.json"

    @property
    def train_run(self) -> Path:
        """The MLflow run id of the training, which evaluate and figures log into."""
        return self.results / "train" / "run.json"

    @property
    def classifier_metrics(self) -> Path:
        return self.results / "classifier" / "metrics.json"

    @property
    def evaluate_metrics(self) -> Path:
        return self.results / "evaluate" / "metrics.json"

    @property
    def latent_dims(self) -> Path:
        return self.results / "evaluate" / "latent_dims.csv"

    @property
    def figures(self) -> Path:
        return self.results / "figures"

    def training_state(self, key: str) -> TrainingState:
        """Resume state of the training identified by ``key``."""
        return TrainingState(self.state / f"train-{key}")

    def outbox(self, environ: Mapping[str, str] = os.environ) -> Path:
        """Unsent MLflow deliveries: in the user's repository even from an experiment copy."""
        return project_root(environ) / self.state / "outbox"
