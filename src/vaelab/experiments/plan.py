"""A job's plan as data (a YAML file): its baseline params, the profile every run applies
over it, and its variants, each a set of params overrides at some seeds. An experiment is
known by its seed and *effective* overrides (where its params differ from the baseline's), so
a renamed variant keeps its runs and a variant at the baseline's setting is the baseline."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vaelab.core.atomic import write_text
from vaelab.core.errors import VaelabError
from vaelab.core.overrides import differences, nested, pairs
from vaelab.core.params import Params, load_params

STAGES = ("train", "evaluate", "figures")  # a run up to a later stage answers an earlier one
RESULTS = ("prepare", "train", "classifier", "evaluate")  # the sections that decide results
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # usable in a git ref, as DVC experiment names are
Stage = Literal["train", "evaluate", "figures"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VariantSpec(_Spec):
    name: str = Field(pattern=NAME)
    group: str = Field(min_length=1)
    label: str = Field(min_length=1, description="{dotted.key} is filled from the params")
    set: dict[str, Any] = {}
    seeds: int | list[int] | None = None
    stage: Stage | None = None
    metric: str = "test_nll"
    against: str = Field("baseline", description="the variant it is compared with (claims)")


class PlanSpec(_Spec):
    prefix: str = Field(pattern=NAME)
    base: str = Field(description="the baseline's params file, beside the plan")
    profile: dict[str, Any] = {}
    seeds: int | list[int]
    stage: Stage
    report: Literal["ablation", "claims"] = "ablation"  # the page rendered from its runs
    variants: list[VariantSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _references(self) -> PlanSpec:
        names = {v.name for v in self.variants}
        for v in self.variants:
            if v.against != "baseline" and self.report != "claims":
                raise ValueError(
                    f"variant {v.name}: `against` needs `report: claims` (the "
                    "ablation report compares every variant with `baseline`)"
                )
            if v.against not in names | {"baseline"}:
                raise ValueError(
                    f"variant {v.name} is compared with {v.against!r}, which is "
                    "not a variant of this plan: name one of its variants"
                )
        return self


@dataclass(frozen=True)
class Experiment:
    name: str  # the DVC experiment's
    variant: str
    group: str
    label: str
    metric: str
    seed: int
    stage: str
    overrides: str  # the identity: effective overrides, canonical (no seed)
    params: Params = field(compare=False, repr=False)
    against: str = "baseline"  # the variant its report compares it with

    def answered_by(self, seed: int, overrides: str, stage: str) -> bool:
        return (seed, overrides) == (self.seed, self.overrides) and (
            STAGES.index(stage) >= STAGES.index(self.stage)
        )


def _label(template: str, params: Params, where: str) -> str:
    flat = params.flat()

    def fill(match: re.Match) -> str:
        if match[1] not in flat:
            raise VaelabError(f"{where}: label names {match[1]!r}, which is not a params key")
        return format(flat[match[1]], match[2] or "")

    return re.sub(r"\{([\w.]+)(?::([^}]*))?\}", fill, template)


def experiments(spec: PlanSpec, base: Params, where: str) -> list[Experiment]:
    found: dict[tuple, Experiment] = {}  # by identity and stage
    for v in spec.variants:
        seeds = spec.seeds if v.seeds is None else v.seeds
        for seed in range(1, seeds + 1) if isinstance(seeds, int) else seeds:
            try:
                params = base.replace(nested({**spec.profile, **v.set, "base.seed": seed}))
            except VaelabError as exc:
                raise VaelabError(f"{where}: variant {v.name}: {exc}") from None
            overrides = " ".join(pairs(differences(params, base, RESULTS)))
            label = _label(v.label, params, f"{where}: variant {v.name}")
            exp = Experiment(f"{spec.prefix}-{v.name}-s{seed}", v.name, v.group, label, v.metric,
                             seed, v.stage or spec.stage, overrides, params, v.against)  # fmt: skip
            twin = found.setdefault((seed, overrides, exp.stage), exp)
            if twin is not exp:
                raise VaelabError(f"{where}: {exp.name} runs the same experiment as {twin.name}")
    return list(found.values())


@dataclass(frozen=True)
class Plan:
    base: Params
    experiments: list[Experiment]
    report: str = "ablation"

    def baseline_of(self, exp: Experiment) -> str:
        """The variant ``exp`` is compared with: itself if it is some variant's baseline,
        else its ``against``."""
        named = any(e.against == exp.variant for e in self.experiments)
        return exp.variant if named or exp.variant == "baseline" else exp.against

    def variants(self) -> list[Experiment]:
        """The first experiment of each variant, in the plan's order."""
        return list({e.variant: e for e in reversed(self.experiments)}.values())[::-1]


def load_plan(path: Path, only: set[str] | None = None) -> Plan:
    """The plan in ``path`` (a YAML `PlanSpec`), of its variants in ``only`` if given."""
    try:
        spec = PlanSpec.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise VaelabError(f"{path}: no such plan file") from None
    except (yaml.YAMLError, ValidationError) as exc:
        raise VaelabError(f"{path} is not a valid plan: {exc}") from None
    return plan_of(spec, path.parent, str(path), only)


def plan_of(spec: PlanSpec, folder: Path, where: str, only: set[str] | None = None) -> Plan:
    """``spec`` (read from ``where``) of the job in ``folder``; its base file there is written
    from params.yaml as it is now if absent, so a later change of params.yaml does not leak
    into the job."""
    base_file = folder / spec.base
    if not base_file.exists():
        write_text(base_file, yaml.safe_dump(load_params().model_dump(), sort_keys=False))
    base = load_params(base_file)
    if only:
        unknown = only - {v.name for v in spec.variants}
        if unknown:
            raise VaelabError(f"{where} has no variant {', '.join(sorted(unknown))}")
        spec = spec.model_copy(update={"variants": [v for v in spec.variants if v.name in only]})
    return Plan(base, experiments(spec, base, where), spec.report)
