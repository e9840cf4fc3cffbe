"""`train.distribute`: on TensorFlow a mirrored run over two logical CPU devices matches the
single-device step; on JAX Keras' DataParallel over two host devices splits each batch and
gives the single device's losses; one device says it trains alone; a batch that does not
split is refused."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT, committed_params
from vaelab.training.loop import data_parallel, distribution_strategy


def test_default_and_gpu_less_paths_use_the_single_device_strategy(capsys):
    import tensorflow as tf

    assert distribution_strategy(False) is tf.distribute.get_strategy()
    gpus = len(tf.config.list_logical_devices("GPU"))
    assert distribution_strategy(True).num_replicas_in_sync == max(gpus, 1)
    if gpus < 2:
        with data_parallel(committed_params().train.model_copy(update={"distribute": True})):
            pass
        assert "one device is visible, so it trains alone" in capsys.readouterr().out


JAX_TWO_DEVICES = textwrap.dedent("""
    import numpy as np, keras, tensorflow as tf
    from vaelab.core.errors import ParamsError
    from vaelab.model.vae import build_vae
    from vaelab.training.loop import data_parallel
    from tests.conftest import committed_params
    cfg = committed_params().replace({"train": {"architecture": {"hidden": [16], "latent_dim": 2},
                                                "batch_size": 64}}).train
    x = (np.random.default_rng(0).random((256, 28, 28, 1)) < 0.3).astype("float32")
    for distribute in (False, True):
        keras.utils.set_random_seed(3)  # the same initial weights and draws for both
        with data_parallel(cfg.model_copy(update={"distribute": distribute})):
            vae = build_vae(cfg, seed=1, binarize=True)
            vae.compile(optimizer=keras.optimizers.Adam(1e-3), steps_per_execution=2)
            ds = tf.data.Dataset.from_tensor_slices(x).batch(64)
            losses = vae.fit(ds, epochs=2, verbose=0, shuffle=False).history["loss"]
            found = keras.distribution.distribution()
            split = found.get_data_layout((64, 28, 28, 1)).axes[0] if found else None
        print("losses", distribute, losses, "split", split)
    try:
        with data_parallel(cfg.model_copy(update={"distribute": True, "batch_size": 63})):
            pass
    except ParamsError as exc:
        print("refused:", exc)
""")


def test_jax_data_parallel_over_two_host_devices_splits_batches_and_keeps_the_losses():
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}  # fmt: skip
    result = subprocess.run([sys.executable, "-c", JAX_TWO_DEVICES], capture_output=True,
                            text=True, timeout=300, cwd=ROOT, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "each batch split over 2 devices" in out
    single, double = (
        [float(v) for v in line.split("[")[1].split("]")[0].split(",")]
        for line in out.splitlines()
        if line.startswith("losses")
    )
    assert double == pytest.approx(single, rel=1e-5)
    assert "losses True" in out and out.split("losses True")[1].split("split")[
        1
    ].strip().startswith("batch")
    assert "refused: train.batch_size=63 does not split over 2 devices" in out


def test_mirrored_step_equals_single_device_step():
    # Needs two logical CPU devices, which must be configured before TensorFlow starts.
    script = textwrap.dedent("""
        import numpy as np, tensorflow as tf, keras
        cpu = tf.config.list_physical_devices("CPU")[0]
        two = [tf.config.LogicalDeviceConfiguration()] * 2
        tf.config.set_logical_device_configuration(cpu, two)
        from vaelab.model.vae import build_vae
        from vaelab.training.loop import distribution_strategy
        from tests.conftest import committed_params
        cfg = committed_params().replace(
            {"train": {"architecture": {"hidden": [16], "latent_dim": 2}}}
        ).train
        x = (np.random.default_rng(0).random((64, 28, 28, 1)) < 0.3).astype("float32")
        weights = []
        for enabled in (False, True):
            strategy = distribution_strategy(enabled, device_type="CPU")
            keras.utils.set_random_seed(3)  # same initial weights for both
            with strategy.scope():
                vae = build_vae(cfg, seed=1)
                vae.sampling.call = lambda inputs: inputs[0]  # no noise: comparable steps
                vae.compile(optimizer=keras.optimizers.SGD(0.01))
            print("replicas", strategy.num_replicas_in_sync)
            vae.fit(x, batch_size=64, epochs=1, shuffle=False, verbose=0)
            weights.append(vae.get_weights())
        diff = max(float(np.abs(a - b).max()) for a, b in zip(*weights))
        print("max weight difference", diff)
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert "replicas 1" in result.stdout and "replicas 2" in result.stdout
    diff = float(result.stdout.split("max weight difference")[1])
    assert diff < 1e-5
