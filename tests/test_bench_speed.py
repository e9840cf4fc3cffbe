"""bench/speed.py's own arithmetic: multiply-adds per example, and its -S settings."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import keras
import pytest

from vaelab.core.errors import VaelabError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("speed", ROOT / "bench" / "speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_multiply_adds_count_dense_and_convolution_layers(speed):
    """A conv net's FLOP rate was counted from its Dense layers alone."""
    x = keras.Input((28, 28, 1))
    y = keras.layers.Conv2D(4, 3, strides=2, padding="same")(x)  # 3*3*1*4 at 14x14 outputs
    y = keras.layers.Conv2DTranspose(2, 3, strides=2, padding="same")(y)  # 3*3*2*4 at 14x14 in
    y = keras.layers.Dense(5)(keras.layers.Flatten()(y))  # 28*28*2 inputs, 5 units
    assert speed.macs(keras.Model(x, y)) == 36 * 196 + 72 * 196 + 1568 * 5


def test_settings_reach_every_configuration_s_params(speed):
    params = speed._base(["train.architecture.kind=conv", "train.architecture.filters=[16,32]"])
    assert params.train.architecture.kind == "conv"
    assert params.train.architecture.filters == [16, 32]
    with pytest.raises(VaelabError, match="KEY=VALUE"):
        speed._base(["train.architecture.kind"])
