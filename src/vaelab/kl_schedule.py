"""KL weight schedules: beta as a function of training progress, applied every step."""

from __future__ import annotations

from vaelab.params import KLWeight


def beta_at(cfg: KLWeight, progress: float, total: float) -> float:
    """beta after ``progress`` units (epochs or steps, per ``cfg.unit``) of ``total``.

    constant: beta throughout. linear: 0 -> beta over ``warmup`` units, then beta
    (Bowman et al. 2016). cyclical: ``cycles`` equal cycles over ``total``; in each, beta
    rises linearly over the first ``ratio`` of the cycle and stays at beta for the rest
    (Fu et al. 2019).
    """
    if cfg.schedule == "constant":
        return cfg.beta
    if cfg.schedule == "linear":
        return cfg.beta * min(1.0, progress / cfg.warmup)
    period = total / cfg.cycles
    phase = (progress % period) / period if progress < total else 1.0
    return cfg.beta * min(1.0, phase / cfg.ratio)
