"""params.yaml validation: every bad input stops the stage with a message naming key and value."""

from __future__ import annotations

import re

import pytest
import yaml
from pydantic import BaseModel

from tests.conftest import ROOT, run_module
from vaelab.core.errors import ParamsError
from vaelab.core.params import Params, flatten, load_params, merge


def _committed() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def _write(tmp_path, data):
    """params.yaml as committed with ``data`` merged in (or ``data`` itself if a string)."""
    path = tmp_path / "params.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(merge(_committed(), data)))
    return path


def test_committed_params_are_valid_and_explicit():
    params = load_params(ROOT / "params.yaml")
    assert set(flatten(_committed())) == set(params.flat())


def _schema_defaults(model: type[BaseModel], prefix: str = "") -> list[str]:
    found = []
    for name, field in model.model_fields.items():
        if not field.is_required():
            found.append(f"{prefix}{name}")
        inner = field.annotation
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            found += _schema_defaults(inner, f"{prefix}{name}.")
    return found


def test_params_yaml_is_the_only_source_of_defaults():
    assert _schema_defaults(Params) == []


@pytest.mark.parametrize("key", ["train.epochs", "prepare.augment.enabled", "base.paths.state"])
def test_a_missing_key_is_named_not_defaulted(tmp_path, key):
    tree = _committed()
    *sections, leaf = key.split(".")
    node = tree
    for section in sections:
        node = node[section]
    del node[leaf]
    with pytest.raises(ParamsError, match=rf"{re.escape(key)}: missing"):
        load_params(_write(tmp_path, yaml.safe_dump(tree)))


def test_mlproject_defaults_are_params_yaml_values():
    mlproject = yaml.safe_load((ROOT / "MLproject").read_text())
    flat = load_params(ROOT / "params.yaml").flat()
    checked = 0
    for entry in mlproject["entry_points"].values():
        for key, name in re.findall(r"-S ([\w.]+)=\{(\w+)\}", entry["command"]):
            default = entry["parameters"][name]["default"]
            if isinstance(default, str) and "," in default:
                continue  # a sweep's grid of values, not one default
            assert default == flat[key], f"MLproject {name}={default!r} vs params.yaml {key}"
            checked += 1
    assert checked >= 5


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        ({"prepare": {"val_sise": 5}}, ["prepare.val_sise", "unknown key", "val_size"]),
        ({"train": {"kl": {"beta": "four"}}}, ["train.kl.beta", "'four'", "valid number"]),
        ({"train": {"kl": {"beta": -1}}}, ["train.kl.beta = -1", "greater than or equal to 0"]),
        ({"prepare": {"binarize": "yes"}}, ["prepare.binarize = 'yes'", "'dynamic'"]),
        ({"prepare": {"subset": 100}}, ["val_size=10000", "subset=100"]),
        (
            {"train": {"lr_schedule": {"name": "cosine"}, "reduce_on_plateau": {"enabled": True}}},
            ["lr_schedule.name='cosine'", "reduce_on_plateau"],
        ),
        (
            {"prepare": {"subset": 500, "val_size": 100}, "train": {"batch_size": 1000}},
            ["batch_size=1000", "400 training images"],
        ),
        ({"train": {"epochs": 1.5}}, ["train.epochs = 1.5", "integer"]),
        ({"train": {"backend": "torch"}}, ["train.backend = 'torch'", "'jax'"]),
        ({"train": {"architecture": {"filters": [8, 8, 8]}}}, ["train.architecture.filters"]),
        (
            {"train": {"prior": {"kind": "mixture"}, "kl": {"free_bits": 0.5}}},
            ["train.kl.free_bits=0.5", "train.prior.kind to 'standard'"],
        ),
        ({"train": {"prior": {"components": 0}}}, ["train.prior.components = 0"]),
        ({"fetch": {"mirrors": ["ftp.example.org"]}}, ["not a usable URL"]),
        ({"fetch": {"mirrors": ["http://example.org"]}}, ["plain http", "allow_http"]),
        (
            {"bogus": {}},
            ["bogus", "unknown key", "base, tracking, fetch, prepare, train, classifier, evaluate"],
        ),
    ],
)
def test_invalid_params_are_refused(tmp_path, data, fragments):
    with pytest.raises(ParamsError) as info:
        load_params(_write(tmp_path, data))
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("train: [unclosed", "cannot be read as YAML"), ("- a list", "must be a mapping")],
)
def test_unreadable_yaml(tmp_path, text, fragment):
    with pytest.raises(ParamsError, match=fragment):
        load_params(_write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")


def test_ints_are_accepted_for_floats(tmp_path):
    assert load_params(_write(tmp_path, {"train": {"kl": {"beta": 4}}})).train.kl.beta == 4.0


@pytest.mark.parametrize("stage", ["fetch", "prepare", "train"])
def test_stage_exits_nonzero_before_any_work(tmp_path, stage):
    _write(tmp_path, {"prepare": {"val_size": -3}})
    result = run_module(f"vaelab.stages.{stage}", tmp_path)
    assert result.returncode != 0
    assert "prepare.val_size = -3" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


# Lowest versions without the published advisories that touch what this project does (loading
# .keras files in safe mode, serving MLflow with basic auth, running tqdm).
ADVISORY_FLOORS = {
    "keras": (3, 14),  # CVE-2025-8747, CVE-2025-9906, CVE-2026-1462: safe-mode bypasses
    "mlflow": (3, 16, 1),  # GHSA-gq3w-7jj3-x7gr: default admin password of basic auth
    "tqdm": (4, 66, 3),  # CVE-2024-34062
    "scikit-learn": (1, 5),  # CVE-2024-5206
}


def test_dependency_floors_exclude_known_advisories():
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {}
    for dep in deps:
        match = re.match(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", dep)
        if match:
            floors[match.group(1).lower()] = tuple(int(x) for x in match.group(2).split("."))
    for name, fixed in ADVISORY_FLOORS.items():
        assert floors[name] >= fixed, f"{name}>={floors[name]} admits releases before {fixed}"
