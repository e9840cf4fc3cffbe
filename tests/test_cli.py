"""The `vaelab` command: one entry point, every subcommand documented with an example."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vaelab import cli


def test_every_command_has_help_with_an_example(capsys):
    for name, (_, example) in cli.COMMANDS.items():
        with pytest.raises(SystemExit) as done:
            cli.main([name, "--help"])
        assert done.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: vaelab {name}") and f"example: {example}" in out
        assert example.split()[example.split().index("vaelab") + 1] == name
    assert set(cli.HANDLERS) == set(cli.COMMANDS)


def test_an_unknown_command_is_refused_with_the_list(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["train"])
    assert done.value.code == 2
    assert "invalid choice: 'train'" in capsys.readouterr().err


def test_the_console_script_is_installed():
    script = Path(sys.executable).with_name("vaelab")  # beside the interpreter of the venv
    assert script.is_file(), "pip install -e . installs the `vaelab` script ([project.scripts])"
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and all(name in done.stdout for name in cli.COMMANDS)


def test_a_bad_sweep_name_fails_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as done:
        cli.main(["sweep", "-S", "train.kl.beta=1,2", "--name", "a/b"])
    assert "--name 'a/b'" in str(done.value.code)


def test_a_closed_output_pipe_ends_quietly():
    """`vaelab ... | head` stops the command with 141, as cat does, and no error message."""
    script = (
        "from vaelab.core.cli import run_command\n"
        "run_command(lambda: [print(i) for i in range(10**6)])"
    )
    pipeline = f'{sys.executable} -c "$0" | head -1; echo "${{PIPESTATUS[0]}}" >&2'
    done = subprocess.run(
        ["bash", "-c", pipeline, script], capture_output=True, text=True, timeout=120
    )
    assert done.stdout == "0\n"
    assert done.stderr == "141\n"
