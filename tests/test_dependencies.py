"""dvc.yaml's code deps are exactly what each stage imports, so `dvc repro` cannot go stale."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, commit_all, run

SRC = ROOT / "src"
# Modules that only talk to MLflow: they log what a stage computed (the model as MLflow
# serves it included: `serving/`), and keep run ids and unsent logging under
# base.paths.state, which is no DVC output. The one value of theirs that reaches a DVC
# output is the run id in results/train/run.json, which is new for every training anyway.
# So editing them must not re-run a 15-minute training; nothing they import is followed.
ONLY_TALK_TO_MLFLOW = ("vaelab.tracking", "vaelab.serving")


def module_file(name: str) -> Path | None:
    """The source file of module ``name`` under src/, or None if it is not a vaelab module."""
    base = SRC / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Every vaelab module ``path`` imports, at any depth of the file (functions included),
    with the packages Python imports on the way."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] != "vaelab":
                continue
            parts = name.split(".")
            found.update(
                ".".join(parts[:i])
                for i in range(1, len(parts) + 1)
                if module_file(".".join(parts[:i]))
            )
    return found


def stage_closure(module: str) -> set[Path]:
    """The source files running ``python -m <module>`` imports, transitively."""
    seen: set[str] = set()
    parts = module.split(".")  # `python -m a.b.c` imports a, a.b, then runs a.b.c
    todo = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    while todo:
        name = todo.pop()
        if name in seen or name.startswith(ONLY_TALK_TO_MLFLOW):
            continue
        seen.add(name)
        todo.extend(imported_modules(module_file(name)))
    return {module_file(name).relative_to(ROOT) for name in seen}


def stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def code_deps(stage: dict) -> list[Path]:
    return [Path(dep) for dep in stage["deps"] if str(dep).startswith("src/")]


def covered(path: Path, deps: list[Path]) -> bool:
    return any(path == dep or dep in path.parents for dep in deps)


def module_of(stage: dict) -> str:
    return stage["cmd"].split("python -m ")[1].split()[0]


@pytest.mark.parametrize("name", list(stages()))
def test_every_imported_file_is_a_dep(name):
    stage = stages()[name]
    deps = code_deps(stage)
    missing = sorted(str(p) for p in stage_closure(module_of(stage)) if not covered(p, deps))
    assert not missing, f"stage {name!r} imports files dvc.yaml does not list: {missing}"


@pytest.mark.parametrize("name", list(stages()))
def test_every_code_dep_is_imported(name):
    stage = stages()[name]
    closure = stage_closure(module_of(stage))
    unused = [str(d) for d in code_deps(stage) if not any(covered(p, [d]) for p in closure)]
    assert not unused, f"stage {name!r} lists deps it never imports: {unused}"


def test_the_walker_sees_function_level_imports_and_leaves_out_only_mlflow_code():
    closure = stage_closure("vaelab.stages.train")
    # imported only inside train()'s body
    assert Path("src/vaelab/model/vae.py") in closure
    assert Path("src/vaelab/training/pipeline.py") in closure
    # train() imports the tracking code too: seen, and left out by the rule alone
    assert "vaelab.tracking.runs" in imported_modules(SRC / "vaelab/training/loop.py")
    assert Path("src/vaelab/tracking/runs.py") not in closure


def test_tracking_is_a_leaf_that_imports_only_core():
    """`tracking/` talks to MLflow about what others computed: it imports nothing of vaelab
    but `core/` (so every stage and command may import it, and it none of them)."""
    for path in (SRC / "vaelab/tracking").glob("*.py"):
        allowed = ("vaelab.core", "vaelab.tracking")
        outside = {m for m in imported_modules(path) if m != "vaelab"} - {
            m for m in imported_modules(path) if m.startswith(allowed)
        }
        assert not outside, f"{path.name} imports {sorted(outside)}"


@pytest.mark.slow
def test_changing_the_binarization_code_makes_train_and_evaluate_stale(project, real_mirror):
    """The staleness a hand-kept deps list let through: the draw that defines the validation
    and test sets changes, so every number computed on them must be recomputed."""
    env = {"VAELAB_MNIST_MIRROR": str(real_mirror)}
    run(["dvc", "repro"], project, env)
    commit_all(project, "pipeline run")
    assert "up to date" in run(["dvc", "status"], project)
    code = project / "src/vaelab/data/prepared.py"
    text = code.read_text()
    assert "rng = np.random.default_rng([seed, 2, stream])" in text
    code.write_text(text.replace("[seed, 2, stream]", "[seed, 3, stream]"))
    status = json.loads(run(["dvc", "status", "--json"], project))
    for stage in ("prepare", "train", "evaluate", "figures"):
        assert stage in status, f"{stage} not reported changed: {status}"
    assert "fetch" not in status and "classifier" not in status
    shutil.rmtree(project / ".dvc" / "tmp", ignore_errors=True)


def test_the_lock_records_the_code_in_the_tree_and_not_its_bytecode():
    """dvc.lock's hashes of each stage's code deps are those of the .py files here, whatever
    __pycache__ this interpreter wrote on import (a fresh clone's `dvc status` is then clean
    but for the data its cache lacks)."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        stale = [
            f"{stage.addressing}: {dep.def_path}"
            for stage in repo.index.stages
            for dep in stage.deps
            if str(dep.def_path).startswith("src/") and dep.get_hash() != dep.hash_info
        ]
    assert not stale, f"re-run these stages (dvc repro) and commit dvc.lock: {stale}"
