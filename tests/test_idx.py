import struct

import numpy as np
import pytest

from vaelab.core.errors import DataFileError
from vaelab.sources.files import load_split
from vaelab.sources.idx import idx_bytes, parse_idx, read_idx, write_idx


def test_round_trip(tmp_path):
    array = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    write_idx(tmp_path / "a", array)
    back = read_idx(tmp_path / "a")
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, array)
    assert (tmp_path / "a").read_bytes()[:4] == b"\x00\x00\x08\x03"


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda b: b"\x00\x00\x0d" + b[3:], "magic number"),
        (lambda b: b[:-1], "header"),
        (lambda b: b + b"\x00", "header"),
        (lambda b: b[:6], "header truncated"),
        (lambda b: b[:2], "too short"),
        (lambda b: b"\x00\x00\x08\x09" + b[4:], "dimensions"),
    ],
)
def test_corrupted_files_are_rejected(tmp_path, mutate, fragment):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(mutate(idx_bytes(np.zeros((3, 28, 28), np.uint8))))
    with pytest.raises(DataFileError, match=fragment) as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert "dvc checkout" in str(info.value)


def test_missing_file_names_fix(tmp_path):
    with pytest.raises(DataFileError, match=r"missing.*fetch"):
        read_idx(tmp_path / "nope")


def test_load_split_checks_labels_match_images(tiny_raw):
    images, labels = load_split(tiny_raw, "train")
    assert images.shape == (300, 28, 28) and labels.shape == (300,)
    write_idx(tiny_raw / "train-labels-idx1-ubyte", labels[:-1])
    with pytest.raises(DataFileError, match="does not match 300 images"):
        load_split(tiny_raw, "train")


def test_load_split_rejects_wrong_image_shape(tiny_raw):
    write_idx(tiny_raw / "t10k-images-idx3-ubyte", np.zeros((60, 27, 28), np.uint8))
    with pytest.raises(DataFileError, match=r"not \(N, 28, 28\)"):
        load_split(tiny_raw, "test")


def test_parse_rejects_non_digit_labels(tiny_raw):
    labels = read_idx(tiny_raw / "train-labels-idx1-ubyte").copy()
    labels[0] = 11
    write_idx(tiny_raw / "train-labels-idx1-ubyte", labels)
    with pytest.raises(DataFileError, match="label 11"):
        load_split(tiny_raw, "train")


def test_parse_idx_of_empty_shape():
    assert parse_idx(idx_bytes(np.zeros((0, 28, 28), np.uint8))).shape == (0, 28, 28)


@pytest.mark.parametrize(
    "shape", [(65536, 65536, 65536, 65536), (2**32 - 1,) * 3, (2**16, 2**16, 2**32 - 1)]
)
def test_dimensions_whose_product_overflows_64_bits_are_refused(shape):
    # (65536,) * 4 multiplies to 2**64, which wraps to 0 in int64 arithmetic
    data = struct.pack(f">HBB{len(shape)}I", 0, 8, len(shape), *shape)
    with pytest.raises(DataFileError, match="header"):
        parse_idx(data)
