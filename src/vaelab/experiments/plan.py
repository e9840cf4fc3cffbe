"""A study's plan as data (a YAML file): its baseline, the profile every run applies over it,
its arms (each a set of params overrides at some seeds), what each arm is compared with and
on which measures, the stress test of stability, and the arms that only choose a setting.

The baseline is params.yaml as it is (the study follows the default), or a snapshot file
beside the plan (a study of an earlier default). An experiment is known by the baseline's
digest, its seed and its *effective* overrides (where its params differ from the baseline's),
so a renamed arm keeps its runs and an arm at the baseline's setting is the baseline. Nothing
in the code gives meaning to an arm's name."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vaelab.core.atomic import write_text
from vaelab.core.errors import VaelabError
from vaelab.core.overrides import differences, nested, pairs
from vaelab.core.params import Params, load_params
from vaelab.experiments.measures import CURVE, metric

STAGES = ("train", "evaluate", "figures")  # a run up to a later stage answers an earlier one
RESULTS = ("prepare", "train", "classifier", "evaluate")  # the sections that decide results
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # usable in a git ref, as DVC experiment names are
Stage = Literal["train", "evaluate", "figures"]
Seed = Annotated[int, Field(ge=1, le=1000)]
Seeds = Annotated[int, Field(ge=1, le=1000)] | Annotated[list[Seed], Field(min_length=1)]
STRESS_DIGITS = 6  # significant digits of a stressed value (0.003 x 5 is 0.015, not ...01)
BESIDE = r"^[A-Za-z0-9][\w.-]*\.ya?ml$"  # a file name in the plan's own folder
DENSITY = ("nll", "neg_elbo", "kl", "reconstruction")  # nats of a Bernoulli or a Gaussian


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _measures(names: list[str] | None) -> list[str] | None:
    for name in names or ():
        metric(name)  # a ValueError names the known ones
    return names


class ArmSpec(_Spec):
    name: str = Field(pattern=NAME)
    group: str = Field(min_length=1)
    label: str = Field(min_length=1, description="{dotted.key} is filled from the params")
    set: dict[str, Any] = {}
    seeds: Seeds | None = None
    stage: Stage | None = None
    against: str | None = Field(None, description="the arm it is compared with; null: none")
    measures: list[str] | None = None
    stress: list[Annotated[float, Field(gt=0)]] | None = None  # factors; default the plan's

    _check_measures = field_validator("measures")(_measures)


class StressSpec(_Spec):
    """Stability: each compared arm re-run with ``key`` (its own value) times each factor, on
    a short profile (``set``), counting the seeds that diverge."""

    key: str = "train.optimizer.learning_rate"
    factors: list[Annotated[float, Field(gt=0)]] = Field(min_length=1)
    set: dict[str, Any] = {}
    stage: Stage = "train"
    seeds: Seeds | None = None  # default the plan's


class SelectionSpec(_Spec):
    """Arms of ``group`` only choose a setting: the ``over`` value of lowest ``by`` for each
    value of ``per``."""

    group: str
    by: str
    per: str
    over: str
    title: str

    _check_by = field_validator("by")(lambda v: _measures([v])[0])


class SameCodeSpec(_Spec):
    """Code versions (runs.csv's ``code``) whose differences were checked not to change a
    number, ``why``, for runs whose params have the values in ``only``: those runs pair as if
    of one version."""

    versions: list[str] = Field(min_length=2)
    why: str = Field(min_length=1)
    only: dict[str, Any] = {}


class PlanSpec(_Spec):
    title: str = Field(min_length=1)
    prefix: str = Field(pattern=NAME)
    base: str | None = Field(None, pattern=BESIDE, description="none: params.yaml as it is")
    profile: dict[str, Any] = {}
    seeds: Seeds
    stage: Stage
    against: str | None = Field(None, description="every arm's reference, unless it names one")
    measures: list[str] = ["nll"]
    correction: Literal["holm", "fdr_bh"] = "holm"
    stress: StressSpec | None = None
    selections: list[SelectionSpec] = []
    same_code: list[SameCodeSpec] = []
    readme: str | None = Field(None, description="README section its effects table fills")
    arms: list[ArmSpec] = Field(min_length=1)

    _check_measures = field_validator("measures")(_measures)

    @model_validator(mode="after")
    def _references(self) -> PlanSpec:
        names = [a.name for a in self.arms]
        if len(set(names)) < len(names):
            raise ValueError("two arms share a name")
        named = [(a.against, f"arm {a.name}'s `against`") for a in self.arms]
        for name, where in [(self.against, "the plan's `against`"), *named]:
            if name is not None and name not in names:
                raise ValueError(f"{where} names {name!r}, which is not an arm of this plan")
        for s in self.selections:
            if not any(a.group == s.group for a in self.arms):
                raise ValueError(f"selection {s.title!r}: no arm is of group {s.group!r}")
        if any(a.stress for a in self.arms) and self.stress is None:
            raise ValueError("an arm sets `stress` factors, but the plan has no `stress`")
        return self

    def reference(self, arm: ArmSpec) -> str | None:
        """The arm ``arm`` is compared with: its own `against` if it sets one, else the
        plan's; None for the reference itself and for arms that only choose a setting."""
        if "against" in arm.model_fields_set:
            return arm.against
        chooses = any(s.group == arm.group for s in self.selections)
        return None if chooses or arm.name == self.against else self.against

    def code_of(self, version: str, params: Params) -> str:
        """The code version a run of ``params`` pairs as: one version of each `same_code`
        group that applies to it (groups that share a version are one)."""
        flat, parent = params.flat(), {}

        def root(v: str) -> str:
            while parent.get(v, v) != v:
                v = parent[v]
            return v

        for group in self.same_code:
            if all(flat.get(k) == v for k, v in group.only.items()):
                for v in group.versions[1:]:
                    parent[root(v)] = root(group.versions[0])
        return root(version)


@dataclass(frozen=True)
class Experiment:
    name: str  # the DVC experiment's
    arm: str
    seed: int
    stage: str
    overrides: str  # with the baseline's digest, the identity: effective overrides (no seed)
    baseline: str
    params: Params = field(compare=False, repr=False)
    factor: float | None = None  # the stress factor; None for the arm's own run

    @property
    def key(self) -> tuple[int, str, str]:
        """What makes two experiments one: seed, effective overrides, last stage."""
        return self.seed, self.overrides, self.stage

    def row(self) -> dict[str, str]:
        """Its identity as a results row records it."""
        return {"baseline": self.baseline, "seed": str(self.seed), "overrides": self.overrides,
                "target": self.stage}  # fmt: skip

    def answered_by(self, row: dict[str, str]) -> bool:
        """Whether ``row`` (of a results file) ran this experiment, or one up to a later stage."""
        same = (row["baseline"], int(row["seed"]), row["overrides"]) == (
            self.baseline, self.seed, self.overrides)  # fmt: skip
        return same and STAGES.index(row["target"]) >= STAGES.index(self.stage)


@dataclass(frozen=True)
class Arm:
    name: str
    group: str
    label: str
    against: str | None
    measures: list[str]
    params: Params  # at its first seed
    stress: list[float]


def _label(template: str, params: Params, where: str) -> str:
    flat = params.flat()

    def fill(match: re.Match) -> str:
        if match[1] not in flat:
            raise VaelabError(f"{where}: label names {match[1]!r}, which is not a params key")
        return format(flat[match[1]], match[2] or "")

    return re.sub(r"\{([\w.]+)(?::([^}]*))?\}", fill, template)


def _seeds(seeds: int | list[int]) -> list[int]:
    return list(range(1, seeds + 1)) if isinstance(seeds, int) else seeds


def _params(base: Params, settings: dict[str, Any], where: str) -> Params:
    try:
        return base.replace(nested(settings))
    except VaelabError as exc:
        raise VaelabError(f"{where}: {exc}") from None


def digest(base: Params) -> str:
    """What identifies a baseline: its params that decide results, hashed."""
    text = json.dumps({k: base.model_dump()[k] for k in RESULTS}, sort_keys=True)
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:7]


def _units(arm: Arm, reference: Arm, where: str) -> None:
    """Refuse a measure in other units for ``arm`` than for its ``reference``: a Gaussian
    density's nats, or a validation -ELBO on grayscale images."""
    a, r = arm.params, reference.params
    likelihood = a.train.likelihood.kind != r.train.likelihood.kind
    grayscale = (a.prepare.binarize == "none") != (r.prepare.binarize == "none")
    for measure in arm.measures:
        if (measure in DENSITY and likelihood) or (
            CURVE.match(measure) and (likelihood or grayscale)
        ):
            raise VaelabError(
                f"{where}: arm {arm.name}: {measure} is in other units for it than for "
                f"{reference.name} (its likelihood or training images differ): measure it on "
                "recon_mse_grayscale or frechet_distance"
            )


def build(spec: PlanSpec, base: Params, where: str) -> Plan:
    """Every arm, and every experiment: each arm at its seeds and, stressed, at each factor."""
    arms, found, unique, key = [], [], {}, digest(base)
    for a in spec.arms:
        seeds, at = _seeds(spec.seeds if a.seeds is None else a.seeds), f"{where}: arm {a.name}"
        own = {**spec.profile, **a.set}
        first = _params(base, {**own, "base.seed": seeds[0]}, at)
        compared = spec.reference(a) or any(spec.reference(o) == a.name for o in spec.arms)
        stress = (a.stress or spec.stress.factors) if spec.stress and compared else []
        arms.append(Arm(a.name, a.group, _label(a.label, first, at), spec.reference(a),
                        a.measures or spec.measures, first, stress))  # fmt: skip
        runs = [(None, own, a.stage or spec.stage, seeds)]
        for factor in stress:
            value = float(f"{first.flat()[spec.stress.key] * factor:.{STRESS_DIGITS}g}")
            settings = {**own, **spec.stress.set, spec.stress.key: value}
            runs.append((factor, settings, spec.stress.stage,
                         _seeds(spec.stress.seeds or spec.seeds)))  # fmt: skip
        for factor, settings, stage, at_seeds in runs:
            for seed in at_seeds:
                params = _params(base, {**settings, "base.seed": seed}, at)
                overrides = " ".join(pairs(differences(params, base, RESULTS)))
                tail = "" if factor is None else f"-x{factor:g}"
                exp = Experiment(f"{spec.prefix}-{a.name}{tail}-s{seed}", a.name, seed, stage,
                                 overrides, key, params, factor)  # fmt: skip
                twin = unique.setdefault(exp.key, exp)
                if twin is not exp and factor is None and twin.factor is None:
                    raise VaelabError(f"{where}: {exp.name} runs the same experiment as "
                                      f"{twin.name}")  # fmt: skip
                found.append(exp)
    by_name = {arm.name: arm for arm in arms}
    for arm in (a for a in arms if a.against):
        _units(arm, by_name[arm.against], where)
    return Plan(spec.title, base, arms, found, spec)


@dataclass(frozen=True)
class Plan:
    title: str
    base: Params
    arms: list[Arm]
    experiments: list[Experiment]
    spec: PlanSpec = field(repr=False)

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)

    def where(self, exp: Experiment, cpu: str, code: str) -> tuple[str, str]:
        """What a pair of runs of ``exp`` shares: the CPU model and the code version (one of
        its `same_code` group)."""
        return cpu, self.spec.code_of(code, exp.params)


def load_plan(path: Path, only: set[str] | None = None) -> Plan:
    """The plan in ``path`` (a YAML `PlanSpec`), of its arms in ``only`` if given."""
    try:
        spec = PlanSpec.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise VaelabError(f"{path}: no such plan file") from None
    except (yaml.YAMLError, ValidationError) as exc:
        raise VaelabError(f"{path} is not a valid plan: {exc}") from None
    return plan_of(spec, path.parent, str(path), only)


def plan_of(spec: PlanSpec, folder: Path, where: str, only: set[str] | None = None) -> Plan:
    """``spec`` (read from ``where``) of the study in ``folder``: over params.yaml as it is,
    or over its snapshot `base` there (written from params.yaml if absent, once the plan is
    valid, so that a later change of params.yaml does not leak into the study). With
    ``only``, the experiments of those arms alone."""
    base_file = folder / spec.base if spec.base else None
    taken = base_file is not None and base_file.exists()
    plan = build(spec, load_params(base_file) if taken else load_params(), where)
    if only:
        unknown = only - {a.name for a in plan.arms}
        if unknown:
            raise VaelabError(f"{where} has no arm {', '.join(sorted(unknown))}")
        kept = [e for e in plan.experiments if e.arm in only]
        plan = Plan(plan.title, plan.base, plan.arms, kept, spec)
    if base_file is not None and not taken:
        write_text(base_file, yaml.safe_dump(plan.base.model_dump(), sort_keys=False))
    return plan
