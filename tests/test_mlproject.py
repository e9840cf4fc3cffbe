"""MLproject entry points: what MLflow builds from a parameter reaches the program as exactly
that one argument, whatever the value (no shell injection, no word splitting)."""

from __future__ import annotations

import shlex

import pytest
import yaml
from mlflow.projects import _project_spec

from tests.conftest import ROOT, committed_params
from vaelab.core.overrides import nested

HOSTILE = "x'; echo INJECTED; ' $(touch pwned) `id` a b\"c"


def _tokens(command: str) -> list[str]:
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


PROJECT = _project_spec.load_project(str(ROOT))
STRING_PARAMS = [
    (entry, name)
    for entry, spec in PROJECT._entry_points.items()
    for name, param in spec.parameters.items()
    if param.type == "string"
]


def test_every_string_parameter_is_checked():
    assert ("compare", "sweep") in STRING_PARAMS and ("sweep", "name") in STRING_PARAMS


@pytest.mark.parametrize(("entry", "name"), STRING_PARAMS)
def test_a_hostile_value_arrives_as_one_argument(entry, name, tmp_path):
    command = PROJECT.get_entry_point(entry).compute_command({name: HOSTILE}, str(tmp_path))
    tokens = _tokens(command)
    assert ";" not in tokens and "|" not in tokens and "&&" not in tokens
    assert any(token == HOSTILE or token.endswith(f"={HOSTILE}") for token in tokens), tokens


@pytest.mark.parametrize("entry", sorted(PROJECT._entry_points))
def test_every_override_an_entry_point_sets_is_a_valid_param(entry, tmp_path):
    spec = PROJECT.get_entry_point(entry)
    defaults = {name: param.default for name, param in spec.parameters.items()}
    tokens = _tokens(spec.compute_command(defaults, str(tmp_path)))
    overrides = [tokens[i + 1] for i, token in enumerate(tokens) if token == "-S"]
    if entry in ("train", "long"):
        assert overrides, "a profile without overrides"
    fixed, grids = {}, {}
    for override in overrides:
        key, _, value = override.partition("=")
        # a sweep's grid (DVC's `-S key=a,b,c`) sets each of its values in turn
        values = value.split(",") if "," in value and not value.startswith("[") else [value]
        if len(values) == 1:
            fixed[key] = yaml.safe_load(value)
        else:
            grids[key] = [yaml.safe_load(one) for one in values]
    base = committed_params().replace(nested(fixed))  # together, as DVC applies them
    for key, values in grids.items():
        for one in values:
            base.replace(nested({key: one}))  # a bad key raises, named


def test_the_long_plan_runs_what_the_long_entry_point_runs(tmp_path):
    """docs/long/plan.yaml's baseline is `mlflow run . -e long`: the same overrides, so
    the plan measures the profile users run (it trained on JAX while the entry point did not
    say; the conv net trains at half the speed there)."""
    from vaelab.core.params import load_params
    from vaelab.experiments.plan import load_plan

    tokens = _tokens(PROJECT.get_entry_point("long").compute_command({}, str(tmp_path)))
    entry = dict(tokens[i + 1].split("=", 1) for i, t in enumerate(tokens) if t == "-S")
    base = load_params(ROOT / "docs" / "long" / "baseline.yaml")  # params.yaml when planned
    entry = base.replace(nested({k: yaml.safe_load(v) for k, v in entry.items()}))
    plan = load_plan(ROOT / "docs" / "long" / "plan.yaml")
    (baseline,) = [e for e in plan.experiments
                   if e.arm == "baseline" and e.seed == entry.base.seed]  # fmt: skip
    ours = baseline.params.model_dump(exclude={"base"})
    assert ours == entry.model_dump(exclude={"base"})
