"""The MLflow UI on 127.0.0.1, opened at this project's runs (``make ui``).

MLflow 3 lands on an experiment's GenAI overview (traces, token usage); the runs of a VAE
training are the "machine learning" view, which this link opens directly.
"""

from __future__ import annotations

import os
import sys

from vaelab.core.errors import VaelabError
from vaelab.core.params import Params

UI_HOST = "127.0.0.1"


def runs_url(base: str, experiment_id: str) -> str:
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def ui_port(text: str) -> int:
    """``text`` as a TCP port, or VaelabError naming VAELAB_UI_PORT."""
    if not text.strip().isdigit() or not 1 <= int(text) <= 65535:
        raise VaelabError(f"VAELAB_UI_PORT={text!r} is not a port: use a number from 1 to 65535")
    return int(text)


def open_ui(params: Params) -> None:
    """Print the link to the project's runs; start `mlflow ui` for a local store."""
    from vaelab.tracking.store import connect, ensure_experiment

    uri = connect(require=True)
    experiment_id = ensure_experiment(params.base.experiment)
    if uri.startswith(("http://", "https://")):  # a tracking server already serves its UI
        print(f"runs of experiment {params.base.experiment!r}: {runs_url(uri, experiment_id)}")
        return
    port = ui_port(os.environ.get("VAELAB_UI_PORT", "5000"))
    link = runs_url(f"http://{UI_HOST}:{port}", experiment_id)
    print(f"runs of experiment {params.base.experiment!r}: {link}\n(Ctrl-C stops the UI)")
    sys.stdout.flush()
    command = ["-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", UI_HOST]
    os.execv(sys.executable, [sys.executable, *command, "--port", str(port)])
