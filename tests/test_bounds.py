"""Every numeric key of params.yaml at and beyond its bounds: refused before any work with a
message naming the key, or accepted, and then the tiny pipeline trains on it (property-based
over the accepted values); values that pass the schema but used to crash later are refused."""

from __future__ import annotations

import math
import typing
from pathlib import Path
from typing import Any

import annotated_types as at
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import TINY_TRAIN, committed_params
from vaelab.core.errors import ParamsError, TrainingDiverged, VaelabError
from vaelab.core.params import Params, Section, merge, validate
from vaelab.core.paths import Artifacts

# Sizes of the data: the tiny data set is not MNIST, so these are checked by their own tests.
DATA_SIZED = {"prepare.val_size", "prepare.subset", "classifier.train_images"}
# What the train stage reads; the rest is only validated here.
TRAINED = ("train.", "prepare.augment.", "base.seed")


def _number_type(annotation: Any) -> type | None:
    found = [a for a in (annotation, *typing.get_args(annotation)) if a in (int, float)]
    return found[0] if found else None


def bounded_keys(model: type[Section] = Params, prefix: str = "") -> list[tuple[str, type, list]]:
    """(dotted key, int or float, its bound constraints) for every numeric key; a list of
    numbers is its first item's key (``train.architecture.hidden.0``)."""
    found = []
    for name, info in model.model_fields.items():
        key, annotation, metadata = f"{prefix}{name}", info.annotation, info.metadata
        section = [a for a in (annotation, *typing.get_args(annotation)) if _is_section(a)]
        if section:
            found += bounded_keys(section[0], f"{key}.")
            continue
        if typing.get_origin(annotation) is list:
            (item,) = typing.get_args(annotation)
            item_type, *extra = typing.get_args(item) or (item,)
            key, annotation = f"{key}.0", item_type
            metadata = [m for e in extra for m in getattr(e, "metadata", [])]
        kind = _number_type(annotation)
        if kind is not None and annotation is not bool:
            found.append(
                (key, kind, [m for m in metadata if isinstance(m, at.Ge | at.Gt | at.Le | at.Lt)])
            )
    return found


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, Section)


def edge_values(kind: type, bounds: list) -> list:
    """Each bound, one step inside and outside it, and values far beyond."""
    values: list[Any] = [0, -1, 10**9] if kind is int else [0.0, -1.0, 1e308, 1e-308]
    for bound in bounds:
        edge = next(getattr(bound, a) for a in ("ge", "gt", "le", "lt") if hasattr(bound, a))
        if kind is int:
            values += [int(edge) - 1, int(edge), int(edge) + 1]
        else:
            values += [float(edge), math.nextafter(edge, -math.inf), math.nextafter(edge, math.inf)]
            values += [edge * 10, edge / 10]
    return sorted(set(values))


CASES = [
    (key, value)
    for key, kind, bounds in bounded_keys()
    if key not in DATA_SIZED
    for value in edge_values(kind, bounds)
]


def _tiny_tree() -> dict:
    tree = committed_params().model_dump()
    return merge(
        tree,
        {"prepare": {"subset": None, "val_size": 50}, "train": merge(TINY_TRAIN, {"epochs": 1})},
    )


def _with(tree: dict, key: str, value: Any) -> dict:
    tree = yaml.safe_load(yaml.safe_dump(tree))  # a deep copy
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if leaf.isdigit():
        node[int(leaf)] = value
    else:
        node[leaf] = value
    if ".architecture.filters" in key or key.endswith("architecture.dense"):
        tree["train"]["architecture"]["kind"] = "conv"
    return tree


def _outcome(key: str, value: Any) -> Params | None:
    """The params with ``key`` at ``value`` if accepted; None if refused, naming the key."""
    try:
        return validate(_with(_tiny_tree(), key, value), "params.yaml")
    except ParamsError as exc:
        leaf = key.rsplit(".", 2)[-2] if key.split(".")[-1].isdigit() else key.rsplit(".", 1)[-1]
        named = [leaf, *(["train.architecture"] if "architecture" in key else [])]
        assert any(n in str(exc) for n in named), f"{key}={value!r}: no key named:\n{exc}"
        return None


def test_every_numeric_key_is_checked_at_and_beyond_its_bounds():
    keys = {key for key, _ in CASES}
    assert len(keys) >= 40  # every numeric key of params.yaml but the data-sized ones
    unbounded = [key for key, _, bounds in bounded_keys() if len(bounds) < 2]
    assert unbounded == [], f"keys without an upper and a lower bound: {unbounded}"
    accepted = [(k, v) for k, v in CASES if _outcome(k, v) is not None]
    assert 0 < len(accepted) < len(CASES)


ACCEPTED_TRAINED = [(k, v) for k, v in CASES if k.startswith(TRAINED) and _outcome(k, v)]


@pytest.mark.slow
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=st.sampled_from(ACCEPTED_TRAINED))
def test_an_accepted_value_trains_the_tiny_pipeline(tiny_workdir, case):
    from vaelab.training.loop import train

    key, value = case
    params = tiny_workdir()  # tiny prepared data in a fresh working folder
    accepted = _outcome(key, value)
    assert accepted is not None
    epochs = 1  # the first epoch: every schedule and callback is built and runs
    run = accepted.replace(
        {"train": {"epochs": epochs}, "base": {"paths": params.base.paths.model_dump()}}
    )
    try:
        summary = train(run)
    except TrainingDiverged:  # a result of the settings (e.g. the largest learning rate)
        return
    assert summary["epochs"] >= 1 and Path(Artifacts.of(run).model).stat().st_size > 0


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"train": {"architecture": {"latent_dim": 1}}}, "latent_dim"),
        ({"prepare": {"subset": 9, "val_size": 2}, "train": {"batch_size": 2}}, "subset"),
        ({"figures": {"projection": "tsne", "projection_points": 30}}, "projection_points"),
        ({"base": {"experiment": "team/vae"}}, "base.experiment"),
        ({"train": {"lr_schedule": {"decay_epochs": 1e308}}}, "decay_epochs"),
        ({"tracking": {"system_metrics_interval": 1e-6}}, "system_metrics_interval"),
        ({"base": {"paths": {"state": "data/prepared/state"}}}, "base.paths.state"),
        ({"evaluate": {"batch_size": 1000, "chunk": 1000}}, "evaluate.chunk"),
        ({"evaluate": {"batch_size": 10000, "chunk": 10000}}, "evaluate.batch_size"),
    ],
)
def test_values_that_crashed_after_the_work_are_refused_before_it(overrides, named):
    with pytest.raises(ParamsError, match=named.replace(".", r"\.")):
        committed_params().replace(overrides)


def test_a_bad_ui_port_is_refused_with_the_variable_named():
    from vaelab.tracking.ui import ui_port

    assert ui_port("5001") == 5001
    for text in ("abc", "0", "70000", "-1", ""):
        with pytest.raises(VaelabError, match="VAELAB_UI_PORT"):
            ui_port(text)


def test_a_keras_file_whose_config_raises_type_error_is_a_clean_error(tmp_path):
    import json
    import zipfile

    from vaelab.core.errors import DataFileError
    from vaelab.model.io import load_vae

    path = tmp_path / "model.keras"
    config = {"module": "keras.layers", "class_name": "Dense", "config": {"units": "x"}}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(config))
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.14.0"}))
    with pytest.raises(DataFileError, match="not a loadable Keras model"):
        load_vae(path)


def test_a_malformed_profile_in_a_plan_is_refused_before_any_run(tmp_path, monkeypatch):
    from tests.conftest import ROOT
    from vaelab.experiments.plan import load_plan

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_bytes((ROOT / "params.yaml").read_bytes())
    plan = {"title": "t", "prefix": "p", "base": "baseline.yaml",
            "profile": {"train.epochs": "ten"}, "seeds": 1, "stage": "train",
            "arms": [{"name": "baseline", "group": "g", "label": "l"}]}  # fmt: skip
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    with pytest.raises(VaelabError, match=r"(?s)arm baseline: .*train\.epochs"):
        load_plan(tmp_path / "plan.yaml")
