"""Training and evaluation speed, side by side: the train stage, a bare Keras loop, and what
the stack offers (XLA, steps_per_execution, batch size, threads), on this machine.

    python bench/speed.py [--images 10000] [--epochs 4] [--rounds 3] [-S KEY=VALUE ...]

Every configuration runs in a fresh interpreter (TensorFlow's thread settings are fixed at
start-up), and the configurations take turns for ``--rounds`` rounds, so a noisy neighbour
slows all of them alike; the medians are reported as ratios to the bare Keras loop at batch
128. The first epoch of each run (tracing) is not timed. ``-S`` sets params as `dvc exp run
-S` does (another architecture, say) for every configuration. For evaluation, decoder
samples per second of the IWAE estimate (`vaelab.evaluation.likelihood.estimate`) are
measured the same way. FLOP rates count the dense and convolution layers' multiply-adds (2
FLOPs each; a training step is taken as 3 forward passes) against the cores' peak,
``--peak-flops-per-cycle`` FLOPs per cycle per core at the clock /proc/cpuinfo reports.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
TRAIN_CONFIGS = {  # name: (kind, batch, jit, steps_per_execution, threads, backend)
    "stage, batch 128": ("stage", 128, False, 1, 0, "tensorflow"),
    "stage, batch 128, steps_per_execution 16": ("stage", 128, False, 16, 0, "tensorflow"),
    "stage, batch 128, steps_per_execution 16, JAX": ("stage", 128, False, 16, 0, "jax"),
    "bare fit, batch 128": ("bare", 128, False, 1, 0, "tensorflow"),
    "bare fit, batch 128, XLA": ("bare", 128, True, 1, 0, "tensorflow"),
    "bare fit, batch 128, steps_per_execution 16": ("bare", 128, False, 16, 0, "tensorflow"),
    "bare fit, batch 128, steps_per_execution 16, JAX": ("bare", 128, False, 16, 0, "jax"),
    "bare loop, TensorFlow (tf.function + GradientTape)": ("loop", 128, False, 1, 0, "tensorflow"),
    "bare loop, JAX (jax.jit + Keras stateless calls)": ("loop", 128, True, 1, 0, "jax"),
    "bare fit, batch 256, steps_per_execution 16, JAX": ("bare", 256, False, 16, 0, "jax"),
    "bare fit, batch 128, 1 thread per op": ("bare", 128, False, 1, 1, "tensorflow"),
    "bare fit, batch 256": ("bare", 256, False, 1, 0, "tensorflow"),
    "bare fit, batch 512": ("bare", 512, False, 1, 0, "tensorflow"),
}
EVAL_CONFIGS = {  # name: (batch_size, chunk, jit, backend)
    "estimate, 100 images x 100 samples": (100, 100, False, "tensorflow"),
    "estimate, 100 images x 100 samples, XLA": (100, 100, True, "tensorflow"),
    "estimate, 100 images x 100 samples, JAX": (100, 100, False, "jax"),
    "estimate, 50 images x 200 samples": (50, 200, False, "tensorflow"),
    "estimate, 200 images x 50 samples": (200, 50, False, "tensorflow"),
}
BASELINE = "bare fit, batch 128"


def _base(settings: list[str]):
    """params.yaml with ``settings`` (``KEY=VALUE``, as `dvc exp run -S` takes them)."""
    from vaelab.core.overrides import nested, split_override
    from vaelab.core.params import load_params

    flat = {k: yaml.safe_load(v) for k, v in map(split_override, settings)}
    return load_params(ROOT / "params.yaml").replace(nested(flat))


def _params(settings: list[str], images: int, epochs: int, batch: int, spe: int, backend: str):
    base = _base(settings)
    val = max(batch, images // 10)
    return base.replace(
        {
            "base": {"paths": {"raw": str(ROOT / base.base.paths.raw)}},
            "prepare": {"subset": images + val, "val_size": val},
            "train": {
                "epochs": epochs,
                "batch_size": batch,
                "steps_per_execution": spe,
                "backend": backend,
                "early_stopping": {"enabled": False},
            },
            "tracking": {"system_metrics": False},
        }
    )


def macs(*models) -> int:
    """Multiply-adds per example of the Dense and convolution layers of ``models``."""
    import keras

    def one(layer) -> int:
        if isinstance(layer, keras.layers.Conv2DTranspose):  # the kernel at each input position
            positions = layer.input.shape[1:3]
        elif isinstance(layer, keras.layers.Conv2D):  # at each output position
            positions = layer.output.shape[1:3]
        elif isinstance(layer, keras.layers.Dense):
            positions = ()
        else:
            return 0
        return int(np.prod(layer.kernel.shape)) * int(np.prod(positions))

    return sum(one(layer) for model in models for layer in model.layers)


def one_training(
    kind: str,
    batch: int,
    jit: bool,
    spe: int,
    images: int,
    epochs: int,
    backend: str,
    settings: list[str],
) -> dict:
    """Seconds per epoch (median after the first) of one configuration, in this process."""
    from vaelab.core.paths import Artifacts
    from vaelab.data.prepare import prepare
    from vaelab.data.prepared import load_prepared
    from vaelab.model.vae import build_vae
    from vaelab.training.history import read_history
    from vaelab.training.loop import train
    from vaelab.training.optim import build_optimizer

    params = _params(settings, images, epochs, batch, spe, backend)
    os.chdir(tempfile.mkdtemp(prefix="vaelab-speed-"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    paths = Artifacts.of(params)
    prepare(paths, params.prepare, params.base.seed)
    if kind == "stage":
        train(params)
        times = [row["epoch_time"] for row in read_history(paths.train_history)]
        model = build_vae(params.train, params.base.seed)
    elif kind == "loop":
        x, _ = load_prepared(paths, "train")
        model = build_vae(params.train, params.base.seed, binarize=True)
        times = _bare_loop(model, build_optimizer(params.train, len(x) // batch), x, batch, epochs)
    else:
        x, _ = load_prepared(paths, "train")
        x = (np.random.default_rng(0).random(x.shape, dtype=np.float32) < x).astype("float32")
        model = build_vae(params.train, params.base.seed)
        model.compile(
            optimizer=build_optimizer(params.train, len(x) // batch),
            jit_compile=True if jit else "auto",  # auto: XLA on JAX, not on a CPU-only TF
            steps_per_execution=spe,
        )
        from timing import EpochTimer

        timer = EpochTimer()
        model.fit(x, epochs=epochs, batch_size=batch, verbose=0, callbacks=[timer])
        times = timer.times
    per_epoch = statistics.median(times[1:])
    return {
        "images_per_second": params.prepare.train_size / per_epoch,
        "macs_per_image": macs(model.encoder, model.decoder),
    }


def _bare_loop(model, optimizer, x: np.ndarray, batch: int, epochs: int) -> list[float]:
    """Seconds per epoch of the framework's own training loop on ``model``'s loss (binarized
    inside the step, as in the stage): TensorFlow's tf.function + GradientTape, or JAX's
    jax.jit over Keras' stateless loss and optimizer calls."""
    import keras

    steps = len(x) // batch
    optimizer.build(model.trainable_variables)
    if keras.backend.backend() == "jax":
        import jax

        def loss(trainable, non_trainable, metrics, xb):
            value, (_, non_trainable, metrics) = model.stateless_compute_loss(
                trainable, non_trainable, metrics, x=xb, training=True
            )
            return value, (non_trainable, metrics)

        @jax.jit
        def step(state, xb):
            trainable, non_trainable, metrics, opt_vars = state
            (_, (non_trainable, metrics)), grads = jax.value_and_grad(loss, has_aux=True)(
                trainable, non_trainable, metrics, xb
            )
            trainable, opt_vars = optimizer.stateless_apply(opt_vars, grads, trainable)
            return trainable, non_trainable, metrics, opt_vars

        state = tuple(
            [v.value for v in variables]
            for variables in (
                model.trainable_variables,
                model.non_trainable_variables,
                model.metrics_variables,
                optimizer.variables,
            )
        )
    else:
        import tensorflow as tf

        @tf.function
        def step(state, xb):
            with tf.GradientTape() as tape:
                value = model.loss_parts(xb, training=True)["loss"]
            variables = model.trainable_variables
            optimizer.apply(tape.gradient(value, variables), variables)
            return state

        state, x = (), tf.constant(x)
    times = []
    for _ in range(epochs):
        started = time.perf_counter()
        for i in range(steps):
            state = step(state, x[i * batch : (i + 1) * batch])
        keras.ops.convert_to_numpy(keras.tree.flatten(state)[0] if state else 0.0)
        times.append(time.perf_counter() - started)
    return times


def one_evaluation(batch: int, chunk: int, jit: bool, samples: int, settings: list[str]) -> dict:
    """Decoder samples per second of the IWAE estimate's step (the one `estimate` runs) on
    this process's Keras backend (TensorFlow: with or without XLA)."""
    import keras

    from vaelab.evaluation.likelihood import _batch_estimates, compiled, noise
    from vaelab.model.vae import build_vae

    params = _base(settings)
    vae = build_vae(params.train, seed=0)
    x = (np.random.default_rng(0).random((1000, 28, 28, 1)) < 0.2).astype("float32")
    eps = noise(samples, batch, params.train.architecture.latent_dim, 0, 0)
    if jit and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        step = tf.function(lambda xb, e: _batch_estimates(vae, xb, e, samples, chunk),
                           jit_compile=True)  # fmt: skip
    else:
        step = compiled(lambda xb, e: _batch_estimates(vae, xb, e, samples, chunk))
    keras.ops.convert_to_numpy(step(x[:batch], eps)[0])  # trace
    started = time.perf_counter()
    for start in range(0, len(x), batch):
        keras.ops.convert_to_numpy(step(x[start : start + batch], eps)[0])
    seconds = time.perf_counter() - started
    return {
        "samples_per_second": len(x) * samples / seconds,
        "decoder_macs_per_sample": macs(vae.decoder),
    }


def _child(argv: list[str], threads: int, backend: str) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": backend}
    if threads:
        env.update(TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS=str(threads))
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(argv)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def peak_flops(per_cycle: float) -> tuple[float, str]:
    info = Path("/proc/cpuinfo").read_text()
    mhz = float(next(line.split(":")[1] for line in info.splitlines() if "cpu MHz" in line))
    model = next(line.split(":")[1].strip() for line in info.splitlines() if "model name" in line)
    cores = os.cpu_count() or 1
    return cores * mhz * 1e6 * per_cycle, f"{model}, {cores} cores at {mhz:.0f} MHz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=500, help="k of the evaluation runs")
    parser.add_argument(
        "--peak-flops-per-cycle",
        type=float,
        default=32.0,
        help="fp32 FLOPs per cycle per core (32: two 256-bit FMA pipes, e.g. AMD Zen 4)",
    )
    parser.add_argument(
        "--match",
        default="",
        help="only the configurations whose name matches this regex (the baseline always runs)",
    )
    parser.add_argument(
        "-S",
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a params setting for every configuration, as for `dvc exp run -S`",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        result = one_training(*spec[1:]) if spec[0] == "train" else one_evaluation(*spec[1:])
        print(json.dumps(result))
        return

    def chosen(names, baseline: str) -> list[str]:
        return [n for n in names if n == baseline or re.search(args.match, n)]

    first = next(iter(EVAL_CONFIGS))
    train_runs: dict[str, list[dict]] = {n: [] for n in chosen(TRAIN_CONFIGS, BASELINE)}
    eval_runs: dict[str, list[dict]] = {n: [] for n in chosen(EVAL_CONFIGS, first)}
    for round_ in range(args.rounds):
        for name in train_runs:
            kind, batch, jit, spe, threads, backend = TRAIN_CONFIGS[name]
            spec = ["train", kind, batch, jit, spe, args.images, args.epochs, backend, args.set]
            train_runs[name].append(_child(spec, threads, backend))
            print(f"round {round_ + 1}: {name}: {train_runs[name][-1]}", file=sys.stderr)
        for name in eval_runs:
            batch, chunk, jit, backend = EVAL_CONFIGS[name]
            spec = ["eval", batch, chunk, jit, args.samples, args.set]
            eval_runs[name].append(_child(spec, 0, backend))
            print(f"round {round_ + 1}: {name}: {eval_runs[name][-1]}", file=sys.stderr)

    peak, cpu = peak_flops(args.peak_flops_per_cycle)
    print(
        f"CPU: {cpu}; peak {peak / 1e9:.0f} GFLOP/s fp32 (assumed {args.peak_flops_per_cycle:g}"
        " FLOPs/cycle/core)"
    )
    base = statistics.median(r["images_per_second"] for r in train_runs[BASELINE])
    print(f"\n| training | images/s | vs {BASELINE} | GFLOP/s | of peak |\n|---|---|---|---|---|")
    for name, runs in train_runs.items():
        rate = statistics.median(r["images_per_second"] for r in runs)
        flops = rate * runs[0]["macs_per_image"] * 2 * 3
        print(
            f"| {name} | {rate:,.0f} | {rate / base:.2f} | {flops / 1e9:.1f} | {flops / peak:.0%} |"
        )
    base = statistics.median(r["samples_per_second"] for r in eval_runs[first])
    print(
        f"\n| evaluation (k={args.samples}) | decoder samples/s | vs {first} | GFLOP/s | "
        "of peak |\n|---|---|---|---|---|"
    )
    for name, runs in eval_runs.items():
        rate = statistics.median(r["samples_per_second"] for r in runs)
        flops = rate * runs[0]["decoder_macs_per_sample"] * 2
        print(
            f"| {name} | {rate:,.0f} | {rate / base:.2f} | {flops / 1e9:.1f} | {flops / peak:.0%} |"
        )


if __name__ == "__main__":
    main()
