"""tf.distribute: the default path is the single-device strategy; a mirrored run over two
logical CPU devices trains and matches the single-device gradient step."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import ROOT
from vaelab.training.loop import distribution_strategy


def test_default_and_gpu_less_paths_use_the_single_device_strategy():
    import tensorflow as tf

    assert distribution_strategy(False) is tf.distribute.get_strategy()
    assert distribution_strategy(True).num_replicas_in_sync == 1  # no GPUs here


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
