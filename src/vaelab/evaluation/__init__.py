"""Evaluation of a trained VAE: the IWAE bound, latent diagnostics, the Fréchet distance."""
