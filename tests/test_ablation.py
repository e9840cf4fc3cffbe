"""The trick ablation: its variants, the statistics, resuming from the committed CSV, and the
report (one real run of it through DVC is in the slow test at the end)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy import stats

from tests.conftest import commit_all, committed_params, run
from vaelab.core.errors import VaelabError
from vaelab.core.params import Params, load_params
from vaelab.experiments import ablation
from vaelab.experiments.ablation import execute, plan, read_rows
from vaelab.experiments.ablation_design import (
    BASELINE_FILE,
    LEARNING_RATES,
    Design,
    digest,
    nested,
    snapshot,
    variants,
)
from vaelab.experiments.ablation_report import forest, label_spots, near_baseline, render
from vaelab.experiments.effects import Interval, Summary, welch

TUNED = {"adam": 3e-3, "rmsprop": 3e-4, "sgd": 1e-2}


def ablation_base() -> Params:
    """What the ablation runs against: its baseline snapshot, not today's params.yaml."""
    return load_params(ablation.ABLATION / BASELINE_FILE)


def test_welch_interval_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 0.5, 3), rng.normal(0.0, 0.2, 5)
    ours = welch(list(a), list(b))
    theirs = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert ours.difference == pytest.approx(a.mean() - b.mean())
    assert (ours.low, ours.high) == pytest.approx((theirs.low, theirs.high))
    assert welch([1.0], [1.0, 2.0]) is None


@pytest.mark.parametrize(
    ("interval", "verdict"),
    [
        (Interval(-0.5, -0.9, -0.1), "helps"),
        (Interval(0.5, 0.1, 0.9), "hurts"),
        (Interval(-0.5, -1.1, 0.1), "no measurable difference"),
    ],
)
def test_a_verdict_needs_the_interval_to_exclude_zero(interval, verdict):
    assert interval.verdict == verdict


@pytest.mark.parametrize(
    ("kl", "alternatives"),
    [
        ({"schedule": "linear", "free_bits": 0.0}, {"kl-constant", "kl-cyclical", "kl-free-bits"}),
        ({"schedule": "constant", "free_bits": 0.25}, {"kl-constant", "kl-linear", "kl-cyclical"}),
    ],
)
def test_every_trick_of_the_tutorial_is_a_variant_and_none_is_the_baseline(kl, alternatives):
    design = Design(ablation_base().replace({"train": {"kl": kl}}))
    chosen = variants(design.base, TUNED)
    names = {v.name for v in chosen}
    assert {n for n in names if n.startswith("kl-")} == alternatives
    assert {
        "normalize-inputs-false", "binarize-none", "binarize-static", "augment-rotation",
        "augment-shift", "augment-shear", "augment-zoom", "augment-flip", "augment-recipe",
        "optimizer-adam", "optimizer-rmsprop", "optimizer-sgd", "lr-constant",
        "lr-exponential", "lr-plateau", "lr-plateau-1", "beta-0.5", "beta-2", "beta-4",
        "batch-norm-true", "early-stopping-false", "likelihood-gaussian",
    } <= names  # fmt: skip
    assert len(names) == len(chosen)
    digests = [digest(design.effective(1, v.overrides)) for v in chosen]
    assert len(set(digests)) == len(chosen)  # every variant changes something, differently
    recipe = design.effective(1, next(v for v in chosen if v.name == "augment-recipe").overrides)
    augment = recipe.prepare.augment
    assert (augment.rotation, augment.shift, augment.shear, augment.zoom) == (20, 0.2, 0.2, 0.2)
    assert augment.enabled and augment.horizontal_flip and not augment.vertical_flip
    rotation = design.effective(
        1, next(v for v in chosen if v.name == "augment-rotation").overrides
    )
    assert rotation.prepare.augment.shift == 0 and rotation.prepare.augment.zoom == 0
    gaussian = next(v for v in chosen if v.name == "likelihood-gaussian")
    assert gaussian.metric == "recon_mse_grayscale"


def test_variants_are_the_alternatives_to_the_baselines_setting():
    base = ablation_base().replace(
        {
            "prepare": {"binarize": "static"},
            "train": {
                "architecture": {"batch_norm": True},
                "kl": {"schedule": "cyclical", "beta": 2.0, "free_bits": 0.0},
                "lr_schedule": {"name": "constant"},
                "reduce_on_plateau": {"enabled": True},
            },
        }
    )
    names = {v.name for v in variants(base, {})}
    assert {"binarize-none", "binarize-dynamic", "batch-norm-false", "kl-linear"} <= names
    assert {"binarize-static", "batch-norm-true", "kl-cyclical", "beta-2", "lr-plateau"}.isdisjoint(
        names
    )
    chosen = {v.name: v for v in variants(base, {})}
    cosine = Design(base).effective(1, chosen["lr-cosine"].overrides)
    assert cosine.train.reduce_on_plateau.enabled is False
    quick = Design(base).effective(1, chosen["lr-plateau-1"].overrides).train.reduce_on_plateau
    assert quick.enabled and quick.patience == 1 and base.train.reduce_on_plateau.patience == 3
    patient = base.replace({"train": {"reduce_on_plateau": {"patience": 1}}})
    assert "lr-plateau-1" not in {v.name for v in variants(patient, {})}  # it is the baseline


def test_tuning_at_the_baselines_rate_is_the_baseline_run():
    design = Design(ablation_base())
    rate = design.base.train.optimizer.learning_rate
    assert (
        ablation.tuning_run(design, "adam", rate).digest
        == design.run("baseline", 1, (), "evaluate").digest
    )
    assert (
        ablation.tuning_run(design, "adam", rate * 3).digest
        != design.run("baseline", 1, (), "evaluate").digest
    )
    assert (
        design.run("baseline", 2, (), "evaluate").digest
        != design.run("baseline", 1, (), "evaluate").digest
    )
    planned = [r.variant for r in plan(design, [])]
    assert f"tune-adam-{rate:g}" not in planned and "tune-adam-0.003" in planned
    assert len(planned) == len({r.digest for r in plan(design, [])})


def _row(run, **values) -> dict[str, str]:
    row = dict.fromkeys(ablation.COLUMNS, "")
    row.update(
        status=ablation.OK,
        variant=run.variant,
        seed=str(run.seed),
        target=run.target,
        digest=run.digest,
    )
    row.update({k: str(v) for k, v in values.items()})
    return row


def _tuned(design, name, scores):
    return [
        _row(ablation.tuning_run(design, name, rate), val_neg_elbo=score)
        for rate, score in scores.items()
    ]


def test_tuned_rates_take_the_lowest_validation_loss_once_the_grid_is_complete():
    design = Design(ablation_base())
    rows = _tuned(
        design, "sgd", dict(zip(LEARNING_RATES["sgd"], (120.0, 101.5, 130.0), strict=True))
    )
    assert ablation.tuned_rates(design, rows) == {"sgd": LEARNING_RATES["sgd"][1]}
    assert ablation.tuned_rates(design, rows[:2]) == {}
    rows[2] = {**rows[2], "status": "failed: NaN loss", "val_neg_elbo": ""}  # diverged
    assert ablation.tuned_rates(design, rows) == {"sgd": LEARNING_RATES["sgd"][1]}
    planned = {r.variant for r in plan(design, rows)}
    assert "optimizer-sgd" in planned and "optimizer-rmsprop" not in planned


def test_the_grid_grows_past_a_winning_end_until_a_neighbour_is_worse():
    design = Design(ablation_base())
    rows = _tuned(design, "sgd", {0.003: 110.0, 0.01: 105.0, 0.03: 101.0})
    assert ablation.learning_rate_grid(design, rows, "sgd") == ([0.003, 0.01, 0.03, 0.1], None)
    assert "tune-sgd-0.1" in {r.variant for r in plan(design, rows)}
    grown = rows + _tuned(design, "sgd", {0.1: 104.0})
    assert ablation.tuned_rates(design, grown) == {"sgd": 0.03}
    low = _tuned(design, "sgd", {0.003: 90.0, 0.01: 105.0, 0.03: 120.0, 0.001: 80.0, 0.0003: 70.0})
    assert ablation.learning_rate_grid(design, low, "sgd") == (
        [0.0003, 0.001, 0.003, 0.01, 0.03],
        0.0003,
    )  # GRID_GROWTH half-decades below the start, and no further
    assert ablation.tuning(design, low)[:2] == [
        ["adam", 0.0003, None, ""],
        ["adam", 0.001, None, ""],
    ] and ["sgd", 0.0003, 70.0, "yes"] in ablation.tuning(design, low)
    low[1] = {**low[1], "status": "failed: training diverged: NaN at batch 15. Lower the rate."}
    assert ["sgd", 0.01, "failed: training diverged: NaN at batch 15", ""] in ablation.tuning(
        design, low
    )


def _fake_results(run, settings) -> dict[str, str]:
    """What a finished experiment committed, made up from its settings."""
    nll = 90.0 + 0.1 * run.seed + (1.0 if "train.kl.beta=2.0" in settings else 0.0)
    evaluate = {"nll": nll, "neg_elbo": nll + 5, "kl": 25.0, "reconstruction": nll - 20,
                "active_units": 30, "recon_mse_grayscale": 0.006, "frechet_distance": 30.0,
                "seconds": 90.0}  # fmt: skip
    train = {"val_neg_elbo": nll + 6, "best_epoch": 30, "epochs": 30, "train_seconds": 170.0}
    return {"results/evaluate/metrics.json": json.dumps(evaluate),
            "results/train/metrics.json": json.dumps(train)}  # fmt: skip


def test_a_stopped_ablation_resumes_from_the_csv_and_reports_what_it_has(tmp_path):
    design = Design(ablation_base(), ("train.epochs=30",), seeds=2, baseline_seeds=3)
    runs = plan(design, [], {"baseline", "beta-2"})
    assert [r.experiment for r in runs] == [
        "abl-baseline-s1", "abl-baseline-s2", "abl-baseline-s3", "abl-beta-2-s1", "abl-beta-2-s2",
    ]  # fmt: skip
    committed: dict[str, dict[str, str]] = {}
    launched: list[str] = []

    def launch(run, settings):
        if len(launched) == 3:
            raise KeyboardInterrupt  # Ctrl-C during the fourth run
        launched.append(run.experiment)
        committed[run.experiment] = _fake_results(run, settings)

    def reader(name, path):
        return committed.get(name, {}).get(path)

    csv_path = tmp_path / "runs.csv"
    with pytest.raises(KeyboardInterrupt):
        execute(design, runs, csv_path, launch, reader, lambda rows: None)
    assert [row["variant"] for row in read_rows(csv_path)] == ["baseline"] * 3
    launched.clear()
    committed.clear()  # a new machine: only the CSV came along
    assert execute(design, runs, csv_path, launch, reader, lambda rows: None) == 2
    assert launched == ["abl-beta-2-s1", "abl-beta-2-s2"]
    assert execute(design, runs, csv_path, launch, reader, lambda rows: None) == 0

    rows = read_rows(csv_path)
    found = {s.name: s for s in ablation.summaries(design, rows)}
    beta = found["beta-2"]
    assert beta.n == 2 and found["baseline"].n == 3
    assert beta.means["test_nll"] == pytest.approx(91.15)
    assert beta.interval.difference == pytest.approx(0.95)  # 91.15 - mean(90.1, 90.2, 90.3)
    assert beta.verdict == "hurts"
    written = render(tmp_path, list(found.values()), ablation.header(design, rows), [])
    text = (tmp_path / "ablation.md").read_text()
    assert "**hurts**: KL weight: beta = 2." in text and "+0.95 [" in text
    for path in written:
        assert path.stat().st_size > 0
    assert (tmp_path / "forest.png").read_bytes()[:4] == b"\x89PNG"


def test_a_csv_from_something_else_is_refused(tmp_path):
    (tmp_path / "runs.csv").write_text("a,b\n1,2\n")
    with pytest.raises(VaelabError, match="lacks column"):
        read_rows(tmp_path / "runs.csv")


def test_a_malformed_override_is_named():
    with pytest.raises(VaelabError, match=r"train\.epochs"):
        nested(["train.epochs"])


@pytest.mark.slow
def test_the_ablation_survives_sigkill_and_resumes_from_its_csv(project, real_mirror):
    env = {
        **os.environ,
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
        "VAELAB_MNIST_MIRROR": str(real_mirror),
        "DVC_NO_ANALYTICS": "1",
    }
    commit_all(project, "baseline")
    command = [
        sys.executable, "-m", "vaelab.experiments.ablation", "--only", "baseline,beta-2",
        "--seeds", "1", "--baseline-seeds", "2", "--profile", "train.epochs=2",
    ]  # fmt: skip
    csv_path = project / "docs" / "ablation" / "runs.csv"
    job = subprocess.Popen(command, cwd=project, env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 600
    while not (csv_path.exists() and len(read_rows(csv_path)) == 1):
        assert job.poll() is None and time.monotonic() < deadline, "no first row"
        time.sleep(0.5)
    time.sleep(5)  # into the second run's DVC experiment
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    first = read_rows(csv_path)
    assert len(first) == 1 and first[0]["variant"] == "baseline" and first[0]["seed"] == "1"

    out = run(command, project, env)
    assert "abl-baseline-s1" not in out and "abl-baseline-s2" in out and "abl-beta-2-s1" in out
    rows = read_rows(csv_path)
    assert rows[0] == first[0]
    assert [(r["variant"], r["seed"]) for r in rows] == [("baseline", "1"), ("baseline", "2"),
                                                         ("beta-2", "1")]  # fmt: skip
    for row in rows:
        assert np.isfinite(float(row["test_nll"])) and row["epochs_run"] == "2"
    table = (project / "docs/ablation/ablation.md").read_text()
    nll = np.mean([float(r["test_nll"]) for r in rows[:2]])
    assert f"| baseline | baseline.yaml as it is | 2 | {nll:.2f} ± " in table
    assert "| KL weight | beta = 2 | 1 |" in table and "too few seeds yet" in table
    assert (project / "docs/ablation/rate_distortion.png").read_bytes()[:4] == b"\x89PNG"
    shown = run(["dvc", "exp", "show", "--csv"], project)
    assert "abl-beta-2-s1" in shown
    assert "Running" not in run(["dvc", "queue", "status"], project)


def test_runs_keep_the_snapshot_baseline_when_params_yaml_changes_later(tmp_path):
    committed = committed_params()
    base = snapshot(tmp_path, committed)
    assert base == committed and (tmp_path / "baseline.yaml").exists()
    later = committed.replace(
        {"train": {"epochs": 7, "architecture": {"hidden": [64], "activation": "elu"}}}
    )
    assert snapshot(tmp_path, later) == committed  # the snapshot is not overwritten
    before = Design(base, seeds=1, baseline_seeds=1)
    after = Design(base, seeds=1, baseline_seeds=1, current=later)
    for old, new in zip(plan(before, []), plan(after, []), strict=True):
        assert old.digest == new.digest
        # the -S values turn today's params.yaml into exactly the baseline's run
        made = later.replace(nested(after.settings(new)))
        assert made == after.effective(new.seed, new.overrides)
    settings = after.settings(after.run("baseline", 1, (), "evaluate"))
    assert "train.architecture.hidden=[512, 512]" in settings and "train.epochs=30" in settings


def test_a_failing_run_is_recorded_once_and_counted_apart_in_the_summary(tmp_path):
    design = Design(ablation_base(), seeds=2, baseline_seeds=2)
    runs = plan(design, [], {"baseline", "beta-4", "normalize-inputs-false"})
    results = {}

    def launch(run, settings):
        if run.experiment == "abl-beta-4-s2" or run.variant == "normalize-inputs-false":
            raise VaelabError(  # as DVC reports it: the stage's line, then DVC's own
                "`dvc exp run` failed:\nEpoch 1/30\nerror: training diverged: NaN loss\n"
                "ERROR: failed to reproduce 'train': failed to run: ..., exited with 1"
            )
        results[run.experiment] = _fake_results(run, settings)

    def reader(name, path):
        return results[name][path]

    csv_path = tmp_path / "runs.csv"
    assert execute(design, runs, csv_path, launch, reader, lambda rows: None) == 6
    assert execute(design, runs, csv_path, launch, reader, lambda rows: None) == 0  # no retry
    rows = read_rows(csv_path)
    assert rows[-1]["status"] == "failed: training diverged: NaN loss"
    found = {s.name: s for s in ablation.summaries(design, rows)}
    beta, raw = found["beta-4"], found["normalize-inputs-false"]
    assert (beta.n, beta.failed, beta.verdict) == (1, 1, "too few seeds yet")
    assert (raw.n, raw.failed, raw.verdict, raw.interval) == (0, 2, "fails to train", None)
    assert "abl-beta-4-s2` failed: training diverged" in " ".join(ablation.header(design, rows))
    render(tmp_path, list(found.values()), [], [])
    text = (tmp_path / "ablation.md").read_text()
    assert "| raw 0-255 inputs | 0 (+2 failed) |" in text and "| 1 (+1 failed) |" in text
    assert "- **fails to train**: input normalization: raw 0-255 inputs." in text
    assert (
        "normalize-inputs-false,input normalization,raw 0-255 inputs,0,2,"
        in (tmp_path / "summary.csv").read_text()
    )


def test_a_variant_whose_runs_repeat_anothers_is_flagged_as_never_acting(tmp_path):
    design = Design(ablation_base(), seeds=2, baseline_seeds=3)
    runs = plan(design, [], {"baseline", "early-stopping-false", "beta-2"})
    results = {}

    def launch(run, settings):  # the made-up results ignore early stopping, as a no-op would
        results[run.experiment] = _fake_results(run, settings)

    csv_path = tmp_path / "runs.csv"
    execute(design, runs, csv_path, launch, lambda n, p: results[n][p], lambda rows: None)
    rows = read_rows(csv_path)
    found = {s.name: s for s in ablation.summaries(design, rows)}
    assert found["early-stopping-false"].same_as == "baseline: baseline.yaml as it is"
    assert found["beta-2"].same_as == found["baseline"].same_as == ""
    render(tmp_path, list(found.values()), [], [])
    text = (tmp_path / "ablation.md").read_text()
    assert "the switch changed nothing): early stopping: early stopping off (all epochs) = " in text
    assert "no measurable difference (same runs as baseline: baseline.yaml as it is)" in text

    one_differs = [
        {**row, "rate": "25.01"} if (row["variant"], row["seed"]) == ("early-stopping-false", "2")
        else row
        for row in rows
    ]  # fmt: skip
    found = {s.name: s for s in ablation.summaries(design, one_differs)}
    assert found["early-stopping-false"].same_as == ""


def test_rate_distortion_labels_of_crowded_points_do_not_overlap():
    xs, ys = [30.0, 30.1, 29.9, 45.0], [65.0, 65.1, 64.9, 55.0]
    labels = ["baseline", "batch norm", "cyclical", "beta = 0.5"]
    spots = label_spots(xs, ys, labels, per_point=(0.1, 0.2))
    crowded = sorted(spots[:3], key=lambda spot: spot[1])
    gaps = [b[1] - a[1] for a, b in itertools.pairwise(crowded)]
    assert min(gaps) >= 9 * 0.2 - 1e-9  # one 9-pt line apart at least
    assert spots[3] == pytest.approx((45.0 + 0.4, 55.0 + 0.6))  # alone: next to its point
    # a label does not sit on another variant's marker just above-right of its own point
    spots = label_spots([30.0, 30.5], [65.0, 65.8], ["adam", "baseline"], per_point=(0.1, 0.2))
    assert spots[0][1] >= 65.8 + 5 * 0.2


def test_the_forest_plot_turns_logarithmic_only_when_an_effect_is_large():
    def effect(name, low, high):
        middle = (low + high) / 2
        return Summary(name, "g", name, "test_nll", 3, {}, {}, Interval(middle, low, high))

    small = [effect("a", -0.9, -0.3), effect("b", 0.1, 0.8)]
    assert forest(small).axes[0].get_xscale() == "linear"
    axes = forest([*small, effect("c", 12.0, 16.0)]).axes[0]
    assert axes.get_xscale() == "symlog" and "logarithmic beyond" in axes.get_xlabel()
    assert {-0.5, 0.0, 0.5, 1.0, 10.0} <= set(axes.get_xticks())


def test_the_zoomed_panel_holds_the_variants_near_the_baseline():
    rates, distortions = np.array([30.0, 37.9, 45.0, 22.0]), np.array([65.0, 57.5, 55.0, 65.0])
    assert near_baseline(rates, distortions, 0).tolist() == [True, True, False, True]
    assert near_baseline(rates, distortions, 2).tolist() == [False, True, True, False]


def test_a_key_added_after_the_ablation_began_keeps_finished_runs_digests():
    """`train.architecture.upsample` came after the committed baseline runs: at its old
    behaviour it is left out of the digest, so a resumed ablation still finds them."""
    rows = read_rows(ablation.ABLATION / "runs.csv")
    design = Design(ablation_base())
    runs = [design.run("baseline", s, (), "evaluate") for s in design.seeds_of("baseline")]
    assert {r.digest for r in runs} <= {row["digest"] for row in rows}
    shuffled = design.base.replace({"train": {"architecture": {"upsample": "pixel_shuffle"}}})
    assert digest(shuffled) != digest(design.base)
