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
    DIVERGED,
    EPOCHS_TO,
    LEVEL,
    METRICS,
    Effect,
    adjust,
    epochs_to,
    metric,
    paired,
    paired_divergence,
    verdict,
)
from vaelab.experiments.plan import RESULTS, Arm, Experiment, Plan
from vaelab.experiments.results import OK, Rows, answer, history_file
from vaelab.report.plots import save_figure

PAGE, EFFECTS, ARMS = "study.md", "effects.csv", "arms.csv"
FOREST, RATE_DISTORTION, CURVES = "forest.png", "rate_distortion.png", "learning_curves.png"
START, END = "<!-- {} generated: start -->", "<!-- {} generated: end -->"
CORRECTIONS = {"holm": "Holm's step-down", "fdr_bh": "Benjamini-Hochberg's false discovery rate"}


@dataclass(frozen=True)
class Run:
    exp: Experiment
    row: dict[str, str]
    history: list[dict[str, float]]
    code: str  # its code version, or the first of those the plan says give the same numbers

    @property
    def ok(self) -> bool:
        return self.row["status"] == OK

    def value(self, measure: str) -> float | None:
        """The run's ``measure``; None where it has none (diverged, never reached, not run)."""
        if not self.ok:
            return None
        if found := EPOCHS_TO.match(measure):
            reached = epochs_to(self.history, float(found[1])) if self.history else None
            return None if reached is None else float(reached)
        return float(self.row[measure]) if self.row.get(measure) else None

    @property
    def where(self) -> tuple[str, str]:
        """What a pair must share: the CPU model and the code version."""
        return self.row["cpu"], self.code


def runs(folder: Path, plan: Plan, rows: Rows) -> dict[tuple[str, float | None], list[Run]]:
    """The recorded runs of each (arm, stress factor), with their kept histories."""
    found: dict[tuple[str, float | None], list[Run]] = defaultdict(list)
    same = plan.spec.code_groups()
    for exp in plan.experiments:
        if (row := answer(rows, exp)) is None:
            continue
        path, history = history_file(folder, exp), []
        if path.exists():
            with path.open(newline="", encoding="utf-8") as handle:
                history = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(handle)]
        found[(exp.arm, exp.factor)].append(
            Run(exp, row, history, same.get(row["code"], row["code"]))
        )
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
    counts: str = ""  # stressed: "k of n" diverged, arm and reference
    failed: int = 0  # the arm's runs that diverged, of its ``runs`` (not stressed ones)
    runs: int = 0
    left_out: list[str] = field(default_factory=list)  # pairs not compared, and why
    adjusted: float = math.nan

    @property
    def verdict(self) -> str:
        if self.measure == DIVERGED:
            return verdict(self.effect, self.adjusted, ("diverges less", "diverges more"))
        if self.failed == self.runs > 0:
            return "fails to train"
        return verdict(self.effect, self.adjusted)


def _pairs(mine: list[Run], theirs: list[Run], measure: str) -> tuple[list, list[str]]:
    """(arm run, reference run) at each shared seed whose two runs ran on the same CPU model
    and code; and why the other seeds are left out."""
    by_seed = {r.exp.seed: r for r in theirs}
    found, why = [], Counter()
    for run in mine:
        other = by_seed.get(run.exp.seed)
        if other is None:
            why["no reference run at its seed"] += 1
        elif run.where != other.where:
            why["other CPU or code"] += 1
        elif measure != DIVERGED and (run.value(measure) is None or other.value(measure) is None):
            never = EPOCHS_TO.match(measure) and run.ok and other.ok
            why["never reached the threshold" if never else "diverged"] += 1
        else:
            found.append((run, other))
    return found, [f"{n} {reason}" for reason, n in why.items()]


def compare(plan: Plan, every: dict) -> list[Comparison]:
    """Every comparison the plan asks for that has runs, adjusted as one family."""
    found = []
    for arm in (a for a in plan.arms if a.against is not None):
        reference = plan.arm(arm.against)
        mine, theirs = every[(arm.name, None)], every[(reference.name, None)]
        for measure in arm.measures:
            matched, left_out = _pairs(mine, theirs, measure)
            if matched or left_out:
                effect = paired([a.value(measure) - r.value(measure) for a, r in matched])
                failed = sum(not r.ok for r in mine)
                found.append(
                    Comparison(
                        arm,
                        reference,
                        measure,
                        None,
                        effect,
                        effect.p,
                        left_out=left_out,
                        failed=failed,
                        runs=len(mine),
                    )
                )
        for factor in arm.stress if factor_in(reference, arm) else []:
            stressed = every[(arm.name, factor)], every[(reference.name, factor)]
            matched, left_out = _pairs(*stressed, DIVERGED)
            if matched:
                found.append(divergence(arm, reference, factor, matched, left_out))
    for c, p in zip(found, adjust([c.p for c in found], plan.spec.correction), strict=True):
        c.adjusted = p
    return found


def divergence(arm: Arm, reference: Arm, factor: float, matched: list, left_out: list[str]):
    """The stressed comparison: which runs of each seed pair diverged."""
    mine, theirs = [not a.ok for a, _ in matched], [not r.ok for _, r in matched]
    effect = paired([float(a) - float(r) for a, r in zip(mine, theirs, strict=True)])
    counts = f"{sum(mine)} of {len(mine)} against {sum(theirs)} of {len(theirs)}"
    p = paired_divergence(mine, theirs)
    return Comparison(arm, reference, DIVERGED, factor, effect, p, counts, left_out)


def factor_in(reference: Arm, arm: Arm) -> bool:
    """Whether ``reference`` is stressed at ``arm``'s factors too (else nothing to pair)."""
    return set(arm.stress) <= set(reference.stress)


def _number(value: float, digits: int, sign: bool = True) -> str:
    return "" if math.isnan(value) else f"{value:{'+' if sign else ''}.{digits}f}"


def effect_text(c: Comparison) -> str:
    """ "mid [low, high]" in the measure's decimals (a one-pair difference alone)."""
    e, digits = c.effect, (0 if c.measure == DIVERGED else metric(c.measure).digits)
    if c.measure == DIVERGED:
        return c.counts
    if math.isnan(e.low):
        return f"{_number(e.difference, digits)} (one pair: no interval)" if e.n else ""
    return f"{_number(e.difference, digits)} [{_number(e.low, digits)}, {_number(e.high, digits)}]"


def effects_csv(found: list[Comparison]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["arm", "group", "label", "against", "measure", "factor", "pairs",
                     "difference", "low", "high", "p", "p_adjusted", "improved", "verdict",
                     "counts", "left_out"])  # fmt: skip
    for c in found:
        e = c.effect
        numbers = [f"{x:.6g}" if not math.isnan(x) else "" for x in
                   (e.difference, e.low, e.high, c.p, c.adjusted, e.improved)]  # fmt: skip
        writer.writerow([c.arm.name, c.arm.group, c.arm.label, c.reference.name, c.measure,
                         "" if c.factor is None else f"{c.factor:g}", e.n, *numbers, c.verdict,
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


def summaries(plan: Plan, every: dict) -> list[Summary]:
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
        found.append(Summary(arm, len(good), len(mine) - len(good),
                             {m: statistics.fmean(v) for m, v in values.items()},
                             {m: statistics.stdev(v) if len(v) > 1 else math.nan
                              for m, v in values.items()}, twin))  # fmt: skip
    return found


def _same(mine: list[Run], theirs: list[Run]) -> bool:
    """At least two runs, each equal in every result to the other arm's at its seed: the
    arm's switch never acted."""
    other = {r.exp.seed: [r.row[c] for c in FINGERPRINT] for r in theirs}
    return len(mine) >= 2 and all(
        other.get(r.exp.seed) == [r.row[c] for c in FINGERPRINT] for r in mine
    )


def arms_csv(found: list[Summary]) -> str:
    columns = [f"{m}_{k}" for m in METRICS if any(m in s.means for s in found)
               for k in ("mean", "sd")]  # fmt: skip
    out = io.StringIO()
    writer = csv.DictWriter(out, ["arm", "group", "label", "against", "runs", "diverged",
                                  "same_as", *columns], lineterminator="\n")  # fmt: skip
    writer.writeheader()
    for s in found:
        row = {"arm": s.arm.name, "group": s.arm.group, "label": s.arm.label,
               "against": s.arm.against or "", "runs": s.n, "diverged": s.failed,
               "same_as": s.same_as}  # fmt: skip
        row |= {f"{m}_mean": f"{v:.6g}" for m, v in s.means.items()}
        row |= {f"{m}_sd": f"{v:.6g}" for m, v in s.sds.items() if not math.isnan(v)}
        writer.writerow(row)
    return out.getvalue()


def effects_table(found: list[Comparison], summary: dict[str, Summary]) -> str:
    """The page's (and README's) table: each comparison, the plan's measures in order, most
    helpful first within one."""
    order = {m: i for i, m in enumerate(dict.fromkeys(c.measure for c in found))}

    def rank(c: Comparison) -> tuple:
        size = c.effect.difference
        return order[c.measure], c.factor or 0, math.inf if math.isnan(size) else size

    shown = sorted(found, key=rank)
    lines = []
    for c in shown:
        note = "; ".join(c.left_out)
        if (s := summary.get(c.arm.name)) and s.same_as and c.measure != DIVERGED:
            twin = summary[s.same_as].arm
            note = f"never acted: same runs as {twin.group}: {twin.label}" + (
                f"; {note}" if note else "")  # fmt: skip
        p = "" if math.isnan(c.adjusted) else f"{c.adjusted:.2g}"
        measure = (f"diverged at {c.factor:g}x its rate" if c.measure == DIVERGED
                   else metric(c.measure).label)  # fmt: skip
        lines.append([f"{c.arm.group}: {c.arm.label}", measure, c.reference.label,
                      str(c.effect.n), effect_text(c), p, c.verdict, note])  # fmt: skip
    if not lines:
        return "No arm has a run beside its reference's yet.\n"
    head = ["arm", "measure", "against", "pairs", f"Δ, mean of pairs [{LEVEL:.0%} CI]",
            "p (adjusted)", "verdict", "note"]  # fmt: skip
    if len({line[2] for line in lines}) == 1:  # one reference: named in the header
        head[2:3], lines = [], [[*line[:2], *line[3:]] for line in lines]
        head[0] = f"arm (against {found[0].reference.group}: {found[0].reference.label})"
    return tabulate(lines, head, tablefmt="github", disable_numparse=True) + "\n"


def baseline_notice(plan: Plan) -> str:
    """Whether the study's baseline is today's params.yaml, and where it differs if not."""
    today = load_params()
    changed = differences(plan.base, today, RESULTS)
    if not changed:
        return "**Baseline**: [baseline.yaml](baseline.yaml) is today's `params.yaml`."
    then = " ".join(f"`{p}`" for p in pairs(changed))
    now = " ".join(f"`{p}`" for p in pairs(differences(today, plan.base, RESULTS)))
    return (f"> **Not today's default.** This study's baseline ([baseline.yaml](baseline.yaml)) "
            f"has {then}, where today's `params.yaml` has {now}.")  # fmt: skip


def header(plan: Plan, rows: Rows, found: list[Comparison]) -> list[str]:
    """The baseline, the plan, progress, machines and code, and the statistics."""
    done = sum(answer(rows, e) is not None for e in plan.experiments)
    todo = len({(e.seed, e.overrides, e.stage) for e in plan.experiments})
    hours = sum(float(row["wall_seconds"]) for row in rows) / 3600
    cpus = "; ".join(f"{n} on {cpu}" for cpu, n in Counter(r["cpu"] for r in rows).items())
    codes = len({r["code"] for r in rows})
    failed = "; ".join(f"`{e.name}` {outcome(row)}" for e in plan.experiments if e.factor is None
                       and (row := answer(rows, e)) and row["status"] != OK)  # fmt: skip
    same = [f"{', '.join(f'`{v}`' for v in g.versions)} ({g.why})" for g in plan.spec.same_code]
    tested = sum(not math.isnan(c.p) for c in found)
    base = plan.arms[0].params  # the profile over the baseline
    return [
        baseline_notice(plan),
        "",
        f"**Plan**: [plan.yaml](plan.yaml); test NLL with k = {base.evaluate.importance_samples}"
        f" on all {base.prepare.test_size:,} test images. `base.seed` draws the validation "
        "split, the test set's binarization, the initial weights, the shuffling and the "
        "binarization and augmentation draws, so two arms at one seed are a pair.",
        "",
        f"**Progress**: {min(done, todo)} of {todo} runs done ({hours:.1f} h of wall time): "
        f"{cpus or 'none yet'}; {codes} version(s) of the code that makes the numbers"
        + (f", of which these pair as one: {'; '.join(same)}." if same else "."),
        *(
            ["", f"**Diverged** (a result, not a failure of the machine): {failed}."]
            if failed
            else []
        ),
        "",
        f"**Statistics**: each arm against its reference seed by seed: the mean of the "
        f"per-seed differences with its paired-t {LEVEL:.0%} interval; a pair is two runs on "
        "the same CPU model and code version, other seeds are left out (the note says how "
        f"many). Divergence at a stress rate: the exact McNemar test of the pairs. The {tested}"
        f" p-values of this page are one family, adjusted by {CORRECTIONS[plan.spec.correction]}"
        f"; a verdict only where the adjusted p < {1 - LEVEL:.2g}. Lower is better everywhere.",
    ]


def outcome(row: dict[str, str]) -> str:
    """A failed row's status up to its first sentence's end (runs.csv keeps all of it)."""
    return row["status"].split(". ")[0].rstrip(".")


def stress_table(plan: Plan, every: dict) -> list[str]:
    """Diverged runs of each stressed arm at each factor of its own rate."""
    factors = sorted({f for a in plan.arms for f in a.stress})
    lines = []
    for arm in (a for a in plan.arms if a.stress):
        cells = []
        for f in factors:
            done = every[(arm.name, f)]
            cells.append(f"{sum(not r.ok for r in done)} of {len(done)}" if done else "")
        if any(cells):
            lines.append([f"{arm.group}: {arm.label}", *cells])
    if not lines:
        return []
    key, spec = plan.spec.stress.key, plan.spec.stress
    profile = " ".join(f"`{p}`" for p in pairs(spec.set)) or "the arm's own"
    head = ["arm", *(f"x{f:g}" for f in factors)]
    return [f"### Stability: runs that diverge with `{key}` raised", "",
            f"Each arm on a short profile ({profile}, up to {spec.stage}) at its own "
            f"`{key}` times each factor; diverged runs of those done:", "",
            tabulate(lines, head, tablefmt="github", disable_numparse=True), ""]  # fmt: skip


def selection_tables(plan: Plan, every: dict) -> list[str]:
    """Each selection: its arms by their ``per`` setting and what else they set, the one of
    lowest ``by`` chosen for each ``per``."""
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
        head = [s.per, s.over, metric(s.by).label, "chosen"]
        text = tabulate(table, head, tablefmt="github", missingval="")
        out += [f"### {s.title}", "", text, ""]
    return out


def cost(plan: Plan, rows: Rows) -> list[str]:
    """Machine time per profile (epochs, last stage): runs done, hours, the median minutes a
    run, and the runs still to go."""
    done: dict[tuple[int, str], list[float]] = defaultdict(list)
    todo: Counter[tuple[int, str]] = Counter()
    unique = {(e.seed, e.overrides, e.stage): e for e in plan.experiments}
    for exp in unique.values():
        key = (exp.params.train.epochs, exp.stage)
        if (row := answer(rows, exp)) is None:
            todo[key] += 1
        else:
            done[key].append(float(row["wall_seconds"]))
    lines = []
    for epochs, stage in sorted(done.keys() | todo.keys()):
        seconds, left = done[(epochs, stage)], todo[(epochs, stage)]
        median = statistics.median(seconds) if seconds else None
        lines.append([f"{epochs} epochs, up to {stage}", len(seconds), sum(seconds) / 3600,
                      None if median is None else median / 60, left,
                      None if median is None else left * median / 3600])  # fmt: skip
    head = ["profile", "runs done", "hours", "minutes per run (median)", "runs to go",
            "hours to go (at that median)"]  # fmt: skip
    table = tabulate(lines, head, tablefmt="github", floatfmt=("", "", ".1f", ".1f", "", ".1f"),
                     missingval="")  # fmt: skip
    return ["### Machine time", "", table, ""]


def curves(plan: Plan, every: dict) -> list[figures.Panel]:
    """A learning-curve panel per compared arm with histories in its reference's units (both
    measured on `epochs_to_*`), the plan's thresholds marked."""
    shown = []
    for arm in plan.arms:
        thresholds = [float(m[1]) for x in arm.measures if (m := EPOCHS_TO.match(x))]
        if arm.against is None or not thresholds:
            continue
        mine = [r.history for r in every[(arm.name, None)] if r.history]
        theirs = [r.history for r in every[(arm.against, None)] if r.history]
        if mine:
            title = f"{arm.group}: {arm.label}, {arm.params.train.epochs} epochs"
            shown.append(figures.Panel(title, arm.label, mine, plan.arm(arm.against).label,
                                       theirs, thresholds))  # fmt: skip
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
    points = figures.rate_points(arms)
    if points:
        title = "Rate-distortion of every arm (star: a reference), mean and sd over seeds"
        save_figure(figures.rate_distortion(points, title), folder / RATE_DISTORTION)
        shown += [f"![rate-distortion plane]({RATE_DISTORTION})", ""]
    if panels := curves(plan, every):
        save_figure(figures.learning_curves(panels), folder / CURVES)
        shown += [f"![learning curves]({CURVES})", ""]
    generated = [
        *header(plan, rows, found),
        "",
        table,
        *shown,
        *stress_table(plan, every),
        *selection_tables(plan, every),
        *cost(plan, rows),
        f"In numbers: [{EFFECTS}]({EFFECTS}) (every test), [{ARMS}]({ARMS}) (every arm's "
        f"means); every run: [{results}]({results})"
        + ("; every epoch: [histories/](histories)." if (folder / "histories").exists() else "."),
        "",
    ]
    page = folder / PAGE
    empty = f"# {plan.title}\n\n{START.format('study')}\n{END.format('study')}\n"
    text = page.read_text(encoding="utf-8") if page.exists() else empty
    write_text(page, replace_section(text, "study", "\n".join(generated)))
    readme = project_root() / "README.md"
    if plan.spec.readme and readme.parent in folder.resolve().parents and readme.exists():
        write_text(readme, replace_section(readme.read_text(), plan.spec.readme, table))
    return page
