"""Figures: plot helpers and the figures stage that renders a trained run."""
