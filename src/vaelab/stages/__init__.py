"""Thin DVC stage entry points: ``python -m vaelab.stages.<stage>`` from the project root."""
