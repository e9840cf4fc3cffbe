"""MLflow logging that survives a tracking server going away.

Everything a stage logs after training (per-epoch rows still unsent, summary metrics,
artifacts, the serving model) is one `Delivery`. If sending it fails, it is kept on disk under
``<project>/.vaelab/outbox/`` (files copied, since DVC outputs change with the next run) and
the stage finishes normally. Send what is kept once the server is back:

    python -m vaelab.outbox
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vaelab.atomic import write_json

COMMAND = "python -m vaelab.outbox"


@dataclass
class Delivery:
    run_id: str
    metrics: dict[str, float] = field(default_factory=dict)
    rows: list[dict[str, float]] = field(default_factory=list)  # per-epoch, step = "epoch"
    artifacts: list[tuple[str, str]] = field(default_factory=list)  # (file, artifact dir)
    model: str | None = None  # a VAE .keras file, logged as the serving MLflow model
    status: str | None = None  # end the run with this status once the rest is logged

    def describe(self) -> str:
        parts = [f"{len(self.rows)} epoch rows"] if self.rows else []
        parts += [f"{len(self.metrics)} metrics"] if self.metrics else []
        parts += [f"{len(self.artifacts)} artifacts"] if self.artifacts else []
        parts += ["the model"] if self.model else []
        return ", ".join(parts) or "nothing"


def outbox_dir() -> Path:
    from vaelab.tracking import project_root

    return project_root() / ".vaelab" / "outbox"


def send(delivery: Delivery) -> None:
    """Log everything in ``delivery`` into its run (raises if the store does not answer)."""
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    now = int(time.time() * 1000)
    metrics = [
        Metric(k, v, now, int(row["epoch"]))
        for row in delivery.rows
        for k, v in row.items()
        if k != "epoch"
    ]
    metrics += [Metric(k, float(v), now, 0) for k, v in delivery.metrics.items()]
    for start in range(0, len(metrics), 1000):  # MLflow's per-request limit
        client.log_batch(delivery.run_id, metrics=metrics[start : start + 1000])
    for path, artifact_dir in delivery.artifacts:
        client.log_artifact(delivery.run_id, path, artifact_dir)
    if delivery.model:
        _log_serving_model(delivery.run_id, delivery.model)
    if delivery.status:
        client.set_terminated(delivery.run_id, delivery.status)


def _log_serving_model(run_id: str, path: str) -> None:
    import keras
    import mlflow
    import numpy as np
    from mlflow.models import infer_signature

    from vaelab.model import IMAGE_SHAPE, reconstruction_model

    serving = reconstruction_model(keras.saving.load_model(path))
    example = np.zeros((1, *IMAGE_SHAPE), np.float32)
    signature = infer_signature(example, serving.predict(example, verbose=0))
    with mlflow.start_run(run_id=run_id):
        mlflow.keras.log_model(serving, name="model", signature=signature)


def deliver(delivery: Delivery) -> bool:
    """Send now; on failure keep it in the outbox and say so. True if it was sent."""
    try:
        send(delivery)
        return True
    except Exception as exc:  # any tracking failure: keep the data, finish the stage
        kept = keep(delivery)
        print(
            f"warning: could not log {delivery.describe()} to MLflow run "
            f"{delivery.run_id} ({type(exc).__name__}: {exc}).\nKept in {kept}; send it "
            f"when the tracking server is back with: {COMMAND}",
            file=sys.stderr,
        )
        return False


def keep(delivery: Delivery) -> Path:
    """Copy the delivery and its files into a new outbox entry; return its folder."""
    entry = outbox_dir() / f"{time.strftime('%Y%m%d-%H%M%S')}-{delivery.run_id}-{time.time_ns()}"
    files = entry / "files"
    files.mkdir(parents=True)

    def stash(path: str) -> str:  # one folder per file keeps the artifact's own name
        folder = files / str(len(list(files.iterdir())))
        folder.mkdir()
        return shutil.copy(path, folder)

    stored = Delivery(
        delivery.run_id,
        delivery.metrics,
        delivery.rows,
        [(stash(p), d) for p, d in delivery.artifacts],
        stash(delivery.model) if delivery.model else None,
        delivery.status,
    )
    write_json(entry / "delivery.json", asdict(stored))
    return entry


def _load(entry: Path) -> Delivery:
    data: dict[str, Any] = json.loads((entry / "delivery.json").read_text())
    data["artifacts"] = [tuple(a) for a in data["artifacts"]]
    return Delivery(**data)


def flush() -> tuple[int, int]:
    """Send every kept delivery, oldest first; return (sent, still kept)."""
    entries = sorted(p for p in outbox_dir().glob("*") if (p / "delivery.json").is_file())
    sent = 0
    for entry in entries:
        delivery = _load(entry)
        try:
            send(delivery)
        except Exception as exc:  # still unreachable: keep it, report, try the rest
            print(f"still kept: {entry.name} ({type(exc).__name__}: {exc})", file=sys.stderr)
            continue
        shutil.rmtree(entry)
        sent += 1
        print(f"sent {delivery.describe()} to run {delivery.run_id}")
    return sent, len(entries) - sent


def main() -> None:
    import mlflow

    import vaelab.model  # noqa: F401 - registers the VAE classes for loading kept models
    from vaelab import tracking

    uri = tracking.tracking_uri()
    tracking.check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    sent, kept = flush()
    print(f"outbox: {sent} sent, {kept} still kept ({outbox_dir()})")
    sys.exit(1 if kept else 0)


if __name__ == "__main__":
    from vaelab.stages import run_stage

    run_stage(lambda params: main())
