"""Property-based: random params files and random bytes end in a clean error or a result."""

from __future__ import annotations

import struct

import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT
from vaelab.core.errors import DataFileError, ParamsError
from vaelab.core.params import Params, load_params
from vaelab.sources.idx import idx_bytes, parse_idx

CASES = {"params": 0, "idx": 0}
# powers of two up to 2**32 - 1: products of four of them overflow 64 bits, e.g. (2**16,) * 4
HUGE = st.sampled_from([*(2**k for k in range(32)), 2**32 - 1])
DIMENSIONS = st.one_of(st.integers(0, 40), st.integers(0, 2**32 - 1), HUGE)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
keys = st.sampled_from(
    [
        "base",
        "seed",
        "train",
        "kl",
        "beta",
        "prepare",
        "subset",
        "val_size",
        "epochs",
        "architecture",
        "hidden",
        "augment",
        "x",
        "optimizer",
    ]
)
trees = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)
    ),
    max_leaves=20,
)


def _valid_tree():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_random_params_files(tmp_path, data):
    CASES["params"] += 1
    tree = _valid_tree()
    # Mutate one random path of the valid tree, or replace the whole file.
    if data.draw(st.booleans()):
        section = data.draw(st.sampled_from(sorted(tree)))
        node = tree[section]
        while isinstance(node, dict) and node and data.draw(st.booleans()):
            key = data.draw(st.sampled_from(sorted(node)))
            if not isinstance(node[key], dict):
                break
            node = node[key]
        if isinstance(node, dict) and node:
            node[data.draw(st.sampled_from([*sorted(node), "extra"]))] = data.draw(trees)
        text = yaml.safe_dump(tree)
    else:
        text = data.draw(st.one_of(st.text(max_size=200), trees.map(yaml.safe_dump)))
    path = tmp_path / "params.yaml"
    path.write_text(text)
    try:
        params = load_params(path)
    except ParamsError as exc:
        assert str(exc).startswith(str(path))
    else:
        assert isinstance(params, Params)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.tuples(
            st.integers(0, 255),
            st.integers(0, 6),
            st.lists(DIMENSIONS, max_size=6),
            st.binary(max_size=400),
        ).map(lambda t: bytes([0, 0, t[0], t[1]]) + struct.pack(f">{len(t[2])}I", *t[2]) + t[3]),
        # well-formed headers of huge sizes, with little or no data after them
        st.tuples(
            st.lists(HUGE, min_size=1, max_size=4), st.one_of(st.just(b""), st.binary(max_size=8))
        ).map(lambda t: struct.pack(f">HBB{len(t[0])}I", 0, 8, len(t[0]), *t[0]) + t[1]),
    )
)
def test_random_bytes_to_idx_parser(data):
    CASES["idx"] += 1
    try:
        array = parse_idx(data)
    except DataFileError:
        return
    assert array.dtype == np.uint8 and idx_bytes(array) == data


def test_report_case_counts():
    """Runs last in this module: how many generated cases the properties above saw."""
    print(f"\nhypothesis cases: params files {CASES['params']}, IDX byte strings {CASES['idx']}")
    assert CASES["params"] >= 100 and CASES["idx"] >= 100
