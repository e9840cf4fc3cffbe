"""The one renderer of every study: from its plan and runs.csv, the comparisons the plan asks
for (each arm against its reference, seed pair by seed pair, on each of its measures, and
stressed, on its divergences), corrected as one family; then effects.csv, arms.csv, the
forest plot, the rate-distortion plane, the learning curves and the page's generated part
(and, where the plan names one, the README's section)."""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tabulate import tabulate

from vaelab.core.atomic import write_text
from vaelab.core.overrides import differences, pairs
from vaelab.core.params import load_params
from vaelab.core.paths import project_root
from vaelab.experiments import figures
from vaelab.experiments.measures import (
    CURVE,
    DIVERGED,
    LEVEL,
    METRICS,
    Effect,
    adjust,
    divergence,
    from_curve,
    metric,
    paired,
    spread,
    verdict,
)
from vaelab.experiments.plan import RESULTS, Arm, Experiment, Plan
from vaelab.experiments.results import OK, Rows, answers, history_file
from vaelab.report.plots import save_figure

PAGE, EFFECTS, ARMS = "study.md", "effects.csv", "arms.csv"
FOREST, RATE_DISTORTION, CURVES = "forest.png", "rate_distortion.png", "learning_curves.png"
START, END = "<!-- {} generated: start -->", "<!-- {} generated: end -->"
CORRECTIONS = {"holm": "Holm's step-down", "fdr_bh": "Benjamini-Hochberg's false discovery rate"}
NAN = math.nan


@dataclass(frozen=True)
class Run:
    exp: Experiment
    row: dict[str, str]
    history: list[dict[str, float]]
    where: tuple[str, str]  # what a pair shares: the CPU model and (the plan's) code version

    @property
    def ok(self) -> bool:
        return self.row["status"] == OK

    def value(self, measure: str) -> float | None:
        """The run's ``measure``; None where it has none (diverged, never reached, not run)."""
        if not self.ok:
            return None
        if CURVE.match(measure):
            return from_curve(measure, self.history)
        return float(self.row[measure]) if self.row.get(measure) else None


Runs = dict[tuple[str, float | None], list[Run]]  # by arm and stress factor


def runs(folder: Path, plan: Plan, rows: Rows) -> Runs:
    """Every recorded run of each (arm, stress factor), with its kept history."""
    found: Runs = defaultdict(list)
    for exp in plan.experiments:
        path, history = history_file(folder, exp), []
        if path.exists():
            with path.open(newline="", encoding="utf-8") as handle:
                history = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(handle)]
        for row in answers(rows, exp):
            where = plan.where(exp, row["cpu"], row["code"])
            found[(exp.arm, exp.factor)].append(Run(exp, row, history, where))
    return found


@dataclass
class Comparison:
    """One test of the page: ``arm`` against ``reference`` on ``measure`` (at a stress
    ``factor``), seed pair by seed pair."""

    arm: Arm
    reference: Arm
    measure: str
    factor: float | None
    effect: Effect
    p: float
    left_out: list[str] = field(default_factory=list)  # pairs not compared, and why
    counts: str = ""  # stressed: "k of n" diverged, arm and reference
    fails: bool = False  # every run of the arm diverged
    adjusted: float = NAN

    @property
    def verdict(self) -> str:
        if self.fails:
            return "fails to train"
        e = self.effect
        if self.measure == DIVERGED:
            return verdict(e.n, e.difference, self.adjusted, ("diverges less", "diverges more"))
        return verdict(e.n, e.difference, self.adjusted)


def _pairs(mine: list[Run], theirs: list[Run], measure: str) -> tuple[list, list[str]]:
    """(arm run, reference run) of each seed and place both ran at; why the others are out."""
    by = {(r.exp.seed, r.where): r for r in theirs}
    seeds = {r.exp.seed for r in theirs}
    found, why = [], Counter()
    for run in mine:
        other = by.get((run.exp.seed, run.where))
        if other is None:
            why["other CPU or code" if run.exp.seed in seeds else "no reference run"] += 1
        elif measure != DIVERGED and None in (run.value(measure), other.value(measure)):
            never = CURVE.match(measure) and run.ok and other.ok
            why["never reached the threshold" if never else "diverged"] += 1
        else:
            found.append((run, other))
    return found, [f"{n} {reason}" for reason, n in why.items()]


def compare(plan: Plan, every: Runs) -> list[Comparison]:
    """Every comparison the plan asks for that has runs, adjusted as one family."""
    found = []
    for arm in (a for a in plan.arms if a.against is not None):
        reference = plan.arm(arm.against)
        mine, theirs = every[(arm.name, None)], every[(reference.name, None)]
        fails = bool(mine) and not any(r.ok for r in mine)
        for measure in arm.measures:
            matched, out = _pairs(mine, theirs, measure)
            if matched or out:
                effect = paired([a.value(measure) - r.value(measure) for a, r in matched])
                found.append(Comparison(arm, reference, measure, None, effect, effect.p, out,
                                        fails=fails))  # fmt: skip
        for factor in (f for f in arm.stress if f in reference.stress):
            matched, out = _pairs(every[(arm.name, factor)], every[(reference.name, factor)],
                                  DIVERGED)  # fmt: skip
            if matched:
                found.append(stressed(arm, reference, factor, matched, out))
    for c, p in zip(found, adjust([c.p for c in found], plan.spec.correction), strict=True):
        c.adjusted = p
    return found


def stressed(arm: Arm, reference: Arm, factor: float, matched: list, out: list[str]):
    """The stressed comparison: the runs of each that diverged, Fisher's exact test."""
    mine, theirs = [not a.ok for a, _ in matched], [not r.ok for _, r in matched]
    effect = paired([float(a) - float(r) for a, r in zip(mine, theirs, strict=True)])
    counts = (sum(mine), len(mine)), (sum(theirs), len(theirs))
    text = f"{counts[0][0]} of {counts[0][1]} against {counts[1][0]} of {counts[1][1]}"
    return Comparison(arm, reference, DIVERGED, factor, effect, divergence(*counts), out, text)


def _interval(low: float, high: float, digits: int) -> str:
    return "" if math.isnan(low) else f"[{low:+.{digits}f}, {high:+.{digits}f}]"


def effects_csv(found: list[Comparison]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    numbers = ("difference", "low", "high", "boot_low", "boot_high", "p")
    head = ["arm", "group", "label", "against", "measure", "factor", "pairs", *numbers]
    writer.writerow([*head, "p_adjusted", "improved", "verdict", "counts", "left_out"])
    for c in found:
        values = [getattr(c.effect, k) for k in numbers] + [c.adjusted, c.effect.improved]
        writer.writerow([c.arm.name, c.arm.group, c.arm.label, c.reference.name, c.measure,
                         "" if c.factor is None else f"{c.factor:g}", c.effect.n,
                         *("" if math.isnan(x) else f"{x:.6g}" for x in values), c.verdict,
                         c.counts, "; ".join(c.left_out)])  # fmt: skip
    return out.getvalue()


@dataclass(frozen=True)
class Summary:
    """One arm's finished runs (own runs, not stressed): mean and sd of every metric."""

    arm: Arm
    n: int
    failed: int
    means: dict[str, float]
    sds: dict[str, float]
    same_as: str = ""  # an earlier arm whose runs equal this one's seed for seed


FINGERPRINT = tuple(m for m in METRICS if not m.endswith("_seconds"))


def summaries(plan: Plan, every: Runs) -> list[Summary]:
    found, seen = [], []
    for arm in plan.arms:
        mine = every[(arm.name, None)]
        if not mine:
            continue
        good = [r for r in mine if r.ok]
        values = {m: [v for r in good if (v := r.value(m)) is not None] for m in METRICS}
        values = {m: v for m, v in values.items() if v}
        twin = next((name for name, theirs in seen if _same(good, theirs)), "")
        seen.append((arm.name, good))
        means = {m: statistics.fmean(v) for m, v in values.items()}
        sds = {m: statistics.stdev(v) for m, v in values.items() if len(v) > 1}
        found.append(Summary(arm, len(good), len(mine) - len(good), means, sds, twin))
    return found


def _same(mine: list[Run], theirs: list[Run]) -> bool:
    """At least two runs, each equal in every result to the other arm's at its seed: the
    arm's switch never acted."""
    other = {r.exp.seed: [r.row[c] for c in FINGERPRINT] for r in theirs}
    return len(mine) >= 2 and all(
        other.get(r.exp.seed) == [r.row[c] for c in FINGERPRINT] for r in mine
    )


def arms_csv(found: list[Summary]) -> str:
    shown = [m for m in METRICS if any(m in s.means for s in found)]
    out = io.StringIO()
    writer = csv.DictWriter(out, ["arm", "group", "label", "against", "runs", "diverged",
                                  "same_as", *(f"{m}_{k}" for m in shown for k in ("mean", "sd"))],
                            lineterminator="\n")  # fmt: skip
    writer.writeheader()
    for s in found:
        row = {"arm": s.arm.name, "group": s.arm.group, "label": s.arm.label,
               "against": s.arm.against or "", "runs": s.n, "diverged": s.failed,
               "same_as": s.same_as}  # fmt: skip
        row |= {f"{m}_mean": f"{v:.6g}" for m, v in s.means.items()}
        writer.writerow(row | {f"{m}_sd": f"{v:.6g}" for m, v in s.sds.items()})
    return out.getvalue()


def effects_table(found: list[Comparison], summary: dict[str, Summary]) -> str:
    """The page's (and README's) table: each comparison, the plan's measures in order, most
    helpful first within one."""
    order = {m: i for i, m in enumerate(dict.fromkeys(c.measure for c in found))}

    def rank(c: Comparison) -> tuple:
        size = c.effect.difference
        return order[c.measure], c.factor or 0, math.inf if math.isnan(size) else size

    lines = []
    for c in sorted(found, key=rank):
        e, note = c.effect, "; ".join(c.left_out)
        if (s := summary.get(c.arm.name)) and s.same_as and c.measure != DIVERGED:
            twin = summary[s.same_as].arm
            note = "; ".join(filter(None, [f"never acted: same runs as {twin.group}: "
                                           f"{twin.label}", note]))  # fmt: skip
        if c.measure == DIVERGED:
            measure, effect, boot = f"diverged at {c.factor:g}x its rate", c.counts, ""
        else:
            digits = metric(c.measure).digits
            measure, boot = metric(c.measure).label, _interval(e.boot_low, e.boot_high, digits)
            effect = "" if not e.n else f"{e.difference:+.{digits}f} " + (
                _interval(e.low, e.high, digits) or "(one pair)")  # fmt: skip
        better = "" if math.isnan(e.improved) else f"{e.improved:.0%}"
        p = "" if math.isnan(c.adjusted) else f"{c.adjusted:.2g}"
        lines.append([f"{c.arm.group}: {c.arm.label}", measure, c.reference.label, str(e.n),
                      effect, boot, better, p, c.verdict, note])  # fmt: skip
    if not lines:
        return "No arm has a run beside its reference's yet.\n"
    head = ["arm", "measure", "against", "pairs", f"Δ, mean [{LEVEL:.0%} t]", "bootstrap",
            "arm better", "p adjusted", "verdict", "note"]  # fmt: skip
    if len({line[2] for line in lines}) == 1:  # one reference: named in the header
        head[2:3], lines = [], [[*line[:2], *line[3:]] for line in lines]
        head[0] = f"arm (against {found[0].reference.group}: {found[0].reference.label})"
    return tabulate(lines, head, tablefmt="github", disable_numparse=True) + "\n"


def baseline_notice(plan: Plan) -> str:
    """Whether the study's baseline is today's params.yaml, and where it differs if not."""
    today = load_params()
    changed = differences(plan.base, today, RESULTS)
    if not changed:
        return "**Baseline**: today's `params.yaml`."
    then = " ".join(f"`{p}`" for p in pairs(changed))
    now = " ".join(f"`{p}`" for p in pairs(differences(today, plan.base, RESULTS)))
    return (f"> **Not today's default.** This study's baseline has {then}, where today's "
            f"`params.yaml` has {now}.")  # fmt: skip


def header(plan: Plan, rows: Rows, found: list[Comparison]) -> list[str]:
    """The baseline, the plan, progress, machines and code, and the statistics."""
    used = [r for r in rows if any(e.answered_by(r) for e in plan.experiments)]
    done = sum(bool(answers(used, e)) for e in plan.experiments)
    todo = len({e.key for e in plan.experiments})
    hours = sum(float(row["wall_seconds"]) for row in used) / 3600
    cpus = "; ".join(f"{n} on {cpu}" for cpu, n in Counter(r["cpu"] for r in used).items())
    same = [f"{', '.join(f'`{v}`' for v in g.versions)} ({g.why}"
            + (f"; for runs with {' '.join(pairs(g.only))})" if g.only else ")")
            for g in plan.spec.same_code]  # fmt: skip
    failed = "; ".join(f"`{e.name}` {outcome(row)}" for e in plan.experiments if e.factor is None
                       for row in answers(used, e) if row["status"] != OK)  # fmt: skip
    tested, base = sum(not math.isnan(c.p) for c in found), plan.arms[0].params
    return [
        baseline_notice(plan),
        "",
        f"**Plan**: [plan.yaml](plan.yaml); test NLL with k = {base.evaluate.importance_samples}"
        f" on all {base.prepare.test_size:,} test images. `base.seed` draws the validation "
        "split, the test set's binarization, the initial weights, the shuffling and the "
        "binarization and augmentation draws, so two arms at one seed are a pair.",
        "",
        f"**Progress**: {min(done, todo)} of {todo} runs done ({hours:.1f} h of wall time): "
        f"{cpus or 'none yet'}; {len({r['code'] for r in used})} version(s) of the code that "
        "makes the numbers" + (f", of which these pair as one: {'; '.join(same)}." if same else ".")
        + (f" {len(rows) - len(used)} rows of runs.csv ran on another baseline: not used."
           if len(used) < len(rows) else ""),
        *(["", f"**Diverged** (a result, not a failure of the machine): {failed}."]
          if failed else []),
        "",
        f"**Statistics**: each arm against its reference seed by seed: the mean of the "
        f"per-seed differences, its paired-t {LEVEL:.0%} interval and a percentile bootstrap "
        "over the pairs, and the share of pairs the arm wins. A pair is two runs of one CPU "
        "model and code version (the runner runs a reference's seed again where an arm needs "
        "it); the note counts the seeds left out. Divergence at a stress factor: Fisher's "
        f"exact test of the counts. The {tested} p-values of this page are one family, adjusted"
        f" by {CORRECTIONS[plan.spec.correction]}; a verdict only where the adjusted p < "
        f"{1 - LEVEL:.2g}. Lower is better everywhere.",
    ]  # fmt: skip


def outcome(row: dict[str, str]) -> str:
    """A failed row's status up to its first sentence's end (runs.csv keeps all of it)."""
    return row["status"].split(". ")[0].rstrip(".")


def stability(plan: Plan, every: Runs) -> list[str]:
    """Diverged runs of each stressed arm at each factor of its own rate; each arm's seed
    spread of its first measure, with its bootstrap interval."""
    out, factors = [], sorted({f for a in plan.arms for f in a.stress})
    lines = [[f"{arm.group}: {arm.label}",
              *(f"{sum(not r.ok for r in done)} of {len(done)}" if (done := every[(arm.name, f)])
                else "" for f in factors)] for arm in plan.arms if arm.stress]  # fmt: skip
    if lines:
        spec = plan.spec.stress
        profile = " ".join(f"`{p}`" for p in pairs(spec.set)) or "the arm's own profile"
        out += [f"### Stability: runs that diverge with `{spec.key}` raised", "",
                f"Each arm on {profile}, up to {spec.stage}, at its own `{spec.key}` times each "
                "factor; diverged runs of those done:", "",
                tabulate(lines, ["arm", *(f"x{f:g}" for f in factors)], tablefmt="github",
                         disable_numparse=True), ""]  # fmt: skip
    spreads = []
    for arm in plan.arms:
        name, m = arm.measures[0], metric(arm.measures[0])
        values = [v for r in every[(arm.name, None)] if (v := r.value(name)) is not None]
        sd, low, high = spread(values) if len(values) > 1 else (NAN,) * 3
        if not math.isnan(sd):
            digits = m.digits + 1
            spreads.append([f"{arm.group}: {arm.label}", m.label, len(values),
                            f"{sd:.{digits}f}", _interval(low, high, digits)])  # fmt: skip
    if spreads:
        head = ["arm", "measure", "runs", "sd over seeds", f"bootstrap {LEVEL:.0%}"]
        out += ["### Seed spread", "", tabulate(spreads, head, tablefmt="github",
                                                disable_numparse=True), ""]  # fmt: skip
    return out


def selection_tables(plan: Plan, every: Runs) -> list[str]:
    """Each selection: its arms by their ``per`` and ``over`` settings, the lowest ``by``
    chosen for each ``per``."""
    out = []
    for s in plan.spec.selections:
        table = []
        for arm in (a for a in plan.arms if a.group == s.group):
            flat, done = arm.params.flat(), every[(arm.name, None)]
            score = done[0].value(s.by) if done and done[0].ok else "diverged" if done else ""
            table.append([flat[s.per], flat[s.over], score])
        for line in table:
            scored = [t for t in table if t[0] == line[0] and isinstance(t[2], float)]
            line.append("yes" if line is min(scored, key=lambda t: t[2], default=None) else "")
        text = tabulate(table, [s.per, s.over, metric(s.by).label, "chosen"], tablefmt="github",
                        missingval="")  # fmt: skip
        out += [f"### {s.title}", "", text, ""]
    return out


def cost(plan: Plan, rows: Rows) -> list[str]:
    """Machine time per profile (epochs, last stage): runs done, hours, the median minutes a
    run, and the runs still to go."""
    done: dict[tuple[int, str], list[float]] = defaultdict(list)
    todo: Counter[tuple[int, str]] = Counter()
    for exp in {e.key: e for e in plan.experiments}.values():
        key = (exp.params.train.epochs, exp.stage)
        found = answers(rows, exp)
        done[key] += [float(r["wall_seconds"]) for r in found]
        todo[key] += not found
    lines = []
    for (epochs, stage), seconds in sorted((k, done[k]) for k in done.keys() | todo.keys()):
        median = statistics.median(seconds) / 60 if seconds else None
        left = todo[(epochs, stage)]
        lines.append([f"{epochs} epochs, up to {stage}", len(seconds), sum(seconds) / 3600,
                      median, left, None if median is None else left * median / 60])  # fmt: skip
    head = ["profile", "runs done", "hours", "minutes per run (median)", "runs to go",
            "hours to go (at that median)"]  # fmt: skip
    table = tabulate(lines, head, tablefmt="github", floatfmt=("", "", ".1f", ".1f", "", ".1f"),
                     missingval="")  # fmt: skip
    return ["### Machine time", "", table, ""]


def curves(plan: Plan, every: Runs) -> list[figures.Panel]:
    """A learning-curve panel per arm measured on its validation curve, over its reference's,
    the plan's thresholds marked."""
    shown = []
    for arm in (a for a in plan.arms if a.against):
        found = [CURVE.match(m).groups() for m in arm.measures if CURVE.match(m)]
        mine = [r.history for r in every[(arm.name, None)] if r.history]
        if found and mine:
            theirs = [r.history for r in every[(arm.against, None)] if r.history]
            title = f"{arm.group}: {arm.label}, {arm.params.train.epochs} epochs"
            lines = sorted({float(t) for _, t, _ in found if t})
            shown.append(figures.Panel(title, arm.label, mine, plan.arm(arm.against).label,
                                       theirs, lines))  # fmt: skip
    return shown


def replace_section(text: str, name: str, content: str) -> str:
    """``text`` with what stands between the ``name`` markers replaced by ``content``."""
    start, end = START.format(name), END.format(name)
    head, _, rest = text.partition(start)
    _, found, tail = rest.partition(end)
    if not found:
        raise ValueError(f"no '{start}' ... '{end}' markers")
    return f"{head}{start}\n{content}{end}{tail}"


def render(folder: Path, plan: Plan, rows: Rows, results: str = "runs.csv") -> Path:
    """effects.csv, arms.csv, the figures and the page's generated part (and the README's
    section the plan names) from the ``rows`` of the ``results`` file; returns the page."""
    every = runs(folder, plan, rows)
    found, arms = compare(plan, every), summaries(plan, every)
    write_text(folder / EFFECTS, effects_csv(found))
    write_text(folder / ARMS, arms_csv(arms))
    table = effects_table(found, {s.arm.name: s for s in arms})
    shown = []
    if forest := figures.forest(found):
        save_figure(forest, folder / FOREST)
        shown += [f"![effects]({FOREST})", ""]
    if points := figures.rate_points(arms):
        title = "Rate-distortion of every arm (star: a reference), mean and sd over seeds"
        save_figure(figures.rate_distortion(points, title), folder / RATE_DISTORTION)
        shown += [f"![rate-distortion plane]({RATE_DISTORTION})", ""]
    if panels := curves(plan, every):
        save_figure(figures.learning_curves(panels), folder / CURVES)
        shown += [f"![learning curves]({CURVES})", ""]
    histories = "; every epoch: [histories/](histories)" if (folder / "histories").exists() else ""
    generated = [*header(plan, rows, found), "", table, *shown, *stability(plan, every),
                 *selection_tables(plan, every), *cost(plan, rows),
                 f"In numbers: [{EFFECTS}]({EFFECTS}) (every test), [{ARMS}]({ARMS}) (every "
                 f"arm's means); every run: [{results}]({results}){histories}.", ""]  # fmt: skip
    page = folder / PAGE
    empty = f"# {plan.title}\n\n{START.format('study')}\n{END.format('study')}\n"
    text = page.read_text(encoding="utf-8") if page.exists() else empty
    write_text(page, replace_section(text, "study", "\n".join(generated)))
    readme = project_root() / "README.md"
    if plan.spec.readme and readme.parent in folder.resolve().parents and readme.exists():
        block = f"{baseline_notice(plan)}\n\n{table}"
        write_text(readme, replace_section(readme.read_text(), plan.spec.readme, block))
    return page
