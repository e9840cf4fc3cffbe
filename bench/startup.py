"""Start-up cost of each stage module, and whether it drags in TensorFlow, JAX or MLflow.

    python bench/startup.py [--repeat 5]

Each stage module is imported in a fresh interpreter (what `dvc repro` pays per stage
before any work); the median wall time of ``--repeat`` runs is printed, and whether the
import loaded each heavy framework (``python -X importtime`` says which modules cost what).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

STAGES = ["fetch", "prepare", "train", "classifier", "evaluate", "figures"]
PROBE = (
    "import sys, vaelab.stages.{stage}; "
    "print(*(m in sys.modules for m in ('tensorflow', 'jax', 'mlflow')))"
)


def measure(stage: str, repeat: int) -> tuple[float, str]:
    times, flags = [], ""
    for _ in range(repeat):
        start = time.perf_counter()
        flags = subprocess.run(
            [sys.executable, "-c", PROBE.format(stage=stage)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        times.append(time.perf_counter() - start)
    return statistics.median(times), flags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"{'stage':<11} {'import s':>9}  tensorflow  jax    mlflow")
    for stage in STAGES:
        seconds, (tf, jax, mlflow) = measure(stage, args.repeat)
        print(f"{stage:<11} {seconds:9.2f}  {tf:<10}  {jax:<5}  {mlflow}")


if __name__ == "__main__":
    main()
