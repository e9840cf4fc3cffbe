"""prepare: normalization, seeded split sizes, binarization modes, strict loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import committed_params, tiny_mnist_arrays
from vaelab.core.errors import DataFileError
from vaelab.core.params import Prepare, merge
from vaelab.core.paths import Artifacts
from vaelab.data.prepare import prepare, split_indices
from vaelab.data.prepared import load_prepared, model_data, read_meta
from vaelab.sources.idx import idx_bytes


def _cfg(**cfg) -> Prepare:
    base = committed_params().prepare.model_dump()
    return Prepare.model_validate(merge(base, {"val_size": 50, "subset": None, **cfg}))


def _at(prepared: Path, raw: Path = Path("raw")) -> Artifacts:
    return Artifacts(raw, prepared, Path("models"), Path("results"), Path(".vaelab"))


def _prepare(raw, out, seed=7, **cfg):
    return prepare(_at(out, raw), _cfg(**cfg), seed)


def test_split_sizes_and_disjointness(tiny_raw, tmp_path):
    meta = _prepare(tiny_raw, tmp_path / "p")
    assert meta["sizes"] == {"train": 250, "val": 50, "test": 60}
    train_x, _ = load_prepared(_at(tmp_path / "p"), "train")
    assert train_x.shape == (250, 28, 28, 1) and train_x.dtype == np.float32
    assert train_x.min() >= 0.0 and train_x.max() == 1.0
    train_idx, val_idx = split_indices(300, _cfg(), 7)
    assert not set(train_idx) & set(val_idx)
    assert len(set(train_idx) | set(val_idx)) == 300


def test_split_is_seeded(tiny_raw, tmp_path):
    _prepare(tiny_raw, tmp_path / "a", seed=1)
    _prepare(tiny_raw, tmp_path / "b", seed=1)
    _prepare(tiny_raw, tmp_path / "c", seed=2)
    a, b, c = (load_prepared(_at(tmp_path / d), "val")[1] for d in "abc")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert read_meta(_at(tmp_path / "a"))["md5"] == read_meta(_at(tmp_path / "b"))["md5"]


def test_subset_caps_train_and_test(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, array in tiny_mnist_arrays(n_train=300, n_test=150).items():
        (raw / name).write_bytes(idx_bytes(array))
    meta = _prepare(raw, tmp_path / "p", subset=200, val_size=20)
    assert meta["sizes"] == {"train": 180, "val": 20, "test": 150}
    meta = _prepare(raw, tmp_path / "q", subset=120, val_size=10)
    assert meta["sizes"] == {"train": 110, "val": 10, "test": 120}


def test_static_binarization_is_one_seeded_draw(tiny_raw, tmp_path):
    _prepare(tiny_raw, tmp_path / "g", binarize="none")
    _prepare(tiny_raw, tmp_path / "s", binarize="static")
    _prepare(tiny_raw, tmp_path / "s2", binarize="static")
    gray, _ = load_prepared(_at(tmp_path / "g"), "train")
    binary, _ = load_prepared(_at(tmp_path / "s"), "train", key="x_static")
    np.testing.assert_array_equal(load_prepared(_at(tmp_path / "s"), "train")[0], gray)
    np.testing.assert_array_equal(binary, model_data(_at(tmp_path / "s"), "train")[0])
    assert set(np.unique(binary)) <= {0.0, 1.0}
    np.testing.assert_array_equal(
        binary, load_prepared(_at(tmp_path / "s2"), "train", "x_static")[0]
    )
    # A Bernoulli draw with p = intensity: its mean tracks the grayscale mean.
    assert abs(binary.mean() - gray.mean()) < 0.01
    assert np.all(binary[gray == 0.0] == 0.0) and np.all(binary[gray == 1.0] == 1.0)


def test_dynamic_is_recorded_not_applied(tiny_raw, tmp_path):
    _prepare(tiny_raw, tmp_path / "d", binarize="dynamic")
    x, _ = load_prepared(_at(tmp_path / "d"), "train")
    assert len(np.unique(x)) > 2
    assert read_meta(_at(tmp_path / "d"))["binarize"] == "dynamic"
    np.testing.assert_array_equal(model_data(_at(tmp_path / "d"), "train", fixed_draw=False)[0], x)
    # Evaluation splits get one fixed draw: binary, reproducible, different per split.
    val = model_data(_at(tmp_path / "d"), "val")[0]
    assert set(np.unique(val)) <= {0.0, 1.0}
    np.testing.assert_array_equal(val, model_data(_at(tmp_path / "d"), "val")[0])


def test_bernoulli_evaluation_of_grayscale_training_gets_the_dynamic_draw(tiny_raw, tmp_path):
    _prepare(tiny_raw, tmp_path / "g", binarize="none")
    _prepare(tiny_raw, tmp_path / "d", binarize="dynamic")
    gray, _ = load_prepared(_at(tmp_path / "g"), "test")
    np.testing.assert_array_equal(model_data(_at(tmp_path / "g"), "test")[0], gray)
    binary = model_data(_at(tmp_path / "g"), "test", binary=True)[0]
    assert set(np.unique(binary)) == {0.0, 1.0}
    # The very images a dynamically binarized run of the same seed is measured on.
    np.testing.assert_array_equal(binary, model_data(_at(tmp_path / "d"), "test")[0])
    np.testing.assert_array_equal(
        model_data(_at(tmp_path / "g"), "train", fixed_draw=False, binary=True)[0],
        load_prepared(_at(tmp_path / "g"), "train")[0],
    )


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupted_prepared_file_names_file_and_fix(tiny_raw, tmp_path, damage):
    _prepare(tiny_raw, tmp_path / "p")
    path = tmp_path / "p" / "train.npz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3] if damage == "truncate" else b"\x00" * 100)
    with pytest.raises(DataFileError) as info:
        load_prepared(_at(tmp_path / "p"), "train")
    assert "train.npz" in str(info.value) and "dvc checkout" in str(info.value)


def test_pickled_arrays_are_refused(tmp_path):
    np.savez(tmp_path / "train.npz", x=np.array([{"a": 1}], dtype=object), y=np.zeros(1))
    with pytest.raises(DataFileError, match="corrupted"):
        load_prepared(_at(tmp_path), "train")


def test_out_of_range_pixels_are_refused(tmp_path):
    np.savez(
        tmp_path / "val.npz", x=np.full((2, 28, 28, 1), 2.0, np.float32), y=np.zeros(2, np.uint8)
    )
    with pytest.raises(DataFileError, match=r"outside \[0, 1\]"):
        load_prepared(_at(tmp_path), "val")
