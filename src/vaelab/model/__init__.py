"""The VAE: its serializable pieces, the loss maths, and loading/sampling a saved model."""
