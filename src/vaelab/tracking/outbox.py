"""MLflow logging that survives a tracking server going away, and never logs anything twice.

Everything a stage logs after training (per-epoch rows still unsent, summary metrics, tags,
artifacts, the serving model, the final status) is one `Delivery`, sent part by part. If a
part fails, the delivery is kept on disk under ``<project>/<base.paths.state>/outbox/``
(files copied, since DVC outputs change with the next run) together with the parts already
sent, and the stage finishes normally. Send what is kept once the server is back:

    vaelab outbox

A replay sends only the parts not yet sent. Metrics carry the delivery's own timestamp, so
even a part whose acknowledgement was lost arrives as the same values, not new ones.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vaelab.core.atomic import write_json
from vaelab.core.errors import VaelabError, cause
from vaelab.core.lock import exclusive
from vaelab.core.params import Params
from vaelab.core.paths import Artifacts
from vaelab.tracking.store import check_run_id

COMMAND = "vaelab outbox"
_BATCH = 1000  # MLflow's limit of metrics per request
_SENT, _DELIVERY = "sent.json", "delivery.json"
_PARTIAL, _RETIRED = ".partial-", ".retired-"  # entries being written, and sent ones


@dataclass
class Delivery:
    run_id: str
    metrics: dict[str, float] = field(default_factory=dict)
    rows: list[dict[str, float]] = field(default_factory=list)  # per-epoch, step = "epoch"
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: list[tuple[str, str]] = field(default_factory=list)  # (file, artifact dir)
    model: str | None = None  # a VAE .keras file, logged as the served pyfunc model
    served: dict[str, Any] = field(default_factory=dict)  # how (`served_model`'s JSON spec)
    status: str | None = None  # end the run with this status once the rest is logged
    timestamp: int = field(default_factory=lambda: int(time.time() * 1000))

    def describe(self) -> str:
        parts = [f"{len(self.rows)} epoch rows"] if self.rows else []
        parts += [f"{len(self.metrics)} metrics"] if self.metrics else []
        parts += [f"{len(self.artifacts)} artifacts"] if self.artifacts else []
        parts += ["the model"] if self.model else []
        return ", ".join(parts) or "nothing"


def parts(delivery: Delivery) -> list[tuple[str, Callable[[], None]]]:
    """(part id, send it) in sending order; the status comes last."""
    import mlflow
    from mlflow.entities import Metric

    client, run_id, now = mlflow.MlflowClient(), delivery.run_id, delivery.timestamp
    metrics = [
        Metric(k, float(v), now, int(row["epoch"]))
        for row in delivery.rows
        for k, v in row.items()
        if k != "epoch"
    ]
    metrics += [Metric(k, float(v), now, 0) for k, v in delivery.metrics.items()]
    found: list[tuple[str, Callable[[], None]]] = []
    for start in range(0, len(metrics), _BATCH):
        batch = metrics[start : start + _BATCH]
        found.append((f"metrics:{start}", lambda b=batch: client.log_batch(run_id, metrics=b)))
    for key, value in delivery.tags.items():
        found.append((f"tag:{key}", lambda k=key, v=value: client.set_tag(run_id, k, v)))
    for index, (path, folder) in enumerate(delivery.artifacts):
        found.append(
            (f"artifact:{index}", lambda p=path, f=folder: client.log_artifact(run_id, p, f))
        )
    if delivery.model:
        found.append(("model", lambda: _log_served_model(run_id, delivery)))
    if delivery.status:
        found.append(("status", lambda: client.set_terminated(run_id, delivery.status)))
    return found


def send(delivery: Delivery, sent: set[str], record: Callable[[str], None] = lambda part: None):
    """Send every part not in ``sent``, adding each to it (and calling ``record``) once the
    store has taken it; raises at the first part the store does not take."""
    for part, send_part in parts(delivery):
        if part not in sent:
            send_part()
            sent.add(part)
            record(part)


def _log_served_model(run_id: str, delivery: Delivery) -> None:
    """Log ``delivery.model`` as the pyfunc model its ``served`` spec describes: the keyword
    arguments of `mlflow.pyfunc.log_model`, the signature as a dict and the input example as
    (rows, params)."""
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature

    spec = dict(delivery.served)
    rows, settings = spec.pop("input_example")
    signature = ModelSignature.from_dict(spec.pop("signature"))
    with mlflow.start_run(run_id=run_id):
        mlflow.pyfunc.log_model(
            **spec,
            artifacts={"vae": delivery.model},
            signature=signature,
            input_example=(np.asarray(rows, dtype=np.float32), settings),
        )


def deliver(delivery: Delivery, outbox: Path) -> bool:
    """Send now; on failure keep what is unsent in the outbox and say so. True if all went."""
    sent: set[str] = set()
    try:
        send(delivery, sent)
        return True
    except BaseException as exc:  # any tracking failure, or Ctrl-C: keep the data
        kept = keep(delivery, outbox, sent)
        print(
            f"warning: could not log {delivery.describe()} to MLflow run "
            f"{delivery.run_id} ({cause(exc)}).\nKept in {kept}; send it "
            f"when the tracking server is back with: {COMMAND}",
            file=sys.stderr,
        )
        if not isinstance(exc, Exception):
            raise
        return False


def keep(delivery: Delivery, outbox: Path, sent: set[str]) -> Path:
    """Copy the delivery, its files and the parts already ``sent`` into a new entry of
    ``outbox``; return its folder. The entry appears complete or not at all: it is built
    under a partial name that carries its writer's process id, and renamed into place."""
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{check_run_id(delivery.run_id)}-{time.time_ns()}"
    partial = outbox / f"{_PARTIAL}{os.getpid()}-{name}"
    files = partial / "files"
    files.mkdir(parents=True)

    def stash(path: str) -> str:  # one folder per file keeps the artifact's own name
        folder = files / str(len(list(files.iterdir())))
        folder.mkdir()
        return str(Path(shutil.copy(path, folder)).relative_to(partial))  # the entry moves

    stored = replace(  # the same delivery, its files now the entry's own copies
        delivery,
        artifacts=[(stash(p), d) for p, d in delivery.artifacts],
        model=stash(delivery.model) if delivery.model else None,
    )
    write_json(partial / _DELIVERY, asdict(stored))
    write_json(partial / _SENT, sorted(sent))
    entry = outbox / name
    os.rename(partial, entry)
    return entry


def _inside(entry: Path, path: str) -> str:
    """``entry/path`` for a relative ``path`` that stays inside ``entry``."""
    full = (entry / path).resolve()
    if Path(path).is_absolute() or entry.resolve() not in full.parents:
        raise VaelabError(f"{entry / _DELIVERY}: {path!r} is not a file of this entry")
    return str(full)


def _load(entry: Path) -> tuple[Delivery, set[str]]:
    data: dict[str, Any] = json.loads((entry / _DELIVERY).read_text())
    check_run_id(data["run_id"], str(entry / _DELIVERY))
    data["artifacts"] = [(_inside(entry, path), folder) for path, folder in data["artifacts"]]
    data["model"] = _inside(entry, data["model"]) if data["model"] else None
    return Delivery(**data), set(json.loads((entry / _SENT).read_text()))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean(outbox: Path) -> list[Path]:
    """Remove the entries whose writer died before finishing them (returned) and the entries
    retired after they were sent."""
    removed = []
    for partial in outbox.glob(f"{_PARTIAL}*"):
        pid = partial.name.removeprefix(_PARTIAL).partition("-")[0]
        if not pid.isdigit() or not _alive(int(pid)):
            shutil.rmtree(partial)
            removed.append(partial)
    for retired in outbox.glob(f"{_RETIRED}*"):
        shutil.rmtree(retired)
    return removed


def flush(outbox: Path) -> tuple[int, int]:
    """Send every delivery kept in ``outbox``, oldest first; return (sent, still kept). An
    entry that cannot be read or sent is reported and kept; the others still go."""
    busy = f"another `{COMMAND}` (process {{pid}}) is sending {outbox}: wait for it, then retry"
    with exclusive(outbox, busy):
        for partial in clean(outbox):
            print(f"removed {partial.name}: its writer died before it was complete")
        entries = sorted(p for p in outbox.iterdir() if p.is_dir() and not p.name.startswith("."))
        done = 0
        for entry in entries:
            try:
                delivery, sent = _load(entry)
            except (OSError, ValueError, KeyError, TypeError, VaelabError) as exc:
                print(f"still kept: {entry.name} is damaged ({cause(exc)})", file=sys.stderr)
                continue

            def record(_part: str, entry: Path = entry, sent: set[str] = sent) -> None:
                write_json(entry / _SENT, sorted(sent))

            try:
                send(delivery, sent, record)
            except Exception as exc:  # still unreachable: keep it, report, try the rest
                print(f"still kept: {entry.name} ({cause(exc)})", file=sys.stderr)
                continue
            retired = entry.with_name(f"{_RETIRED}{entry.name}")
            os.rename(entry, retired)  # gone from the outbox in one step, then deleted
            shutil.rmtree(retired)
            done += 1
            print(f"sent {delivery.describe()} to run {delivery.run_id}")
    return done, len(entries) - done


def send_kept(params: Params) -> None:
    """Send the project's outbox; an error if anything is still kept."""
    from vaelab.tracking.store import connect

    connect(require=True)
    outbox = Artifacts.of(params).outbox()
    sent, kept = flush(outbox)
    print(f"outbox: {sent} sent, {kept} still kept ({outbox})")
    if kept:
        raise VaelabError(f"{kept} kept in {outbox} could not be sent: see above, then retry")
