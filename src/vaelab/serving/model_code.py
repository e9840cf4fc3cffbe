"""The code MLflow logs as the served model (models from code): it names the model object."""

import mlflow

from vaelab.serving.service import VAEService

mlflow.models.set_model(VAEService())
