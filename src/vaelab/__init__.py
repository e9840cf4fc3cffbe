"""vaelab: reproducible, tracked VAE training on MNIST (DVC stages + MLflow runs).

Kept import-light on purpose: stages that do not train (fetch, prepare) must not pay
for importing TensorFlow.
"""
