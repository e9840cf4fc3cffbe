"""params.yaml validation: every bad input stops the stage with a message naming key and value."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT
from vaelab.errors import ParamsError
from vaelab.params import Params, load_params


def _write(tmp_path, data):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_committed_params_are_valid_and_explicit():
    params = load_params(ROOT / "params.yaml")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    # Every knob is written out in params.yaml, none silently defaulted.
    from vaelab.params import flatten

    assert set(flatten(raw)) == set(params.flat())


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
        ({"train": {"architecture": {"filters": [8, 8, 8]}}}, ["train.architecture.filters"]),
        ({"fetch": {"mirrors": ["ftp.example.org"]}}, ["not a URL"]),
        (
            {"bogus": {}},
            ["bogus", "unknown key", "base, fetch, prepare, train, classifier, evaluate, figures"],
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


def test_ints_are_accepted_for_floats():
    assert Params.model_validate({"train": {"kl": {"beta": 4}}}).train.kl.beta == 4.0


@pytest.mark.parametrize("stage", ["fetch", "prepare", "train"])
def test_stage_exits_nonzero_before_any_work(tmp_path, stage):
    _write(tmp_path, {"prepare": {"val_size": -3}})
    result = subprocess.run(
        [sys.executable, "-m", f"vaelab.stages.{stage}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "prepare.val_size = -3" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
