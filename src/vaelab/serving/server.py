"""`vaelab serve`: MLflow's model server for the champion (or any model URI) on this machine."""

from __future__ import annotations

import os
import sys

from vaelab.core.errors import VaelabError, cause

HOST = "127.0.0.1"
PORT = 5001  # beside `vaelab ui` on 5000
# the command, run as `python -m` by this interpreter (a lone "models" reads as a path to the
# layout test)
MLFLOW_SERVE = "mlflow models serve".split()  # noqa: SIM905
TIMEOUT = 600  # seconds a request may take: the largest `score` the model accepts fits in it


def champion_uri(experiment: str) -> str:
    from vaelab.tracking.registry import ALIAS

    return f"models:/{experiment}@{ALIAS}"


def serve(
    model_uri: str, host: str = HOST, port: int = PORT, workers: int = 1, timeout: int = TIMEOUT
) -> None:
    """Check that ``model_uri`` resolves, then become `mlflow models serve` on it (this
    environment's packages, ``--env-manager local``)."""
    import mlflow.models
    from mlflow.exceptions import MlflowException

    from vaelab.tracking.store import connect

    uri = connect(require=True)
    try:
        mlflow.models.get_model_info(model_uri)
    except (MlflowException, OSError) as exc:
        raise VaelabError(
            f"cannot serve {model_uri} ({cause(exc)}): register a champion first "
            "(vaelab sweep ..., or vaelab register --run RUN_ID), or pass --model"
        ) from None
    command = [sys.executable, "-m", *MLFLOW_SERVE, "-m", model_uri,
               "--env-manager", "local", "-h", host, "-p", str(port), "-w", str(workers),
               "-t", str(timeout)]  # fmt: skip
    bin_dir = os.path.dirname(sys.executable)  # MLflow starts uvicorn from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])}  # fmt: skip
    print(f"serving {model_uri} on http://{host}:{port}/invocations (Ctrl-C stops it)")
    sys.stdout.flush()
    os.execve(sys.executable, command, env)
