"""The study engine: plans as data, the committed studies recognized as done and rendered to
their committed pages, the statistics (paired by seed, corrected as one family, pairs only
within one CPU model and code version), the runner (resume, failures classified, exact refs,
one job per folder) and the one renderer (one real run through DVC and a tracking server that
goes away is in the slow tests)."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from tests.conftest import ROOT, commit_all, free_port, run
from vaelab.core.errors import VaelabError
from vaelab.core.overrides import nested, split_override
from vaelab.core.params import load_params
from vaelab.core.paths import ABLATION
from vaelab.executors import Outcome
from vaelab.experiments import measures, report, results
from vaelab.experiments.plan import load_plan
from vaelab.experiments.report import render
from vaelab.experiments.results import OK, answer, job_lock, read_rows
from vaelab.experiments.runner import pending, run_plan
from vaelab.experiments.study import RESULTS

STUDIES = ROOT / "docs"
TINY_PLAN = {
    "title": "A tiny study", "prefix": "abl", "base": "baseline.yaml",
    "profile": {"train.epochs": 2}, "seeds": 2, "stage": "evaluate", "against": "baseline",
    "arms": [
        {"name": "baseline", "group": "baseline", "label": "as it is", "seeds": 3},
        {"name": "beta-2", "group": "KL weight", "label": "beta = {train.kl.beta:g}",
         "set": {"train.kl.beta": 2.0}},
    ],
}  # fmt: skip


def test_every_committed_run_of_the_ablation_is_recognized_as_done():
    plan = load_plan(ABLATION / "plan.yaml")
    rows = read_rows(ABLATION / RESULTS)
    assert len(rows) == 92 and pending(plan, rows) == []
    used = {id(answer(rows, e)) for e in plan.experiments}
    assert len(used) == len(rows)  # every row answers a planned run
    tune = next(e for e in plan.experiments if e.arm == "tune-adam-0.001")
    assert answer(rows, tune)["arm"] == "baseline"  # Adam at the baseline's rate


@pytest.mark.parametrize("study", ["ablation", "claims", "default", "long", "backends"])
def test_rendering_a_committed_study_gives_its_committed_page(tmp_path, study):
    """Every committed row answers one planned run, and the one renderer gives the committed
    effects, arms and page (run from the project root: a page says whether its baseline is
    today's params.yaml)."""
    folder = STUDIES / study
    for name in ("plan.yaml", "baseline.yaml", "runs.csv", "study.md"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    if (folder / "histories").exists():
        shutil.copytree(folder / "histories", tmp_path / "histories")
    plan, rows = load_plan(tmp_path / "plan.yaml"), read_rows(tmp_path / RESULTS)
    assert len({id(answer(rows, e)) for e in plan.experiments} - {id(None)}) == len(rows)
    render(tmp_path, plan, rows)
    for name in ("effects.csv", "arms.csv", "study.md"):
        assert (tmp_path / name).read_text() == (folder / name).read_text(), name


def test_the_readme_table_is_the_ablations_generated_one():
    """The README's block is the page's table under the page's staleness notice."""
    page = (ABLATION / "study.md").read_text()
    notice = next(line for line in page.splitlines() if line.startswith("> **Not today's"))
    table = page.split("\n| arm ")[1].split("\n\n")[0]
    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- tricks generated: start -->")[1].split("<!-- tricks")[0]
    assert section.strip() == f"{notice}\n\n| arm {table}".strip()


def test_the_old_studies_say_their_baseline_is_not_todays_default():
    for study in ("ablation", "claims", "default", "long", "backends"):
        text = (STUDIES / study / "study.md").read_text()
        assert ("**Not today's default.**" in text and "`train.prior.kind=standard`" in text) or (
            study == "long"), study  # fmt: skip


def test_labels_come_from_the_params_and_a_plan_cannot_run_one_experiment_twice(tmp_path):
    spec = {**TINY_PLAN, "against": None, "arms": [
        {"name": "c", "group": "KL", "label": "cyclical ({train.kl.cycles} cycles)",
         "set": {"train.kl.schedule": "cyclical", "train.kl.cycles": 2}}]}  # fmt: skip
    plan = _plan(tmp_path, spec)
    assert plan.arms[0].label == "cyclical (2 cycles)"
    assert plan.experiments[0].overrides == (
        "train.epochs=2 train.kl.cycles=2 train.kl.schedule=cyclical"
    )
    spec["arms"][0]["label"] = "{train.kl.cycle} cycles"
    with pytest.raises(VaelabError, match=r"'train\.kl\.cycle', which is not a params key"):
        _plan(tmp_path, spec)
    same = {"name": "d", "group": "KL", "label": "d", "set": {"train.kl.schedule": "cyclical",
            "train.kl.cycles": 2, "train.kl.beta": 1.0}}  # fmt: skip
    spec["arms"] = [{**spec["arms"][0], "label": "c"}, same]  # beta 1.0 is the base's
    with pytest.raises(VaelabError, match="abl-d-s1 runs the same experiment as abl-c-s1"):
        _plan(tmp_path, spec)
    with pytest.raises(VaelabError, match=r"train\.epochs"):
        split_override("train.epochs")


def test_the_paired_t_interval_and_p_are_those_computed_by_hand():
    """Differences 1, 2, 3: mean 2, sd 1, t = 2 / (1 / sqrt 3) with 2 degrees of freedom;
    the interval is 2 -+ t(0.975, 2) / sqrt 3 and, for 2 degrees of freedom, the two-sided p
    is 1 - t / sqrt(t^2 + 2)."""
    t975 = 4.302652729749464  # the table's t(0.975, 2)
    t = 2 * math.sqrt(3)
    ours = measures.paired([1.0, 2.0, 3.0])
    assert (ours.n, ours.difference) == (3, pytest.approx(2.0))
    assert (ours.low, ours.high) == pytest.approx(
        (2 - t975 / math.sqrt(3), 2 + t975 / math.sqrt(3))
    )
    assert ours.p == pytest.approx(1 - t / math.sqrt(t * t + 2))
    assert ours.improved == 0.0 and measures.paired([-1.0, 0.0, 2.0]).improved == pytest.approx(0.5)
    # the bootstrap resamples the three differences: its interval lies within them
    assert 1.0 <= ours.boot_low < 2.0 < ours.boot_high <= 3.0
    assert measures.verdict(3, ours.difference, 0.01) == "hurts"
    assert measures.verdict(3, -1.0, 0.01) == "helps"
    assert measures.verdict(3, 2.0, 0.06) == "no measurable difference"  # after the correction
    one = measures.paired([0.3])
    assert (
        one.n == 1 and math.isnan(one.low) and measures.verdict(1, 0.3, math.nan) == "too few pairs"
    )
    same = measures.paired([0.0, 0.0, 0.0])
    assert (same.low, same.high, same.boot_low, same.p) == (0.0, 0.0, 0.0, 1.0)


def test_pairing_finds_an_effect_that_the_seeds_spread_hides():
    base = [90.0, 91.0, 92.0, 93.0]  # seeds that differ more than the arms do
    arm = [91.1, 91.9, 93.05, 93.95]
    ours = measures.paired([a - b for a, b in zip(arm, base, strict=True)])
    welch = stats.ttest_ind(arm, base, equal_var=False).confidence_interval(0.95)
    assert welch.low < 0 < ours.low


def test_holm_and_benjamini_hochberg_adjust_the_family_and_skip_untested_entries():
    p = [0.01, math.nan, 0.04, 0.03]
    holm = measures.adjust(p, "holm")  # by hand: 3 x 0.01, then 2 x 0.03 for the two others
    assert holm[0] == pytest.approx(0.03) and math.isnan(holm[1])
    assert holm[2:] == pytest.approx([0.06, 0.06])
    bh = measures.adjust(p, "fdr_bh")  # by hand: 0.01 x 3 / 1, then 0.04 x 3 / 3 for both
    assert bh[0] == pytest.approx(0.03) and bh[2:] == pytest.approx([0.04, 0.04])


def test_divergence_spread_and_curve_points_are_those_computed_by_hand():
    # 0 of 3 against 3 of 3: Fisher's two tables as extreme, each 1 / C(6, 3)
    assert measures.divergence((0, 3), (3, 3)) == pytest.approx(2 / 20)
    assert measures.divergence((3, 3), (3, 3)) == 1.0
    sd, low, high = measures.spread([1.0, 2.0, 3.0, 4.0])
    assert sd == pytest.approx(math.sqrt(5 / 3)) and 0 <= low < sd < high
    assert measures.spread([2.0, 2.0, 2.0]) == (0.0, 0.0, 0.0)
    history = [{"epoch": e, "val_neg_elbo": v, "epoch_time": 10.0}
               for e, v in ((1, 120.0), (2, 99.0), (3, 94.0))]  # fmt: skip
    assert measures.from_curve("epochs_to_100", history) == 2.0
    assert measures.from_curve("seconds_to_95", history) == 30.0
    assert measures.from_curve("epochs_to_90", history) is None
    assert measures.from_curve("val_auc_2", history) == pytest.approx(109.5)
    assert measures.from_curve("val_auc_4", history) is None  # a run too short to measure
    with pytest.raises(ValueError, match="unknown measure 'test_nll'"):
        measures.metric("test_nll")


# --- the runner, against a fake executor that commits real experiment refs ----------------


def _plan(folder: Path, spec: dict):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plan.yaml").write_text(yaml.safe_dump(spec))
    return load_plan(folder / "plan.yaml")


def _results(params) -> dict[str, str]:
    """What a finished experiment commits, made up from its params."""
    nll = 90.0 + 0.1 * params.base.seed + (params.train.kl.beta - 1.0)
    evaluate = {"nll": nll, "neg_elbo": nll + 5, "kl": 25.0, "reconstruction": nll - 20,
                "active_units": 30, "recon_mse_grayscale": 0.006, "frechet_distance": 30.0,
                "evaluate_seconds": 9.0}  # fmt: skip
    epochs = params.train.epochs
    train = {"val_neg_elbo": nll + 6, "best_epoch": epochs, "epochs": epochs,
             "train_seconds": 8.5 * epochs}  # fmt: skip
    history = "epoch,val_neg_elbo,epoch_time\n" + "".join(
        f"{e},{nll + 6 + 10 * (epochs - e)},8.5\n" for e in range(1, epochs + 1)
    )
    return {"params.yaml": yaml.safe_dump(params.model_dump()),
            "results/evaluate/metrics.json": json.dumps(evaluate),
            "results/train/metrics.json": json.dumps(train),
            "results/train/history.csv": history}  # fmt: skip


def commit_ref(repo: Path, ref: str, files: dict[str, str]) -> None:
    """Commit ``files`` over HEAD as ``ref``, as DVC commits an experiment."""
    env = {**os.environ, "GIT_INDEX_FILE": str(repo / ".git" / "fake-index")}

    def git(*args, data=None):
        return subprocess.run(["git", *args], cwd=repo, env=env, input=data, text=True,
                              capture_output=True, check=True).stdout.strip()  # fmt: skip

    git("read-tree", "HEAD")
    for path, text in files.items():
        blob = git("hash-object", "-w", "--stdin", data=text)
        git("update-index", "--add", "--cacheinfo", f"100644,{blob},{path}")
    commit = git("commit-tree", git("write-tree"), "-p", "HEAD", "-m", "exp")
    git("update-ref", ref, commit)


class FakeExecutor:
    """Runs each job as the params.yaml it would see, commits its made-up results under the
    exact ref, or fails as ``fail`` says (a log, or None)."""

    def __init__(self, repo: Path, fail=lambda job: None, stop_after: int | None = None):
        self.repo, self.fail, self.stop_after, self.ran = repo, fail, stop_after, []

    def gather(self, baseline):
        """Its experiments all land in this repository."""

    def run(self, jobs):
        for job in jobs:
            if len(self.ran) == self.stop_after:
                raise KeyboardInterrupt  # Ctrl-C
            self.ran.append(job.name)
            log = self.fail(job)
            if log is None:
                settings = {k: yaml.safe_load(v) for k, v in map(split_override, job.settings)}
                params = load_params(self.repo / "params.yaml").replace(nested(settings))
                ref = results.ref_of(job.name, results.baseline_commit())
                commit_ref(self.repo, ref, _results(params))
            yield Outcome(job, log is None, log or "", 1.0)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A git repository holding params.yaml, as the current directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_bytes((ROOT / "params.yaml").read_bytes())
    for args in (["init", "-q", "-b", "main"], ["config", "user.email", "t@t"],
                 ["config", "user.name", "t"], ["add", "params.yaml"],
                 ["commit", "-qm", "base"]):  # fmt: skip
        subprocess.run(["git", *args], cwd=tmp_path, check=True)
    return tmp_path


def _run(repo, executor, plan=None):
    plan = plan or _plan(repo / "abl", TINY_PLAN)
    with job_lock(repo / "abl"):
        return run_plan(plan, repo / "abl" / RESULTS, executor, load_params())


def test_a_stopped_job_resumes_from_its_results_and_reports_what_it_has(repo):
    fake = FakeExecutor(repo, stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        _run(repo, fake)
    rows = read_rows(repo / "abl" / RESULTS)
    assert [(r["arm"], r["seed"]) for r in rows] == [("baseline", "1"), ("baseline", "2"),
                                                     ("baseline", "3")]  # fmt: skip
    fake = FakeExecutor(repo)
    assert _run(repo, fake) == 2 and fake.ran == ["abl-beta-2-s1", "abl-beta-2-s2"]
    assert _run(repo, FakeExecutor(repo)) == 0
    plan, rows = _plan(repo / "abl", TINY_PLAN), read_rows(repo / "abl" / RESULTS)
    (found,) = report.compare(plan, report.runs(repo / "abl", plan, rows))
    # paired by seed: beta 2 costs exactly 1 nat at seeds 1 and 2 (the baseline's mean over
    # its 3 seeds would make it 0.95)
    assert (found.effect.n, found.effect.difference) == (2, pytest.approx(1.0))
    assert found.verdict == "hurts" and found.arm.label == "beta = 2"
    render(repo / "abl", plan, rows)
    text = (repo / "abl" / "study.md").read_text()
    assert re.search(
        r"\| KL weight: beta = 2 +\| test NLL +\| 2 +\| \+1\.00 \[\+1\.00, \+1\.00\]", text
    )
    with (repo / "abl" / "histories" / "abl-beta-2-s2.csv").open() as kept:
        epochs = [float(v) for row in csv.DictReader(kept) for v in row.values()]
    assert epochs == pytest.approx([1, 107.2, 8.5, 2, 97.2, 8.5])  # from its own ref
    assert (repo / "abl" / "rate_distortion.png").read_bytes()[:4] == b"\x89PNG"


def test_an_infrastructure_failure_stops_the_job_and_records_nothing(repo):
    down = "Epoch 1\nerror: the MLflow tracking server at http://127.0.0.1:9 does not answer\n"
    fake = FakeExecutor(repo, fail=lambda job: down if job.name == "abl-baseline-s2" else None)
    with pytest.raises(
        VaelabError,
        match=r"abl-baseline-s2 failed, not by a diverging "
        r"training.*tracking server at http://127\.0\.0\.1:9 does not answer",
    ):
        _run(repo, fake)  # fmt: skip
    rows = read_rows(repo / "abl" / RESULTS)
    assert [r["status"] for r in rows] == [OK]
    fake = FakeExecutor(repo)
    assert _run(repo, fake) == 4 and fake.ran[0] == "abl-baseline-s2"


def test_only_a_diverging_training_is_recorded_as_a_result(repo):
    diverged = ("error: training diverged: loss nan at batch 3. Lower the rate.\n"
                "ERROR: failed to reproduce 'train': exited with 1")  # fmt: skip
    fake = FakeExecutor(repo, fail=lambda job: diverged if "beta" in job.name else None)
    assert _run(repo, fake) == 5
    rows = read_rows(repo / "abl" / RESULTS)
    assert rows[-1]["status"] == "failed: training diverged: loss nan at batch 3. Lower the rate."
    assert _run(repo, FakeExecutor(repo)) == 0  # not retried
    plan = _plan(repo / "abl", TINY_PLAN)
    (found,) = report.compare(plan, report.runs(repo / "abl", plan, rows))
    assert (found.effect.n, found.fails, found.verdict) == (0, True, "fails to train")


def test_a_diverged_run_keeps_its_epochs_from_its_mlflow_run(repo, monkeypatch):
    """DVC commits no experiment for a failed stage, so a diverged run kept no history; its
    MLflow run has every epoch up to the divergence."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo / 'mlflow.db'}")
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    with mlflow.start_run(tags={"dvc_exp_name": "abl-beta-2-s1"}):
        for epoch, value in ((1, 120.5), (2, 110.25)):
            mlflow.log_metrics({"val_neg_elbo": value, "loss": value + 1}, step=epoch)
        mlflow.log_metric("system/cpu_utilization_percentage", 99.0, step=1)
    diverged = "error: training diverged: loss nan in epoch 3, at batch 3.\n"
    fake = FakeExecutor(repo, fail=lambda job: diverged if "beta" in job.name else None)
    _run(repo, fake)
    kept = repo / "abl" / "histories"
    with (kept / "abl-beta-2-s1.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["epoch"], r["val_neg_elbo"], r["loss"]) for r in rows] == [
        ("1", "120.5", "121.5"), ("2", "110.25", "111.25")]  # fmt: skip
    assert not (kept / "abl-beta-2-s2.csv").exists()  # no MLflow run of it: nothing to keep
    rows = read_rows(repo / "abl" / RESULTS)
    assert [r["status"] for r in rows if r["arm"] == "beta-2"] == [
        "failed: training diverged: loss nan in epoch 3, at batch 3."] * 2  # fmt: skip


def test_a_screening_at_one_seed_reports_its_difference_without_a_verdict(repo):
    spec = {**TINY_PLAN, "seeds": [1], "arms": [{**v, "seeds": [1]} for v in
                                              TINY_PLAN["arms"]]}  # fmt: skip
    _run(repo, FakeExecutor(repo), _plan(repo / "abl", spec))
    render(repo / "abl", _plan(repo / "abl", spec), read_rows(repo / "abl" / RESULTS))
    text = (repo / "abl" / "study.md").read_text()
    line = next(x for x in text.splitlines() if x.startswith("| KL weight: beta = 2 "))
    assert "+1.00 (one pair)" in line and "too few pairs" in line
    assert "The 0 p-values of this page" in text


def _report_after_only(repo, spec: dict, variant: str) -> str:
    """The whole plan's page after `--only variant` ran."""
    plan = _plan(repo / "abl", spec)
    with job_lock(repo / "abl"):
        only = load_plan(repo / "abl" / "plan.yaml", {variant})
        run_plan(only, repo / "abl" / RESULTS, FakeExecutor(repo), load_params())
    return render(repo / "abl", plan, read_rows(repo / "abl" / RESULTS)).read_text()


def test_a_candidate_run_before_its_baseline_is_reported_with_its_own_numbers(repo):
    """`--only` a candidate: the page renders, says no pair exists yet, and arms.csv has its
    numbers."""
    spec = {**TINY_PLAN, "seeds": [1], "arms": [{**v, "seeds": [1]} for v in
                                              TINY_PLAN["arms"]]}  # fmt: skip
    text = _report_after_only(repo, spec, "beta-2")
    line = next(x for x in text.splitlines() if x.startswith("| KL weight: beta = 2 "))
    assert "1 no reference run" in line and "too few pairs" in line
    (arm,) = csv.DictReader((repo / "abl" / "arms.csv").open())
    assert float(arm["nll_mean"]) == pytest.approx(91.1)


def test_a_baseline_run_alone_is_reported_as_nothing_to_compare_yet(repo):
    text = _report_after_only(repo, TINY_PLAN, "baseline")
    assert "No arm has a run beside its reference's yet." in text and "| pairs" not in text
    assert "forest" not in text and not (repo / "abl" / "forest.png").exists()  # nothing to plot


def test_another_plans_report_names_its_own_runs_and_has_no_tuning_table(repo):
    spec = {**TINY_PLAN, "prefix": "bk", "profile": {"evaluate.importance_samples": 200}}
    diverged = "error: training diverged: loss nan at batch 3.\n"
    fake = FakeExecutor(repo, fail=lambda job: diverged if job.name == "bk-beta-2-s1" else None)
    _run(repo, fake, _plan(repo / "abl", spec))
    render(repo / "abl", _plan(repo / "abl", spec), read_rows(repo / "abl" / RESULTS))
    page = (repo / "abl" / "study.md").read_text()
    assert "`bk-beta-2-s1` failed: training diverged" in page and "abl-" not in page
    assert "Learning rates" not in page
    assert "test NLL with k = 200 on all" in page  # the profile's, not baseline.yaml's


def test_results_come_from_the_exact_ref_with_the_plans_params(repo):
    plan = _plan(repo / "abl", {**TINY_PLAN, "against": None, "arms": TINY_PLAN["arms"][1:]})
    exp, head = plan.experiments[0], results.baseline_commit()
    # the same name under another baseline, with other numbers, is never read
    other = "f" * 40
    commit_ref(repo, results.ref_of(exp.name, other), _results(exp.params.replace(
        {"train": {"kl": {"beta": 4.0}}})))  # fmt: skip
    # a finished experiment whose row was lost is recorded without running it again
    commit_ref(repo, results.ref_of(exp.name, head), _results(exp.params))
    fake = FakeExecutor(repo)
    assert _run(repo, fake, plan) == 2 and fake.ran == ["abl-beta-2-s2"]
    assert float(read_rows(repo / "abl" / RESULTS)[0]["nll"]) == pytest.approx(91.1)
    assert results.exists(results.ref_of(exp.name, other))  # another baseline's: untouched
    # an earlier definition of the same name is replaced, not read
    stale = plan.experiments[1]
    commit_ref(repo, results.ref_of("abl-beta-2-s3", head), _results(stale.params))
    bigger = _plan(repo / "abl", {**TINY_PLAN, "seeds": 3, "against": None,
                                  "arms": TINY_PLAN["arms"][1:]})  # fmt: skip
    fake = FakeExecutor(repo)
    assert _run(repo, fake, bigger) == 1 and fake.ran == ["abl-beta-2-s3"]
    assert read_rows(repo / "abl" / RESULTS)[-1]["seed"] == "3"
    with pytest.raises(VaelabError, match=r"did not run the plan: it has base\.seed=2"):
        results.outputs(exp, results.ref_of("abl-beta-2-s2", head))


def test_a_second_job_on_the_same_folder_is_refused_until_the_first_dies(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from vaelab."
         "experiments.results import job_lock\nwith job_lock(Path(sys.argv[1])):\n"
         " print('held', flush=True); time.sleep(600)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline() == "held\n"
    busy = rf"another job is writing to .* \(process {holder.pid}"
    with pytest.raises(VaelabError, match=busy), job_lock(tmp_path):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with job_lock(tmp_path):  # a dead holder keeps nothing
        assert (tmp_path / ".job.lock").read_text() == str(os.getpid())


def test_two_commands_started_at_once_on_one_folder_one_is_refused(tmp_path):
    for name in ("baseline.yaml", "runs.csv", "plan.yaml"):
        (tmp_path / name).write_bytes((ABLATION / name).read_bytes())
    command = [sys.executable, "-m", "vaelab", "ablation", "--report", "--plan",
               str(tmp_path / "plan.yaml")]  # fmt: skip
    jobs = [subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]  # fmt: skip
    results = [(job.wait(), job.stderr.read()) for job in jobs]
    assert sorted(code for code, _ in results) == [0, 1]
    refused = next(err for code, err in results if code == 1)
    assert "another job is writing to" in refused and "Traceback" not in refused


# --- real DVC -------------------------------------------------------------------------


def _env(real_mirror, **more):
    return {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
            "VAELAB_MNIST_MIRROR": str(real_mirror), "DVC_NO_ANALYTICS": "1", **more}  # fmt: skip


def _tiny_ablation(project):
    folder = project / "docs" / "ablation"
    folder.mkdir(parents=True)
    (folder / "plan.yaml").write_text(yaml.safe_dump(
        {**TINY_PLAN, "seeds": 1, "arms": [{**TINY_PLAN["arms"][0], "seeds": 2},
                                           TINY_PLAN["arms"][1]]}))  # fmt: skip
    commit_all(project, "baseline")
    return folder / RESULTS, [sys.executable, "-m", "vaelab", "ablation"]


def _wait_rows(path: Path, n: int, job: subprocess.Popen) -> None:
    deadline = time.monotonic() + 600
    while not (path.exists() and len(read_rows(path)) == n):
        assert job.poll() is None and time.monotonic() < deadline, f"no row {n}"
        time.sleep(0.2)


@pytest.mark.slow
def test_the_ablation_survives_sigkill_and_resumes_from_its_csv(project, real_mirror):
    csv_path, command = _tiny_ablation(project)
    job = subprocess.Popen(command, cwd=project, env=_env(real_mirror), start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    _wait_rows(csv_path, 1, job)
    time.sleep(5)  # into the second run's DVC experiment
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    first = read_rows(csv_path)
    assert [(r["arm"], r["seed"]) for r in first] == [("baseline", "1")]

    out = run(command, project, _env(real_mirror))
    assert "abl-baseline-s1" not in out and "abl-baseline-s2" in out and "abl-beta-2-s1" in out
    rows = read_rows(csv_path)
    assert rows[0] == first[0]
    assert [(r["arm"], r["seed"]) for r in rows] == [("baseline", "1"), ("baseline", "2"),
                                                     ("beta-2", "1")]  # fmt: skip
    for row in rows:
        assert np.isfinite(float(row["nll"])) and row["epochs"] == "2"
    page = (project / "docs/ablation/study.md").read_text()
    assert "**Progress**: 3 of 3 runs done" in page
    shown = run(["dvc", "exp", "show", "--csv"], project)
    assert "abl-beta-2-s1" in shown


@pytest.mark.slow
def test_a_tracking_server_that_goes_away_marks_no_run_failed(project, real_mirror, tmp_path):
    csv_path, command = _tiny_ablation(project)
    port = free_port()
    server_cmd = ["mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                  "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                  "--default-artifact-root", str(tmp_path / "artifacts")]  # fmt: skip

    def serve():
        server = subprocess.Popen(server_cmd, env=_env(real_mirror), start_new_session=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        run([sys.executable, "-c", "import time, urllib.request as u\nfor _ in range(120):\n"
             f" try: u.urlopen('http://127.0.0.1:{port}/health'); break\n"
             " except OSError: time.sleep(0.5)"], project)  # fmt: skip
        return server

    env = _env(real_mirror, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}")
    server = serve()
    try:
        job = subprocess.Popen(command, cwd=project, env=env, stderr=subprocess.PIPE, text=True)
        _wait_rows(csv_path, 1, job)
        os.killpg(server.pid, signal.SIGTERM)  # the server goes away mid-ablation
        server.wait()
        assert job.wait(timeout=600) == 1
        error = job.stderr.read()
        assert "failed, not by a diverging training" in error and "does not answer" in error
        rows = read_rows(csv_path)
        assert [r["status"] for r in rows] == [OK]  # nothing marked failed
        server = serve()
        out = run(command, project, env)
        assert "abl-baseline-s1" not in out
        assert [r["status"] for r in read_rows(csv_path)] == [OK] * 3
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait()


# --- one study with every kind of measure: against, thresholds, stress, pairs -------------

STUDY = {
    "title": "Claims", "prefix": "cl", "base": "baseline.yaml", "profile": {"train.epochs": 4},
    "seeds": 3, "stage": "evaluate", "against": "baseline",
    "measures": ["nll", "epochs_to_100"],
    "stress": {"factors": [10], "set": {"train.epochs": 2}},
    "arms": [
        {"name": "baseline", "group": "baseline", "label": "the default", "seeds": 5,
         "stress": [3, 10]},
        {"name": "beta-1.5", "group": "KL weight", "label": "beta = {train.kl.beta:g}",
         "set": {"train.kl.beta": 1.5}},
        {"name": "baseline-2", "group": "baseline", "label": "at 2 epochs", "against": None,
         "set": {"train.epochs": 2}},
        {"name": "beta-4-2", "group": "KL weight", "label": "beta = {train.kl.beta:g}, short",
         "set": {"train.epochs": 2, "train.kl.beta": 4.0}, "against": "baseline-2",
         "measures": ["nll"]},
    ],
}  # fmt: skip


def _study(repo, spec=STUDY, fail=lambda job: None):
    plan = _plan(repo / "cl", spec)
    with job_lock(repo / "cl"):
        run_plan(plan, repo / "cl" / RESULTS, FakeExecutor(repo, fail), load_params())
    rows = read_rows(repo / "cl" / RESULTS)
    return plan, rows, report.compare(plan, report.runs(repo / "cl", plan, rows))


def test_a_study_compares_each_arm_with_its_own_reference_on_its_measures(repo):
    diverged = "error: training diverged: loss nan at batch 3.\n"
    high = "train.optimizer.learning_rate=0.03"  # the default's 0.003 x 10
    plan, rows, found = _study(repo, fail=lambda job: diverged if high in job.settings else None)
    # the stressed runs: the baseline at x3 and x10, each compared arm at x10, 2 epochs; the
    # short reference's x10 run is the baseline's (one experiment, run once)
    ran = {e.name for e in plan.experiments if answer(rows, e)}
    assert {"cl-baseline-x3-s1", "cl-beta-1.5-x10-s3", "cl-beta-4-2-x10-s1"} <= ran
    assert len(rows) == 5 + 3 + 3 + 3 + (3 + 3) + 3 + 3  # own runs, then stressed ones
    by = {(c.arm.name, c.measure): c for c in found}
    assert set(by) == {("beta-1.5", "nll"), ("beta-1.5", "epochs_to_100"),
                       ("beta-1.5", "diverged"), ("beta-4-2", "nll"),
                       ("beta-4-2", "diverged")}  # fmt: skip
    # the fake's NLL is 90 + 0.1 seed + (beta - 1): beta 4 on 2 epochs against its own
    # 2-epoch reference, not the 4-epoch default
    assert by[("beta-4-2", "nll")].effect.difference == pytest.approx(3.0)
    assert by[("beta-4-2", "nll")].reference.name == "baseline-2"
    # the fake's validation -ELBO falls 10 nats an epoch to nll + 6 at the last epoch: the
    # baseline reaches 100 at epoch 4 (96.1 + 10 > 100), beta 1.5 (96.6) at epoch 4 too
    assert by[("beta-1.5", "epochs_to_100")].effect.difference == 0.0
    stressed = by[("beta-1.5", "diverged")]
    assert stressed.counts == "3 of 3 against 3 of 3" and stressed.p == 1.0
    assert len({c.adjusted for c in found}) > 1 and all(c.adjusted >= c.p for c in found)
    page = render(repo / "cl", plan, rows).read_text()
    assert re.search(r"\| baseline: the default +\| 0 of 3 +\| 3 of 3 +\|", page)
    assert f"The {len(found)} p-values of this page are one family" in page
    assert (repo / "cl" / "learning_curves.png").stat().st_size  # beta 1.5 over the baseline


def test_pairs_are_only_runs_of_one_cpu_model_and_code_version(repo):
    plan, rows, _ = _study(repo)
    for row in rows:  # seed 2 of beta 1.5 ran elsewhere, seed 3 on other code
        if row["arm"] == "beta-1.5" and row["target"] == "evaluate" and row["seed"] != "1":
            row["cpu" if row["seed"] == "2" else "code"] = "elsewhere"
    every = report.runs(repo / "cl", plan, rows)
    found = next(c for c in report.compare(plan, every) if c.measure == "nll")
    assert found.effect.n == 1 and found.left_out == ["2 other CPU or code"]
    spec = {**STUDY, "same_code": [{"versions": [rows[0]["code"], "elsewhere"],
                                    "why": "checked"}]}  # fmt: skip
    plan = _plan(repo / "cl", spec)
    found = next(c for c in report.compare(plan, report.runs(repo / "cl", plan, rows))
                 if c.measure == "nll")  # fmt: skip
    assert found.effect.n == 2 and found.left_out == ["1 other CPU or code"]


def test_a_page_says_whether_its_baseline_is_todays_params(repo):
    plan, rows, _ = _study(repo)
    assert "**Baseline**: today's `params.yaml`." in render(repo / "cl", plan, rows).read_text()
    today = load_params().replace({"train": {"kl": {"beta": 2.0}}})
    (repo / "params.yaml").write_text(yaml.safe_dump(today.model_dump()))
    text = render(repo / "cl", plan, rows).read_text()
    assert "**Not today's default.**" in text and "`train.kl.beta=1.0`" in text


@pytest.mark.parametrize(
    ("change", "error"),
    [({"against": "nothing"}, "names 'nothing', which is not an arm of this plan"),
     ({"measures": ["test_nll"]}, "unknown measure 'test_nll'"),
     ({"base": "../outside.yaml"}, "base\n  String should match pattern"),
     ({"seeds": 1001}, "seeds"), ({"seeds": [0, 1]}, "greater than or equal to 1"),
     ({"arms": [*STUDY["arms"][:2], {"name": "g", "group": "g", "label": "g",
                                     "set": {"train.likelihood.kind": "gaussian"}}]},
      "arm g: nll is in other units for it than for baseline"),
     ({"stress": None}, "an arm sets `stress` factors, but the plan has no `stress`"),
     ({"same_code": [{"versions": [1234567, "abc"], "why": "x"}]}, "valid string"),
     ({"selections": [{"group": "tune", "by": "val_neg_elbo", "per": "a", "over": "b",
                       "title": "t"}]}, "no arm is of group 'tune'")],
)  # fmt: skip
def test_a_plan_with_a_mistake_is_refused_with_what_is_wrong(repo, change, error):
    with pytest.raises(VaelabError, match=re.escape(error)):
        _plan(repo / "cl", {**STUDY, **change})
    assert not (repo / "cl" / "baseline.yaml").exists()  # nothing written
    assert not (repo / "outside.yaml").exists()


def test_an_arm_run_on_a_new_cpu_model_gets_its_reference_seed_run_there_too(repo):
    _run(repo, FakeExecutor(repo))
    rows = read_rows(repo / "abl" / RESULTS)
    for row in rows:  # the baseline ran on another machine, beta 2 at seed 1 too
        if row["arm"] == "baseline" or row["seed"] == "1":
            row["cpu"] = "Another CPU, 2 cores"
    rows = [r for r in rows if not (r["arm"] == "beta-2" and r["seed"] == "2")]
    plan = _plan(repo / "abl", TINY_PLAN)
    # beta 2 at seed 2 runs here: the baseline's seed 2 runs here again; seed 1 needs nothing
    assert [e.name for e in pending(plan, rows)] == ["abl-beta-2-s2", "abl-baseline-s2"]
    assert [e.name for e in pending(plan, rows, reruns=False)] == ["abl-beta-2-s2"]


def test_a_study_over_params_yaml_follows_the_default(repo):
    """No `base`: the baseline is params.yaml as it is; rows of an earlier default stay in
    runs.csv, unused, and the page says so."""
    spec = {k: v for k, v in TINY_PLAN.items() if k != "base"}
    _run(repo, FakeExecutor(repo), _plan(repo / "abl", spec))
    assert not (repo / "abl" / "baseline.yaml").exists()
    moved = load_params().replace({"train": {"kl": {"warmup": 5}}})
    (repo / "params.yaml").write_text(yaml.safe_dump(moved.model_dump()))
    plan, rows = _plan(repo / "abl", spec), read_rows(repo / "abl" / RESULTS)
    assert len(pending(plan, rows)) == 5  # every run again, on the new default
    text = render(repo / "abl", plan, rows).read_text()
    assert "5 rows of runs.csv ran on another baseline: not used." in text
    assert "**Baseline**: today's `params.yaml`." in text
