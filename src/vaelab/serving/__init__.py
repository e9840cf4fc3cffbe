"""The trained VAE behind HTTP: an MLflow pyfunc model (models from code, no pickle) that
reconstructs, encodes, decodes, samples and scores; see docs/serving.md."""
