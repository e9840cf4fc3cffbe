"""Atomic writes are also durable: the file is flushed before the rename and the folder after
it; new files get the umask's permissions without the process umask ever changing."""

from __future__ import annotations

import ast
import os
import stat
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from vaelab.core import atomic


@pytest.fixture
def events(monkeypatch):
    seen: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        seen.append(("fsync", "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        real_fsync(fd)

    def replace(src, dst):
        seen.append(("replace", os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    return seen


def test_text_is_flushed_renamed_then_its_folder_flushed(tmp_path, events):
    atomic.write_text(tmp_path / "a.txt", "hello")
    assert events[-3:] == [("fsync", "file"), ("replace", "a.txt"), ("fsync", "dir")]
    assert (tmp_path / "a.txt").read_text() == "hello"


def test_a_model_is_flushed_before_its_rename(tmp_path, events):
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    atomic.save_model(model, tmp_path / "m.keras")
    assert events == [("fsync", "file"), ("replace", "m.keras"), ("fsync", "dir")]
    assert keras.saving.load_model(tmp_path / "m.keras").count_params() == 3
    assert [p.name for p in tmp_path.iterdir()] == ["m.keras"]


def test_nothing_changes_the_process_umask():
    calls = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in (ROOT / "src").rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr == "umask"
    ]
    assert calls == []


def test_new_files_get_the_umask_s_permissions(tmp_path):
    probe = (
        "import os, sys; os.umask(0o027); from vaelab.core.atomic import write_text; "
        "write_text(sys.argv[1], 'x')"
    )
    subprocess.run([sys.executable, "-c", probe, str(tmp_path / "f")], check=True)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o640
