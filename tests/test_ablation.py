"""The experiment layer: plans as data, the committed ablation recognized as done, the runner
(resume, failures classified, exact refs, one job per folder), the report and its tables (one
real run of it through DVC and a tracking server that goes away is in the slow tests)."""

from __future__ import annotations

import csv
import json
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
from vaelab.experiments import report, results
from vaelab.experiments.ablation import RENDER, RESULTS
from vaelab.experiments.plan import load_plan
from vaelab.experiments.report import render
from vaelab.experiments.results import OK, answer, job_lock, read_rows
from vaelab.experiments.runner import pending, run_plan

TINY_PLAN = {
    "prefix": "abl", "base": "baseline.yaml", "profile": {"train.epochs": 2}, "seeds": 2,
    "stage": "evaluate", "variants": [
        {"name": "baseline", "group": "baseline", "label": "as it is", "seeds": 3},
        {"name": "beta-2", "group": "KL weight", "label": "beta = {train.kl.beta:g}",
         "set": {"train.kl.beta": 2.0}},
    ],
}  # fmt: skip


def test_every_committed_run_of_the_ablation_is_recognized_as_done():
    plan = load_plan(ABLATION / "variants.yaml")
    rows = read_rows(ABLATION / RESULTS)
    assert len(rows) == 92 and pending(plan, rows) == []
    used = {id(answer(rows, e)) for e in plan.experiments}
    assert len(used) == len(rows)  # every row answers a planned run
    tune = next(e for e in plan.experiments if e.variant == "tune-adam-0.001")
    assert answer(rows, tune)["variant"] == "baseline"  # Adam at the baseline's rate


def test_rendering_the_committed_ablation_gives_its_committed_numbers(tmp_path):
    for name in ("variants.yaml", "baseline.yaml", "runs.csv", "ablation.md"):
        (tmp_path / name).write_bytes((ABLATION / name).read_bytes())
    render(tmp_path, load_plan(tmp_path / "variants.yaml"), read_rows(tmp_path / RESULTS))
    assert (tmp_path / "summary.csv").read_text() == (ABLATION / "summary.csv").read_text()
    assert (tmp_path / "ablation.md").read_text() == (ABLATION / "ablation.md").read_text()


def test_rendering_the_committed_claims_gives_their_committed_page(tmp_path):
    claims_dir = ROOT / "docs" / "claims"
    for name in ("variants.yaml", "baseline.yaml", "runs.csv", "claims.md"):
        (tmp_path / name).write_bytes((claims_dir / name).read_bytes())
    shutil.copytree(claims_dir / "histories", tmp_path / "histories")
    plan = load_plan(tmp_path / "variants.yaml")
    rows = read_rows(tmp_path / RESULTS)
    assert len({id(answer(rows, e)) for e in plan.experiments} - {id(None)}) == len(rows)
    render_plan(tmp_path, plan, rows)
    assert (tmp_path / "claims.csv").read_text() == (claims_dir / "claims.csv").read_text()
    assert (tmp_path / "claims.md").read_text() == (claims_dir / "claims.md").read_text()


def test_the_claims_page_names_the_tricks_its_figure_leaves_out():
    """Grayscale training, the Gaussian decoder and the tutorial have no learning-curve panel
    (their -ELBO is in other units); the page says so under the figure, and only of them."""
    claims_dir = ROOT / "docs" / "claims"
    plan = load_plan(claims_dir / "variants.yaml")
    text = (claims_dir / "claims.md").read_text()
    under = text.split("![learning curves](learning_curves.png)")[1].split("###")[0]
    (line,) = [x for x in under.splitlines() if x.startswith("Not drawn")]
    left_out = {"binarize-none", "likelihood-gaussian", "tutorial"}
    for exp in plan.variants():
        if exp.group not in ("lr-grid", "divergence", "baseline"):
            assert (f"{exp.group}: {exp.label}" in line) == (exp.variant in left_out), exp.variant


def test_the_readme_table_is_the_one_generated_from_summary_csv():
    summary = list(csv.DictReader((ABLATION / "summary.csv").open()))
    table = report.tricks_table(summary)
    readme = (ROOT / "README.md").read_text()
    assert report.replace_section(readme, "tricks", table) == readme
    section = readme.split("## Which training tricks help")[1].split("\n## ")[0]
    assert len(section.strip().splitlines()) <= 35
    adam = next(line for line in table.splitlines() if "adam at its tuned" in line)
    assert "-2.02 [-2.14, -1.90]" in adam and "helps" in adam


def test_labels_come_from_the_params_and_a_plan_cannot_run_one_experiment_twice(tmp_path):
    spec = {**TINY_PLAN, "variants": [
        {"name": "c", "group": "KL", "label": "cyclical ({train.kl.cycles} cycles)",
         "set": {"train.kl.schedule": "cyclical", "train.kl.cycles": 2}}]}  # fmt: skip
    plan = _plan(tmp_path, spec)
    assert plan.experiments[0].label == "cyclical (2 cycles)"
    assert plan.experiments[0].overrides == (
        "train.epochs=2 train.kl.cycles=2 train.kl.schedule=cyclical"
    )
    spec["variants"][0]["label"] = "{train.kl.cycle} cycles"
    with pytest.raises(VaelabError, match=r"'train\.kl\.cycle', which is not a params key"):
        _plan(tmp_path, spec)
    same = {"name": "d", "group": "KL", "label": "d", "set": {"train.kl.schedule": "cyclical",
            "train.kl.cycles": 2, "train.kl.beta": 1.0}}  # fmt: skip
    spec["variants"] = [{**spec["variants"][0], "label": "c"}, same]  # beta 1.0 is the base's
    with pytest.raises(VaelabError, match="abl-d-s1 runs the same experiment as abl-c-s1"):
        _plan(tmp_path, spec)
    with pytest.raises(VaelabError, match=r"train\.epochs"):
        split_override("train.epochs")


def test_welch_interval_is_scipys_and_verdicts_need_it_to_exclude_zero():
    from vaelab.experiments.effects import welch

    a, b = [91.0, 91.4, 90.9], [90.1, 90.3, 90.2, 90.4, 90.0]
    theirs = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    ours = welch(a, b)
    assert (ours.low, ours.high) == pytest.approx((theirs.low, theirs.high))
    assert ours.verdict == "hurts" and welch(b, a).verdict == "helps"
    assert welch([1.0], b) is None and welch([2.0, 2.0], [1.0, 1.0]).low == 1.0
    assert welch([90.0, 90.4], [90.1, 90.3]).verdict == "no measurable difference"


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
                "seconds": 9.0}  # fmt: skip
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
    assert [(r["variant"], r["seed"]) for r in rows] == [("baseline", "1"), ("baseline", "2"),
                                                         ("baseline", "3")]  # fmt: skip
    fake = FakeExecutor(repo)
    assert _run(repo, fake) == 2 and fake.ran == ["abl-beta-2-s1", "abl-beta-2-s2"]
    assert _run(repo, FakeExecutor(repo)) == 0
    plan = _plan(repo / "abl", TINY_PLAN)
    found = {s.exp.variant: s for s in report.summaries(plan, read_rows(repo / "abl" / RESULTS))}
    assert found["beta-2"].means["test_nll"] == pytest.approx(91.15)
    assert found["beta-2"].interval.difference == pytest.approx(0.95)
    assert found["beta-2"].verdict == "hurts" and found["beta-2"].exp.label == "beta = 2"
    render(repo / "abl", plan, read_rows(repo / "abl" / RESULTS))
    assert "| KL weight: beta = 2 | +0.95 [" in (repo / "abl" / "ablation.md").read_text()
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
    found = {s.exp.variant: s for s in report.summaries(_plan(repo / "abl", TINY_PLAN), rows)}
    assert (found["beta-2"].n, found["beta-2"].failed, found["beta-2"].verdict) == (
        0, 2, "fails to train")  # fmt: skip


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
    assert [r["status"] for r in rows if r["variant"] == "beta-2"] == [
        "failed: training diverged: loss nan in epoch 3, at batch 3."] * 2  # fmt: skip


def test_a_screening_at_one_seed_reports_its_differences_without_a_verdict(repo):
    spec = {**TINY_PLAN, "seeds": [1], "variants": [{**v, "seeds": [1]} for v in
                                                  TINY_PLAN["variants"]]}  # fmt: skip
    _run(repo, FakeExecutor(repo), _plan(repo / "abl", spec))
    render(repo / "abl", _plan(repo / "abl", spec), read_rows(repo / "abl" / RESULTS))
    line = "| KL weight: beta = 2 | +1.00 (one seed: no interval) | too few seeds yet |"
    assert line in (repo / "abl" / "ablation.md").read_text()


def _report_after_only(repo, spec: dict, variant: str) -> str:
    """The whole plan's page after `--only variant` ran."""
    plan = _plan(repo / "abl", spec)
    with job_lock(repo / "abl"):
        only = load_plan(repo / "abl" / "plan.yaml", {variant})
        run_plan(only, repo / "abl" / RESULTS, FakeExecutor(repo), load_params())
    return render(repo / "abl", plan, read_rows(repo / "abl" / RESULTS)).read_text()


def test_a_candidate_run_before_its_baseline_is_reported_with_its_own_numbers(repo):
    """`--only` a candidate: the report renders, and says the baseline has not run."""
    spec = {**TINY_PLAN, "seeds": [1], "variants": [{**v, "seeds": [1]} for v in
                                                  TINY_PLAN["variants"]]}  # fmt: skip
    text = _report_after_only(repo, spec, "beta-2")
    line = next(x for x in text.splitlines() if x.startswith("| KL weight: beta = 2 "))
    assert "no baseline run yet" in line and "test NLL 91.10" in line


def test_a_baseline_run_alone_is_reported_as_nothing_to_compare_yet(repo):
    text = _report_after_only(repo, TINY_PLAN, "baseline")
    assert "No variant has run against the baseline yet." in text and "| trick" not in text
    assert "forest" not in text and not (repo / "abl" / "forest.png").exists()  # nothing to plot


def test_another_plans_report_names_its_own_runs_and_has_no_tuning_table(repo):
    spec = {**TINY_PLAN, "prefix": "bk", "profile": {"evaluate.importance_samples": 200}}
    diverged = "error: training diverged: loss nan at batch 3.\n"
    fake = FakeExecutor(repo, fail=lambda job: diverged if job.name == "bk-beta-2-s1" else None)
    _run(repo, fake, _plan(repo / "abl", spec))
    render(repo / "abl", _plan(repo / "abl", spec), read_rows(repo / "abl" / RESULTS))
    page = (repo / "abl" / "ablation.md").read_text()
    assert "`bk-beta-2-s1` failed: training diverged" in page and "abl-" not in page
    assert "Learning rates" not in page
    assert "test NLL with k = 200 on all" in page  # the profile's, not baseline.yaml's


def test_results_come_from_the_exact_ref_with_the_plans_params(repo):
    plan = _plan(repo / "abl", {**TINY_PLAN, "variants": TINY_PLAN["variants"][1:]})
    exp, head = plan.experiments[0], results.baseline_commit()
    # the same name under another baseline, with other numbers, is never read
    other = "f" * 40
    commit_ref(repo, results.ref_of(exp.name, other), _results(exp.params.replace(
        {"train": {"kl": {"beta": 4.0}}})))  # fmt: skip
    # a finished experiment whose row was lost is recorded without running it again
    commit_ref(repo, results.ref_of(exp.name, head), _results(exp.params))
    fake = FakeExecutor(repo)
    assert _run(repo, fake, plan) == 2 and fake.ran == ["abl-beta-2-s2"]
    assert float(read_rows(repo / "abl" / RESULTS)[0]["test_nll"]) == pytest.approx(91.1)
    assert results.exists(results.ref_of(exp.name, other))  # another baseline's: untouched
    # an earlier definition of the same name is replaced, not read
    stale = plan.experiments[1]
    commit_ref(repo, results.ref_of("abl-beta-2-s3", head), _results(stale.params))
    bigger = _plan(repo / "abl", {**TINY_PLAN, "seeds": 3, "variants": TINY_PLAN["variants"][1:]})
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
    for name in ("baseline.yaml", "runs.csv"):
        (tmp_path / name).write_bytes((ABLATION / name).read_bytes())
    (tmp_path / "variants.yaml").write_bytes((ABLATION / "variants.yaml").read_bytes())
    command = [sys.executable, "-m", "vaelab", "ablation", "--report", "--plan",
               str(tmp_path / "variants.yaml")]  # fmt: skip
    jobs = [subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
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
    (folder / "variants.yaml").write_text(yaml.safe_dump(
        {**TINY_PLAN, "seeds": 1, "variants": [{**TINY_PLAN["variants"][0], "seeds": 2},
                                               TINY_PLAN["variants"][1]]}))  # fmt: skip
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
    assert [(r["variant"], r["seed"]) for r in first] == [("baseline", "1")]

    out = run(command, project, _env(real_mirror))
    assert "abl-baseline-s1" not in out and "abl-baseline-s2" in out and "abl-beta-2-s1" in out
    rows = read_rows(csv_path)
    assert rows[0] == first[0]
    assert [(r["variant"], r["seed"]) for r in rows] == [("baseline", "1"), ("baseline", "2"),
                                                         ("beta-2", "1")]  # fmt: skip
    for row in rows:
        assert np.isfinite(float(row["test_nll"])) and row["epochs_run"] == "2"
    page = (project / "docs/ablation/ablation.md").read_text()
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


def render_plan(out, plan, rows):
    return RENDER[plan.report](out, plan, rows)


# --- the claims report: quality, convergence and stability per trick ------------------------

CLAIMS_PLAN = {
    "prefix": "cl", "base": "baseline.yaml", "profile": {"train.epochs": 4}, "seeds": 3,
    "stage": "evaluate", "report": "claims", "variants": [
        {"name": "baseline", "group": "baseline", "label": "the default", "seeds": 5},
        {"name": "beta-1.5", "group": "KL weight", "label": "beta = {train.kl.beta:g}",
         "set": {"train.kl.beta": 1.5}},
        {"name": "beta-4", "group": "KL weight", "label": "beta = {train.kl.beta:g}",
         "set": {"train.kl.beta": 4.0}},
        *({"name": f"lr-{rate}", "group": "lr-grid", "label": "rate", "stage": "train",
           "set": {"train.optimizer.learning_rate": rate}} for rate in (0.01, 0.03, 0.1)),
        {"name": "diverge-beta-1.5", "group": "divergence", "label": "stressed",
         "stage": "train", "set": {"train.kl.beta": 1.5, "train.optimizer.learning_rate": 0.03}},
    ],
}  # fmt: skip


def test_a_variant_judged_on_another_metric_is_compared_on_that_metric():
    """The Gaussian decoder is judged on reconstruction MSE; its difference was taken from the
    baseline's test NLL (-85.57 'better') and its spread from the NLL's."""
    rows = read_rows(ROOT / "docs" / "claims" / "runs.csv")

    def mse(variant: str) -> list[float]:
        return [float(r["recon_mse_grayscale"]) for r in rows
                if r["variant"] == variant and r["status"] == OK]  # fmt: skip

    with (ROOT / "docs" / "claims" / "claims.csv").open() as handle:
        (gaussian,) = [r for r in csv.DictReader(handle) if r["variant"] == "likelihood-gaussian"]
    ours, theirs = mse("likelihood-gaussian"), mse("baseline")
    assert gaussian["metric"] == "recon_mse_grayscale" and len(ours) == 3
    assert float(gaussian["metric_value"]) == pytest.approx(np.mean(ours) - np.mean(theirs))
    ratio = np.std(ours, ddof=1) / np.std(theirs, ddof=1)
    assert float(gaussian["spread_value"]) == pytest.approx(ratio, rel=1e-5)


def test_the_claims_report_measures_quality_convergence_and_stability(repo):
    diverged = "error: training diverged: loss nan at batch 3.\n"
    high = ("train.optimizer.learning_rate=0.03", "train.optimizer.learning_rate=0.1")
    fake = FakeExecutor(repo, fail=lambda job: diverged if set(high) & set(job.settings) else None)
    plan = _plan(repo / "cl", CLAIMS_PLAN)
    with job_lock(repo / "cl"):
        run_plan(plan, repo / "cl" / RESULTS, fake, load_params())
    page = render_plan(repo / "cl", plan, read_rows(repo / "cl" / RESULTS))
    assert page.name == "claims.md" and (repo / "cl" / "learning_curves.png").stat().st_size
    with (repo / "cl" / "claims.csv").open() as handle:
        found = {row["variant"]: row for row in csv.DictReader(handle)}
    base_nll = [90.0 + 0.1 * s for s in range(1, 6)]  # the fake's numbers, by seed and beta
    nll = [90.5 + 0.1 * s for s in range(1, 4)]
    assert float(found["beta-1.5"]["metric_value"]) == pytest.approx(0.4)
    ci = stats.ttest_ind(nll, base_nll, equal_var=False).confidence_interval(0.95)
    assert float(found["beta-1.5"]["metric_low"]) == pytest.approx(ci.low, rel=1e-5)
    # every seed reached the target (baseline's mean final -ELBO + 1) at epoch 4, 34 s
    assert float(found["baseline"]["target"]) == pytest.approx(np.mean(base_nll) + 7)
    assert float(found["baseline"]["epochs_mean"]) == 4.0
    assert float(found["beta-1.5"]["seconds_mean"]) == pytest.approx(34.0)
    assert found["beta-4"]["never"] == "3" and found["beta-4"]["epochs_mean"] == ""
    sd = np.std(nll, ddof=1) / np.std(base_nll, ddof=1)
    assert float(found["beta-1.5"]["spread_value"]) == pytest.approx(sd)
    assert float(found["beta-1.5"]["spread_low"]) < sd < float(found["beta-1.5"]["spread_high"])
    text = page.read_text()
    assert "Stress rate: 0.03." in text and re.search(r"\| +0\.01 \| 0 of 3 ", text)
    for start in ("| KL weight: beta = 1.5", "| baseline: the default"):  # diverged at 0.03
        line = next(x for x in text.splitlines() if x.startswith(start))
        assert line.rstrip(" |").endswith("3 of 3")
    assert "never in 3 of 3 seeds" in text
    assert "lr-grid" not in text.split("### The stress rate")[0]
    assert "cl-lr-0.1-s1" not in text and "cl-diverge-beta-1.5-s1" not in text  # tables show them
    assert re.search(r"\| KL weight: beta = 1\.5 +\| +4 \| +0\.03 \| 3 of 3 ", text)


def test_the_learning_rate_grid_alone_renders_its_stress_rate(repo):
    """The grid runs first: before any baseline run, the page has the grid and no table."""
    diverged = "error: training diverged: loss nan at batch 3.\n"
    fake = FakeExecutor(repo, fail=lambda job: diverged if "lr-0.1" in job.name else None)
    plan = _plan(repo / "cl", CLAIMS_PLAN)
    with job_lock(repo / "cl"):
        grid = load_plan(repo / "cl" / "plan.yaml", {"lr-0.01", "lr-0.1"})
        run_plan(grid, repo / "cl" / RESULTS, fake, load_params())
    text = render_plan(repo / "cl", plan, read_rows(repo / "cl" / RESULTS)).read_text()
    assert "Stress rate: 0.1." in text and "No finished run of the baseline yet" in text
    assert "| trick" not in text and re.search(r"\| +0\.1 +\| 3 of 3 ", text)
    assert (repo / "cl" / "claims.csv").read_text().count("\n") == 1  # the header alone
    assert not (repo / "cl" / "learning_curves.png").exists()  # no panel to draw


def test_a_variant_on_a_shorter_profile_is_compared_with_its_own_baseline(repo):
    """`against`: variants on a short profile against the baseline on that profile."""
    short = [
        {"name": "baseline-2", "group": "2 epochs", "label": "the default", "seeds": 3,
         "set": {"train.epochs": 2}},
        {"name": "beta-1.5-2", "group": "2 epochs", "label": "beta = {train.kl.beta:g}",
         "set": {"train.epochs": 2, "train.kl.beta": 1.5}, "against": "baseline-2"},
    ]  # fmt: skip
    spec = {**CLAIMS_PLAN, "variants": [*CLAIMS_PLAN["variants"][:2], *short]}
    plan = _plan(repo / "cl", spec)
    with job_lock(repo / "cl"):
        run_plan(plan, repo / "cl" / RESULTS, FakeExecutor(repo), load_params())
    page = render_plan(repo / "cl", plan, read_rows(repo / "cl" / RESULTS))
    with (repo / "cl" / "claims.csv").open() as handle:
        found = {row["variant"]: row for row in csv.DictReader(handle)}
    # seeds 1-3 of both on 2 epochs: beta 1.5 costs exactly 0.5 nats (against the 4-epoch
    # baseline's 5 seeds it would read 0.4)
    assert float(found["beta-1.5-2"]["metric_value"]) == pytest.approx(0.5)
    assert float(found["beta-1.5"]["metric_value"]) == pytest.approx(0.4)
    assert [found[v]["against"] for v in found] == ["baseline", "baseline", "baseline-2",
                                                    "baseline-2"]  # fmt: skip
    assert found["baseline-2"]["metric_value"] == ""  # a baseline is not compared
    assert float(found["baseline-2"]["target"]) == pytest.approx(90.2 + 6 + 1)
    assert float(found["baseline"]["target"]) == pytest.approx(90.3 + 6 + 1)
    text = page.read_text()
    line = next(x for x in text.splitlines() if x.startswith("| 2 epochs: the default"))
    assert "90.20" in line and "+" not in line  # means, not differences
    assert re.match(r"\| 2 epochs: the default +\| 2 +\| 3 ", line)  # its profile's column
    assert "2 epochs: the default at 2 epochs, 96.20 nats" in text
    # machine time per profile: 6 runs of 2 epochs, 8 of 4 (the fake's runs take 1 s each)
    assert re.search(r"\| 2 epochs, up to evaluate +\| +6 \| +0\.0 \| +0\.0 \| +0 \|", text)
    assert re.search(r"\| 4 epochs, up to evaluate +\| +8 \|", text)


@pytest.mark.parametrize(
    ("change", "error"),
    [({"against": "nothing"}, "compared with 'nothing', which is not a variant of this plan"),
     ({"report": "ablation"}, "`against` needs `report: claims`")],
)  # fmt: skip
def test_a_plan_names_a_baseline_it_has(repo, change, error):
    variant = {"name": "b", "group": "g", "label": "l", "against": change.get("against", "a")}
    spec = {**CLAIMS_PLAN, "report": change.get("report", "claims"),
            "variants": [{"name": "a", "group": "g", "label": "l"}, variant]}  # fmt: skip
    with pytest.raises(VaelabError, match=re.escape(error)):
        _plan(repo / "cl", spec)
