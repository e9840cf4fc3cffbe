"""The one connection to the MLflow tracking store.

The default store is ``sqlite:///<project root>/mlflow.db`` with artifacts in
``<project root>/mlartifacts`` (see `vaelab.core.paths.project_root`: for a queued or
``--temp`` DVC experiment that is the user's repository, not the temporary copy), so
experiment runs land in the same store as a plain ``dvc repro``.
"""

from __future__ import annotations

import base64
import http.client
import os
import re
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

from vaelab.core.errors import VaelabError, redact
from vaelab.core.paths import MLFLOW_ARTIFACTS, MLFLOW_STORE, project_root

# A tracking server that hangs should cost seconds per call, not minutes of retries.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def tracking_uri(environ: Mapping[str, str] = os.environ, cwd: Path | None = None) -> str:
    """$MLFLOW_TRACKING_URI if set, else the absolute SQLite store at the project root."""
    uri = environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{project_root(environ, cwd) / MLFLOW_STORE}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # relative (e.g. what `mlflow run` passes on): anchor it at the project root, not
        # at a temporary experiment copy
        return f"sqlite:///{project_root(environ, cwd) / uri.removeprefix('sqlite:///')}"
    return uri


def without_credentials(uri: str) -> tuple[str, str | None, str]:
    """``uri`` without its user and password, and those two (None and "" where absent)."""
    parts = urlsplit(uri)
    try:
        parts.port  # noqa: B018 -- validates it
    except ValueError as exc:
        raise VaelabError(
            f"MLFLOW_TRACKING_URI={redact(uri)} is not a valid URL ({exc}): fix it, or unset it "
            "to use the local store"
        ) from None
    if parts.username is None:
        return uri, None, ""
    bare = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    return bare, unquote(parts.username), unquote(parts.password or "")


def check_reachable(
    uri: str, environ: Mapping[str, str] = os.environ, timeout: float = 5.0
) -> None:
    """Fail fast, before any work, when a tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{uri.rstrip('/')}/health")
    if environ.get("MLFLOW_TRACKING_USERNAME"):
        pair = (
            f"{environ['MLFLOW_TRACKING_USERNAME']}:{environ.get('MLFLOW_TRACKING_PASSWORD', '')}"
        )
        request.add_header("Authorization", "Basic " + base64.b64encode(pair.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise VaelabError(
            f"the MLflow tracking server at {redact(uri)} does not answer ({redact(str(exc))}). "
            "Start it (docs/scaling-out.md), fix MLFLOW_TRACKING_URI, or unset it to use the "
            "local store."
        ) from None


def connect(require: bool = False, environ: MutableMapping[str, str] = os.environ) -> str:
    """Point MLflow at the project's store with short HTTP limits; return the URI.

    Credentials in $MLFLOW_TRACKING_URI move to MLflow's own variables
    (MLFLOW_TRACKING_USERNAME/PASSWORD), so that no URL MLflow prints or reports holds them.
    ``require``: raise VaelabError now if a tracking server does not answer (commands that
    cannot do anything without it). Otherwise a dead server shows up as a failed call that
    the caller keeps in the outbox.
    """
    import mlflow

    uri, user, password = without_credentials(tracking_uri(environ))
    if user is not None:
        environ.update({"MLFLOW_TRACKING_URI": uri, "MLFLOW_TRACKING_USERNAME": user,
                        "MLFLOW_TRACKING_PASSWORD": password})  # fmt: skip
    for name, value in HTTP_LIMITS.items():
        environ.setdefault(name, value)
    if require:
        check_reachable(uri, environ)
    mlflow.set_tracking_uri(uri)
    return uri


def ensure_experiment(name: str) -> str:
    """The experiment's id, creating it (artifacts under the project root when local)."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if mlflow.get_tracking_uri().startswith("sqlite:"):
        # MLflow would default to ./mlartifacts of the current directory: in a temporary
        # experiment copy that is deleted afterwards.
        location = (project_root() / MLFLOW_ARTIFACTS).as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def check_run_id(run_id: object, where: str = "the delivery") -> str:
    """``run_id`` if it is an MLflow run id (32 hex digits), else VaelabError."""
    if not isinstance(run_id, str) or not re.fullmatch(r"[0-9a-f]{32}", run_id):
        raise VaelabError(f"{where}: {run_id!r} is not an MLflow run id (32 hex digits)")
    return run_id
