"""Requests per second and latency of the served champion (`vaelab serve`, one worker), one
request at a time over a kept-alive connection, for each output at batches of 1 and 100 test
images (`score` at k = 100 and k = 1000).

python bench/serving.py [--model URI] [--seconds 10]   # from the project root, after dvc repro
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

from vaelab.core.errors import VaelabError
from vaelab.core.mnist import PIXELS
from vaelab.core.params import load_params
from vaelab.core.paths import Artifacts
from vaelab.data.prepared import model_data
from vaelab.experiments.runner import cpu_name
from vaelab.serving.client import Client, served
from vaelab.serving.server import champion_uri

CASES = [  # (output, images per request, extra params)
    ("reconstruct", 1, {}), ("reconstruct", 100, {}),
    ("encode", 1, {}), ("encode", 100, {}),
    ("sample", 1, {}), ("sample", 100, {}),
    ("score", 1, {"k": 100}), ("score", 100, {"k": 100}),
    ("score", 1, {"k": 1000}), ("score", 100, {"k": 1000}),
]  # fmt: skip


def measure(client: Client, rows, output: str, extra: dict, seconds: float) -> list[float]:
    """Latencies (s) of requests sent one after another for ``seconds`` (at least 5)."""
    params = {"output": output, **extra, **({"n": len(rows)} if output == "sample" else {})}
    for _ in range(2):  # warm-up: the first calls of a shape compile
        client.predict(rows, **params)
    latencies: list[float] = []
    started = time.perf_counter()
    while len(latencies) < 5 or time.perf_counter() - started < seconds:
        before = time.perf_counter()
        client.predict(rows, **params)
        latencies.append(time.perf_counter() - before)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="default: models:/<base.experiment>@champion")
    parser.add_argument("--port", type=int, default=5011)
    parser.add_argument("--seconds", type=float, default=10, help="per case")
    args = parser.parse_args()
    params = load_params()
    model = args.model or champion_uri(params.base.experiment)
    x, _ = model_data(Artifacts.of(params), "test", binary=True)
    x = x.reshape(len(x), PIXELS)
    with tempfile.TemporaryFile("w+") as log:
        try:
            with served(model, args.port, log) as client:
                print(f"{model} on {cpu_name()}, one server worker, one request at a time\n")
                print("| output | images per request | requests/s | images/s | latency p50 | p95 |")
                print("|---|---|---|---|---|---|")
                for output, batch, extra in CASES:
                    times = measure(client, x[:batch], output, extra, args.seconds)
                    rate = len(times) / sum(times)
                    p50, p95 = (statistics.quantiles(times, n=20)[i] for i in (9, 18))
                    label = output + "".join(f", {k} = {v}" for k, v in extra.items())
                    print(f"| {label} | {batch} | {rate:.1f} | {rate * batch:,.0f} | "
                          f"{p50 * 1000:.1f} ms | {p95 * 1000:.1f} ms |", flush=True)  # fmt: skip
        except VaelabError:
            log.seek(0)
            print(log.read(), file=sys.stderr)
            raise


if __name__ == "__main__":
    main()
