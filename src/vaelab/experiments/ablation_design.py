"""What the trick ablation runs: the variants of every trick, derived from the baseline's
own settings, the profile every run applies over the baseline, and the seeds.

Each variant is a set of `dvc exp run -S` overrides; `Design.settings` turns params.yaml as
it is now into one run's effective params, and `digest` names those params, so a finished run
is recognised whatever commit or machine resumes the ablation.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

import yaml

from vaelab.core.atomic import write_text
from vaelab.core.errors import VaelabError
from vaelab.core.params import Params, flatten, load_params

LATER_KEYS = {"train.architecture.upsample": "transpose"}  # added after the ablation began
BASELINE_FILE = "baseline.yaml"  # the params the ablation started from
PROFILE = ("train.epochs=30",)  # over params.yaml; k and the test set stay the defaults
SEEDS = 3
BASELINE_SEEDS = 5
TUNING_SEED = 1
RUN_ORDER = (  # groups most likely to change the default first; augmentation is known to cost
    "batch normalization",
    "KL weight",
    "learning-rate decay",
    "binarization",
    "input normalization",
    "early stopping",
    "decoder likelihood",
    "augmentation",
)
LEARNING_RATES = {  # the starting tuning grid of each optimizer, in half-decades
    "adam": (3e-4, 1e-3, 3e-3),
    "rmsprop": (1e-4, 3e-4, 1e-3),
    "sgd": (3e-3, 1e-2, 3e-2),
}
GRID_GROWTH = 2  # half-decades a grid may grow past each end
AUGMENT_OFF = {"rotation": 0, "shift": 0, "shear": 0, "zoom": 0, "horizontal_flip": False}
AUGMENT_TUTORIAL = {
    "rotation": 20,
    "shift": 0.2,
    "shear": 0.2,
    "zoom": 0.2,
    "horizontal_flip": True,
}


@dataclass(frozen=True)
class Variant:
    """One setting that differs from the baseline; its effect is judged on ``metric``."""

    name: str
    group: str
    label: str
    overrides: tuple[str, ...] = ()
    metric: str = "test_nll"


@dataclass(frozen=True)
class Run:
    variant: str
    seed: int
    target: str  # the DVC stage run up to: evaluate, or train for a tuning run
    overrides: tuple[str, ...]
    digest: str = field(compare=False)

    @property
    def experiment(self) -> str:
        return f"abl-{self.variant}-s{self.seed}"


@dataclass(frozen=True)
class Design:
    """The ablation's baseline, the profile every run applies over it, and the seeds.

    ``base`` is the snapshot the ablation started from (``baseline.yaml`` beside its CSV), so
    a later change of params.yaml neither invalidates finished runs nor leaks into new ones:
    each run's -S values turn ``current`` (params.yaml as it is now) into the baseline's run.
    """

    base: Params
    profile: tuple[str, ...] = PROFILE
    seeds: int = SEEDS
    baseline_seeds: int = BASELINE_SEEDS
    current: Params | None = None

    def effective(self, seed: int, overrides: Iterable[str]) -> Params:
        return self.base.replace(nested([*self.profile, f"base.seed={seed}", *overrides]))

    def settings(self, run: Run) -> list[str]:
        """The run's -S values for `dvc exp run`: every key where it differs from params.yaml."""
        want = flatten(self.effective(run.seed, run.overrides).model_dump())
        have = flatten((self.current or self.base).model_dump())
        return [f"{key}={dvc_value(value)}" for key, value in want.items() if have[key] != value]

    def run(self, variant: str, seed: int, overrides: tuple[str, ...], target: str) -> Run:
        return Run(variant, seed, target, overrides, digest(self.effective(seed, overrides)))

    def seeds_of(self, variant: str) -> range:
        return range(1, (self.baseline_seeds if variant == "baseline" else self.seeds) + 1)


def dvc_value(value: Any) -> str:
    """``value`` as `dvc exp run -S` reads it back (a plain word where that round-trips)."""
    plain = isinstance(value, str) and re.fullmatch(r"[\w./:+-]+", value)
    return value if plain and yaml.safe_load(value) == value else json.dumps(value)


def snapshot(out: Path, current: Params) -> Params:
    """The ablation's baseline: ``out``/baseline.yaml, written from ``current`` if absent."""
    path = out / BASELINE_FILE
    if not path.exists():
        write_text(path, yaml.safe_dump(current.model_dump(), sort_keys=False))
    return load_params(path)


def _plateau(patience: int) -> tuple[str, ...]:
    """A constant rate, halved (``reduce_on_plateau``) after ``patience`` epochs without a
    better validation loss."""
    return (
        "train.lr_schedule.name=constant",
        "train.reduce_on_plateau.enabled=true",
        f"train.reduce_on_plateau.patience={patience}",
    )


def _flag(value: bool) -> str:
    return str(value).lower()


def _augment(label: str, name: str, **ops: Any) -> Variant:
    settings = {**AUGMENT_OFF, **ops, "vertical_flip": False, "enabled": True}
    overrides = tuple(
        f"prepare.augment.{k}={_flag(v) if isinstance(v, bool) else v}" for k, v in settings.items()
    )
    return Variant(name, "augmentation", label, overrides)


def optimizer_variant(name: str, learning_rate: float) -> Variant:
    # RMSprop as the tutorials use it: no momentum (params.yaml's momentum is SGD's).
    momentum = ("train.optimizer.momentum=0.0",) if name == "rmsprop" else ()
    return Variant(
        f"optimizer-{name}",
        "optimizer",
        f"{name} at its tuned learning rate {learning_rate:g}",
        (
            f"train.optimizer.name={name}",
            f"train.optimizer.learning_rate={learning_rate}",
            *momentum,
        ),
    )


def variants(base: Params, tuned: dict[str, float]) -> list[Variant]:
    """The baseline, then every alternative to its setting of each trick. Optimizers appear
    once ``tuned`` (name -> learning rate) knows their rate."""
    t, arch, kl = base.train, base.train.architecture, base.train.kl
    found = [Variant("baseline", "baseline", "baseline.yaml as it is")]
    found.append(
        Variant(
            f"normalize-inputs-{_flag(not arch.normalize_inputs)}",
            "input normalization",
            "raw 0-255 inputs" if arch.normalize_inputs else "inputs scaled to [0, 1]",
            (f"train.architecture.normalize_inputs={_flag(not arch.normalize_inputs)}",),
        )
    )
    labels = {
        "none": "grayscale, no binarization",
        "static": "one fixed binarization",
        "dynamic": "a fresh binarization per batch",
    }
    found += [
        Variant(f"binarize-{mode}", "binarization", label, (f"prepare.binarize={mode}",))
        for mode, label in labels.items()
        if mode != base.prepare.binarize
    ]
    found += [
        _augment("rotation up to 20 degrees", "augment-rotation", rotation=20),
        _augment("shifts up to 0.2", "augment-shift", shift=0.2),
        _augment("shear up to 0.2", "augment-shear", shear=0.2),
        _augment("zoom up to 0.2", "augment-zoom", zoom=0.2),
        _augment("horizontal flips", "augment-flip", horizontal_flip=True),
        _augment("the tutorial's recipe: all five", "augment-recipe", **AUGMENT_TUTORIAL),
    ]
    found += [
        optimizer_variant(name, rate)
        for name, rate in tuned.items()
        if (name, rate) != (t.optimizer.name, t.optimizer.learning_rate)
    ]
    patience = t.reduce_on_plateau.patience
    decay = {
        "constant": ("no decay", ("train.lr_schedule.name=constant",)),
        "exponential": ("exponential decay", ("train.lr_schedule.name=exponential",)),
        "cosine": ("cosine decay", ("train.lr_schedule.name=cosine",)),
        "plateau": (f"halved on a plateau (patience {patience})", _plateau(patience)),
        # patience 3 may never fire in a short profile; 1 halves after any epoch that is not
        # an improvement
        "plateau-1": ("halved after any epoch without improvement", _plateau(1)),
    }
    current = "plateau" if t.reduce_on_plateau.enabled else t.lr_schedule.name
    same = {current} | ({"plateau-1"} if current == "plateau" and patience == 1 else set())
    off = () if current != "plateau" else ("train.reduce_on_plateau.enabled=false",)
    found += [
        Variant(
            f"lr-{name}",
            "learning-rate decay",
            label,
            overrides if name.startswith("plateau") else (*off, *overrides),
        )
        for name, (label, overrides) in decay.items()
        if name not in same
    ]
    weights = {
        "constant": (
            "constant weight, no warm-up",
            ("train.kl.schedule=constant", "train.kl.free_bits=0.0"),
        ),
        "linear": ("linear warm-up", ("train.kl.schedule=linear", "train.kl.free_bits=0.0")),
        "cyclical": (
            "cyclical (4 cycles)",
            ("train.kl.schedule=cyclical", "train.kl.free_bits=0.0"),
        ),
        "free-bits": (
            "free bits (0.25 nats per dimension), no warm-up",
            ("train.kl.schedule=constant", "train.kl.free_bits=0.25"),
        ),
    }
    current = "free-bits" if kl.free_bits else kl.schedule
    found += [
        Variant(f"kl-{name}", "KL weight", label, overrides)
        for name, (label, overrides) in weights.items()
        if name != current
    ]
    found += [
        Variant(f"beta-{beta:g}", "KL weight", f"beta = {beta:g}", (f"train.kl.beta={beta}",))
        for beta in (0.5, 1.0, 2.0, 4.0)
        if beta != kl.beta
    ]
    found.append(
        Variant(
            f"batch-norm-{_flag(not arch.batch_norm)}",
            "batch normalization",
            "batch normalization " + ("off" if arch.batch_norm else "on"),
            (f"train.architecture.batch_norm={_flag(not arch.batch_norm)}",),
        )
    )
    stopping = t.early_stopping.enabled
    found.append(
        Variant(
            f"early-stopping-{_flag(not stopping)}",
            "early stopping",
            "early stopping " + ("off (all epochs)" if stopping else "on"),
            (f"train.early_stopping.enabled={_flag(not stopping)}",),
        )
    )
    other = {"bernoulli": "gaussian", "gaussian": "bernoulli"}[t.likelihood.kind]
    found.append(
        Variant(
            f"likelihood-{other}",
            "decoder likelihood",
            "Gaussian decoder (the tutorial's summed MSE)" if other == "gaussian" else "Bernoulli",
            (f"train.likelihood.kind={other}",),
            # nats of a Gaussian density are not nats of binary images: judged on pixels
            metric="recon_mse_grayscale" if other == "gaussian" else "test_nll",
        )
    )
    return found


def nested(overrides: Iterable[str]) -> dict[str, Any]:
    """``["a.b=1", ...]`` (DVC's -S syntax, YAML values) as a nested dict."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise VaelabError(f"override {item!r} is not KEY=VALUE (as for `dvc exp run -S`)")
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def digest(params: Params) -> str:
    """What decides a run's results: every stage's params but the paths and tracking. A key
    of `LATER_KEYS` at its old behaviour is left out, so earlier runs keep their digest."""
    state = params.model_dump(include={"prepare", "train", "classifier", "evaluate"})
    for path, old in LATER_KEYS.items():
        *parents, key = path.split(".")
        node = reduce(dict.__getitem__, parents, state)
        if node[key] == old:
            del node[key]
    state["seed"] = params.base.seed
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]
