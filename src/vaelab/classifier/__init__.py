"""The small MNIST classifier whose features the Fréchet distance compares (its own stage)."""
