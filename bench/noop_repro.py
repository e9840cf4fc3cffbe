"""How long `dvc repro` takes to report that nothing changed (target: 5 s or less).

python bench/noop_repro.py [--repeat 5]     # from the project root, after a dvc repro
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        out = subprocess.run(["dvc", "repro"], capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - start)
        if "Running stage" in out.stdout:
            raise SystemExit("a stage ran: the pipeline was not up to date; run dvc repro first")
    print(
        f"dvc repro, nothing changed: median {statistics.median(times):.2f} s "
        f"(min {min(times):.2f}, max {max(times):.2f}, {args.repeat} runs)"
    )


if __name__ == "__main__":
    main()
