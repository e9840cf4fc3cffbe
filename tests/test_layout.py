"""One owner per fact: artifact paths live in vaelab.core.paths (and dvc.yaml agrees), nothing
else hard-codes them, and every image the docs show is a file in git."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, committed_params
from vaelab.core.paths import Artifacts

PATH_LITERAL = re.compile(
    r"(^|/)(results|models|data/raw|data/prepared|\.vaelab|reports)(/|$)|mlflow\.db|mlartifacts"
)


def _dvc_paths() -> set[Path]:
    """Every output, metric and plot file dvc.yaml declares, with ${base.paths.*} filled in."""
    paths = committed_params().base.paths.model_dump()
    text = (ROOT / "dvc.yaml").read_text()
    text = re.sub(r"\$\{base\.paths\.(\w+)\}", lambda m: paths[m.group(1)], text)
    found = set()
    for stage in yaml.safe_load(text)["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                found.add(Path(next(iter(entry)) if isinstance(entry, dict) else entry))
    return found


def test_dvc_yaml_outputs_are_the_paths_module_s():
    a = Artifacts.of(committed_params())
    named = {
        a.raw,
        a.prepared,
        a.model,
        a.classifier_model,
        a.train_run,
        a.train_metrics,
        a.train_history,
        a.classifier_metrics,
        a.evaluate_metrics,
        a.latent_dims,
        a.figures,
    }
    assert _dvc_paths() == named


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


@pytest.mark.parametrize("folder", ["src", "bench"])
def test_no_artifact_path_is_hard_coded_outside_the_paths_module(folder):
    owner = ROOT / "src/vaelab/core/paths.py"
    offenders = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        if path == owner:
            continue
        tree = ast.parse(path.read_text())
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docs
                and PATH_LITERAL.search(node.value)
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not offenders, "artifact paths belong in vaelab.core.paths:\n" + "\n".join(offenders)


def _embedded_images(markdown: Path) -> list[Path]:
    text = markdown.read_text()
    targets = re.findall(r"!\[[^\]]*\]\(([^)\s]+)", text) + re.findall(
        r'<img [^>]*src="([^"]+)"', text
    )
    return [(markdown.parent / t).resolve().relative_to(ROOT) for t in targets if "://" not in t]


def test_every_image_the_docs_embed_is_tracked_by_git():
    tracked = set(
        subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
    )
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    images = [(page, image) for page in pages for image in _embedded_images(page)]
    assert any(page.name == "README.md" for page, _ in images), "the README shows no figure"
    missing = [f"{p.relative_to(ROOT)} -> {i}" for p, i in images if str(i) not in tracked]
    assert not missing, f"embedded but not in git: {missing}"


def test_the_model_is_a_dvc_artifact_and_the_figures_are_image_plots():
    read = (  # DVC's own reading of dvc.yaml, in a process of its own (it sets up logging)
        "import json; from dvc.repo import Repo; "
        "a = Repo('.').artifacts.read()['dvc.yaml']['vae']; "
        "print(json.dumps({'path': a.path, 'type': a.type, 'labels': a.labels, 'desc': a.desc}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", read], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    vae = json.loads(out.strip().splitlines()[-1])
    assert Path(vae["path"]) == Artifacts.of(committed_params()).model
    assert vae["type"] == "model" and "vae" in vae["labels"] and len(vae["desc"]) > 40
    top_level = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    assert "${base.paths.results}/figures" in top_level


def test_mnist_s_shape_is_written_down_once():
    owner = ROOT / "src/vaelab/core/mnist.py"
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in sorted((ROOT / "src").rglob("*.py"))
        if path != owner
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and type(node.value) is int and node.value in (28, 784)
    ]
    assert not found, f"use vaelab.core.mnist instead of 28 / 784: {found}"


def test_the_readme_is_short_and_starts_with_the_result():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    first_screen = "\n".join(lines[:40])
    assert "![" in first_screen and "nats" in first_screen and "make repro" in first_screen


def test_the_committed_dvc_config_names_no_remote_that_one_machine_alone_has():
    from configobj import ConfigObj

    config = ConfigObj(str(ROOT / ".dvc" / "config"))
    urls = [section["url"] for name, section in config.items() if name.startswith("remote ")]
    assert all(re.match(r"^[a-z0-9+]+://", url) for url in urls), urls  # ssh://, s3://, ...
