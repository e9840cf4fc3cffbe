"""A sweep on a Ray cluster against this machine's local queue: the same tiny 4-experiment sweep
(the test suite's small pipeline) with the local executor, on one 1-CPU Ray node and on two,
side by side, each in a fresh project, with a bare git remote, a DVC remote and an MLflow store.

python bench/ray_sweep.py [--rounds 1]     # from the project root, VAELAB_MNIST_MIRROR set
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ray.cluster_utils import Cluster

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.conftest import commit_all, make_project, run  # noqa: E402

GRID = "train.kl.beta=0.5,2,4,8"
ONE_THREAD = {"OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}


def sweep(folder: Path, nodes: int) -> tuple[float, list[float]]:
    """The sweep's wall time and each experiment's, on ``nodes`` 1-CPU Ray nodes (0: locally,
    one experiment at a time on one thread, as a Ray task runs)."""
    mirror = Path(os.environ["VAELAB_MNIST_MIRROR"])
    project = make_project(folder / "project", mirror, folder / "dvc-remote")
    commit_all(project, "baseline")
    run(["git", "init", "-q", "--bare", "-b", "main", str(folder / "remote.git")], folder)
    run(["git", "remote", "add", "origin", str(folder / "remote.git")], project)
    run(["git", "push", "-q", "origin", "main"], project)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'tracking.db'}"
    os.environ.update(VAELAB_CLONES=str(folder / "clones"), RAY_USAGE_STATS_ENABLED="0")
    command = [sys.executable, "-m", "vaelab", "sweep", "-S", GRID, "--name", "bench"]
    cluster = None
    if nodes:
        cluster = Cluster(True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        command += ["--ray", cluster.address]
    started = time.perf_counter()
    try:
        env = {} if nodes else ONE_THREAD
        run([*command, "--out", "report"], project, env)
    finally:
        if cluster:
            cluster.shutdown()
    wall = time.perf_counter() - started
    with (project / "report" / "experiments.csv").open() as rows:
        return wall, [float(row["wall_seconds"]) for row in csv.DictReader(rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    configs = {"local queue, one at a time": 0, "Ray, one 1-CPU node": 1, "Ray, two 1-CPU nodes": 2}
    walls: dict[str, list[float]] = {name: [] for name in configs}
    each: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, nodes in configs.items():  # in turns, so a busy machine slows all alike
            with tempfile.TemporaryDirectory(prefix="vaelab-bench-") as folder:
                wall, seconds = sweep(Path(folder), nodes)
            walls[name].append(wall)
            each[name].extend(seconds)
            print(f"{name}: {wall:.0f} s", file=sys.stderr, flush=True)
    local = statistics.median(walls["local queue, one at a time"])
    local_each = statistics.fmean(each["local queue, one at a time"])
    print("| configuration | sweep wall time, s | s per experiment (mean) | vs the local queue |")
    print("|---|---|---|---|")
    for name in configs:
        wall, per = statistics.median(walls[name]), statistics.fmean(each[name])
        ratio = f"{local / wall:.2f}x"
        print(f"| {name} | {wall:.0f} | {per:.1f} ({per - local_each:+.1f}) | {ratio} |")


if __name__ == "__main__":
    main()
