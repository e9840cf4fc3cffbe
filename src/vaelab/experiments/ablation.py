"""The trick ablation as evidence: every trick of the tutorial, one at a time and as its
recipe, at several seeds, with 95% intervals; resumable from the committed results.

    python -m vaelab.experiments.ablation [--only NAME,...] [--plan] [--report]

Every run is one DVC experiment on the ablation profile over the baseline (``baseline.yaml``
beside the results: params.yaml as it was when the ablation started):

    dvc exp run --temp evaluate -n abl-<variant>-s<seed> -S base.seed=<seed> -S <profile...>
        -S <variant's overrides...>

tagged ``sweep=ablation`` in MLflow. The variants are derived from the baseline: each group
(binarization, optimizer, KL weight, ...) lists its alternatives to the baseline's setting.
Adam, RMSprop and SGD each run at their own learning rate, tuned first on a grid at the
first seed by the best validation -ELBO (the test set is not looked at).

After each run its row is added (a run that fails, e.g. diverges, is recorded as failed with
its error and not retried) to ``docs/ablation/runs.csv`` and the summary, the table and
the figures are rendered again, so a partial table is true. A run is skipped when runs.csv
already holds a row with its params digest (the effective params every stage reads, seed
included): the committed CSV, not a local MLflow store, is what resumes a stopped job.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from vaelab.core.atomic import write_text
from vaelab.core.errors import VaelabError
from vaelab.core.params import Params, flatten, load_params
from vaelab.core.paths import ABLATION, Artifacts
from vaelab.experiments.effects import Summary, summarize

BASELINE_FILE = "baseline.yaml"  # the params the ablation started from
PROFILE = ("train.epochs=30",)  # over params.yaml; k and the test set stay the defaults
SEEDS = 3
BASELINE_SEEDS = 5
TUNING_SEED = 1
OK = "finished"
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
LEARNING_RATES = {  # the tuning grid of each optimizer
    "adam": (3e-4, 1e-3, 3e-3),
    "rmsprop": (1e-4, 3e-4, 1e-3),
    "sgd": (3e-3, 1e-2, 3e-2),
}
METRICS = (  # read from the experiment's results: (column, stage, key)
    ("test_nll", "evaluate", "nll"),
    ("test_neg_elbo", "evaluate", "neg_elbo"),
    ("rate", "evaluate", "kl"),
    ("distortion", "evaluate", "reconstruction"),
    ("active_units", "evaluate", "active_units"),
    ("recon_mse_grayscale", "evaluate", "recon_mse_grayscale"),
    ("frechet_distance", "evaluate", "frechet_distance"),
    ("val_neg_elbo", "train", "val_neg_elbo"),
    ("best_epoch", "train", "best_epoch"),
    ("epochs_run", "train", "epochs"),
    ("train_seconds", "train", "train_seconds"),
    ("evaluate_seconds", "evaluate", "seconds"),
)
COLUMNS = (
    "status",
    "variant",
    "seed",
    "target",
    "digest",
    "overrides",
    *(name for name, _, _ in METRICS),
    "wall_seconds",
    "commit",
    "cpu",
    "finished",
)
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
    decay = {
        "constant": ("no decay", ("train.lr_schedule.name=constant",)),
        "exponential": ("exponential decay", ("train.lr_schedule.name=exponential",)),
        "cosine": ("cosine decay", ("train.lr_schedule.name=cosine",)),
        "plateau": (
            "halved on a plateau",
            ("train.lr_schedule.name=constant", "train.reduce_on_plateau.enabled=true"),
        ),
    }
    current = "plateau" if t.reduce_on_plateau.enabled else t.lr_schedule.name
    off = () if current != "plateau" else ("train.reduce_on_plateau.enabled=false",)
    found += [
        Variant(f"lr-{name}", "learning-rate decay", label, (*off, *overrides))
        for name, (label, overrides) in decay.items()
        if name != current
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
    """What decides a run's results: every stage's params but the paths and tracking."""
    state = params.model_dump(include={"prepare", "train", "classifier", "evaluate"})
    state["seed"] = params.base.seed
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]


def read_rows(path: Path) -> list[dict[str, str]]:
    """The finished runs; a missing file is an empty ablation."""
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if rows and set(COLUMNS) - set(rows[0]):
        missing = ", ".join(sorted(set(COLUMNS) - set(rows[0])))
        raise VaelabError(f"{path} lacks column(s) {missing}: restore it with `git checkout`")
    return rows


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, out.getvalue())


def finished(rows: list[dict[str, str]], run: Run) -> dict[str, str] | None:
    """A row that answers ``run``: same digest, and evaluated if ``run`` needs evaluating."""
    for row in rows:
        if row["digest"] == run.digest and (run.target == "train" or row["target"] == "evaluate"):
            return row
    return None


def tuning_run(design: Design, name: str, rate: float) -> Run:
    overrides = optimizer_variant(name, rate).overrides
    return design.run(f"tune-{name}-{rate:g}", TUNING_SEED, overrides, "train")


def tuned_rates(design: Design, rows: list[dict[str, str]]) -> dict[str, float]:
    """Each optimizer's rate with the lowest validation -ELBO, once its whole grid ran."""
    out = {}
    for name, rates in LEARNING_RATES.items():
        scores = {}
        for rate in rates:
            row = finished(rows, tuning_run(design, name, rate))
            if row is None:
                break
            scores[rate] = float(row["val_neg_elbo"]) if row["status"] == OK else math.inf
        else:
            best = min(scores, key=scores.__getitem__)
            if math.isfinite(scores[best]):
                out[name] = best
    return out


def plan(design: Design, rows: list[dict[str, str]], only: set[str] | None = None) -> list[Run]:
    """Every run the ablation needs, in order: the baseline's seeds, then variant by variant
    in `RUN_ORDER` (all seeds of one before the next, so a partial table has whole rows), the
    optimizers' learning-rate tuning and, once it is done, their variants last."""
    chosen = variants(design.base, tuned_rates(design, rows))
    others = sorted(
        (v for v in chosen[1:] if v.group != "optimizer"), key=lambda v: RUN_ORDER.index(v.group)
    )
    tuning = [tuning_run(design, n, rate) for n, rates in LEARNING_RATES.items() for rate in rates]
    runs = [design.run("baseline", s, (), "evaluate") for s in design.seeds_of("baseline")]
    for variant in others:
        runs += [design.run(variant.name, s, variant.overrides, "evaluate")
                 for s in design.seeds_of(variant.name)]  # fmt: skip
    runs += tuning
    for variant in (v for v in chosen if v.group == "optimizer"):
        runs += [design.run(variant.name, s, variant.overrides, "evaluate")
                 for s in design.seeds_of(variant.name)]  # fmt: skip
    covered: dict[str, str] = {}  # digest -> target: Adam at the baseline's rate is its run
    unique = []
    for run in runs:
        if covered.get(run.digest) not in ("evaluate", run.target):
            unique.append(run)
            covered[run.digest] = run.target
    runs = unique
    if only:
        tune = "optimizer" in only or any(v.startswith("optimizer-") for v in only)
        runs = [r for r in runs if r.variant in only or (tune and r.variant.startswith("tune-"))]
    return runs


def summaries(design: Design, rows: list[dict[str, str]]) -> list[Summary]:
    """Each variant with at least one finished seed, rows matched by digest (a row of an
    earlier definition of the variant, e.g. another tuned rate, is not counted)."""
    by_digest = {r["digest"]: r for r in rows if r["target"] == "evaluate" and r["status"] == OK}

    def rows_of(variant: Variant) -> list[dict[str, str]]:
        seeds = design.seeds_of(variant.name)
        runs = [design.run(variant.name, s, variant.overrides, "evaluate") for s in seeds]
        return [by_digest[r.digest] for r in runs if r.digest in by_digest]

    chosen = variants(design.base, tuned_rates(design, rows))
    baseline = rows_of(chosen[0])
    evaluated = (name for name, stage, _ in METRICS if stage == "evaluate")
    columns = (*evaluated, "train_seconds", "best_epoch")
    found = []
    for variant in chosen:
        mine = rows_of(variant)
        if mine:
            found.append(
                summarize(
                    mine,
                    baseline,
                    columns,
                    name=variant.name,
                    group=variant.group,
                    label=variant.label,
                    metric=variant.metric,
                )
            )
    return found


def experiment_outputs(
    run: Run, reader: Callable[[str, str], str | None], paths: Artifacts
) -> dict[str, Any]:
    """The run's numbers from the results its experiment committed."""
    found: dict[str, Any] = {}
    files = {"train": paths.train_metrics, "evaluate": paths.evaluate_metrics}
    for stage in ("train", "evaluate") if run.target == "evaluate" else ("train",):
        text = reader(run.experiment, files[stage].as_posix())
        if text is None:
            raise VaelabError(f"experiment {run.experiment} has no {files[stage]}")
        values = json.loads(text)
        found |= {col: values[key] for col, where, key in METRICS if where == stage}
    return found


def last_line(text: str) -> str:
    """The last non-empty line of an error's output, as one CSV cell."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else "unknown error")[:300]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def git_commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def run_dvc_experiment(run: Run, settings: list[str]) -> None:
    from vaelab.experiments import sweep
    from vaelab.tracking.runs import SWEEP_ENV

    env = {**os.environ, SWEEP_ENV: "ablation"}
    subprocess.run(["dvc", "exp", "remove", run.experiment], capture_output=True, env=env)
    sweep.dvc(
        "exp",
        "run",
        "--temp",
        "-n",
        run.experiment,
        run.target,
        *[a for s in settings for a in ("-S", s)],
        env=env,
    )


def execute(
    design: Design,
    runs: list[Run],
    csv_path: Path,
    launch: Callable[[Run, list[str]], None],
    reader: Callable[[str, str], str | None],
    after: Callable[[list[dict[str, str]]], None],
) -> int:
    """Run what ``csv_path`` does not hold yet, adding each row as it finishes; returns how
    many ran. ``after`` gets the rows after each run (to render the report)."""
    rows = read_rows(csv_path)
    ran = 0
    for index, run in enumerate(runs, 1):
        if finished(rows, run):
            continue
        print(f"[{index}/{len(runs)}] {run.experiment} ({run.target}) ...", flush=True)
        started = time.perf_counter()
        try:
            launch(run, design.settings(run))
            status, outputs = OK, experiment_outputs(run, reader, Artifacts.of(design.base))
        except VaelabError as exc:  # recorded, so that a resumed job does not retry it forever
            status, outputs = f"failed: {last_line(str(exc))}", {}
            print(f"{run.experiment} {status}", file=sys.stderr)
        row = {
            "status": status,
            "variant": run.variant,
            "seed": run.seed,
            "target": run.target,
            "digest": run.digest,
            "overrides": " ".join(run.overrides),
            **outputs,
            "wall_seconds": round(time.perf_counter() - started, 1),
            "commit": git_commit(),
            "cpu": cpu_name(),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        rows = [*read_rows(csv_path), {c: str(row.get(c, "")) for c in COLUMNS}]
        write_rows(csv_path, rows)
        after(rows)
        ran += 1
    return ran


def header(design: Design, rows: list[dict[str, str]]) -> list[str]:
    """What the table is: profile, seeds, progress, time and machines."""
    base, runs = design.base, plan(design, rows)
    done = sum(finished(rows, run) is not None for run in runs)
    hours = sum(float(row["wall_seconds"]) for row in rows) / 3600
    cpus = "; ".join(sorted({row["cpu"] for row in rows})) or "none yet"
    return [
        f"**Profile**: the baseline is [{BASELINE_FILE}]({BASELINE_FILE}) (`params.yaml` when "
        f"the ablation started) with `{' '.join(design.profile)}`; seeds 1-"
        f"{design.baseline_seeds} for the baseline, 1-{design.seeds} for every variant "
        "(`base.seed` draws the validation split, the test set's binarization, the initial "
        "weights, the shuffling and the binarization and augmentation draws); test NLL with k = "
        f"{base.evaluate.importance_samples} on all {base.prepare.test_size:,} test images.",
        "",
        f"**Progress**: {done} of {len(runs)} runs done ({hours:.1f} h of wall time, "
        f"one run at a time) on {cpus}. Runs still missing leave a row short of seeds or "
        "absent; nothing shown is provisional beyond its seed count.",
        *failures(rows),
    ]


def failures(rows: list[dict[str, str]]) -> list[str]:
    failed = [f"`abl-{r['variant']}-s{r['seed']}` {r['status']}" for r in rows if r["status"] != OK]
    return (
        ["", "**Failed runs** (recorded, not retried): " + "; ".join(failed) + "."]
        if failed
        else []
    )


def tuning(design: Design, rows: list[dict[str, str]]) -> list[list[object]]:
    tuned = tuned_rates(design, rows)
    table = []
    for name, rates in LEARNING_RATES.items():
        for rate in rates:
            row = finished(rows, tuning_run(design, name, rate))
            score = float(row["val_neg_elbo"]) if row and row["val_neg_elbo"] else None
            table.append([name, rate, score, "yes" if tuned.get(name) == rate else ""])
    return table


def main(argv: list[str] | None = None) -> None:
    from vaelab.experiments import sweep
    from vaelab.experiments.ablation_report import render

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated variant names ('optimizer' = tuning)")
    parser.add_argument("--plan", action="store_true", help="list the runs and what is done")
    parser.add_argument("--report", action="store_true", help="render only, run nothing")
    parser.add_argument("--out", type=Path, default=ABLATION)
    parser.add_argument(
        "--profile",
        action="append",
        help=f"replaces the profile {' '.join(PROFILE)!r} (repeat; -S syntax), for a quick look",
    )
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--baseline-seeds", type=int, default=BASELINE_SEEDS)
    args = parser.parse_args(argv)
    current = load_params()
    fresh = not (args.out / BASELINE_FILE).exists()
    base = current if (args.plan or args.report) and fresh else snapshot(args.out, current)
    profile = tuple(args.profile or PROFILE)
    design = Design(base, profile, args.seeds, args.baseline_seeds, current)
    design.effective(TUNING_SEED, ())  # a bad --profile stops here, before anything runs
    csv_path = args.out / "runs.csv"
    only = set(args.only.split(",")) if args.only else None

    def report(rows: list[dict[str, str]]) -> None:
        render(args.out, summaries(design, rows), header(design, rows), tuning(design, rows))

    if args.plan:
        rows = read_rows(csv_path)
        for run in plan(design, rows, only):
            state = "done" if finished(rows, run) else "to run"
            print(f"{run.experiment:40s} {run.target:9s} {state:7s} {' '.join(run.overrides)}")
        return
    if not args.report:
        # Re-planned until nothing is left: the optimizer variants exist once tuning is done.
        reader = sweep.experiment_file
        while execute(
            design,
            plan(design, read_rows(csv_path), only),
            csv_path,
            run_dvc_experiment,
            reader,
            report,
        ):
            pass
    report(read_rows(csv_path))
    print(f"wrote {args.out / 'ablation.md'}", file=sys.stderr)


if __name__ == "__main__":
    from vaelab.core.cli import run_command

    run_command(main)
