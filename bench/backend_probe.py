"""Prototype check: fit the default VAE a few epochs on arrays; print the history."""
import json, os, sys, time
import numpy as np
import keras
from vaelab.core.params import load_params
from vaelab.model.vae import build_vae
from vaelab.training.kl_schedule import BetaSchedule
from vaelab.training.optim import build_optimizer

p = load_params("/work/main/params.yaml")
p = p.replace({"train": {"kl": {"schedule": "linear", "warmup": 2}}})
cfg = p.train
keras.utils.set_random_seed(1)
with np.load("/work/main/data/prepared/train.npz") as f:
    x = f["x"][: int(sys.argv[1])]
xb = (np.random.default_rng(0).random(x.shape, dtype=np.float32) < x).astype(np.float32)
steps = int(np.ceil(len(xb) / cfg.batch_size))
vae = build_vae(cfg, 1)
vae.beta_schedule = BetaSchedule(cfg.kl, cfg.epochs, steps)
vae.compile(optimizer=build_optimizer(cfg, steps), steps_per_execution=16)
times = []
class T(keras.callbacks.Callback):
    def on_epoch_begin(self, e, logs=None): self.t = time.perf_counter()
    def on_epoch_end(self, e, logs=None): times.append(time.perf_counter() - self.t)
h = vae.fit(xb, epochs=int(sys.argv[2]), batch_size=cfg.batch_size, shuffle=False, verbose=0, validation_data=xb[:1000], callbacks=[T()])
out = {k: [round(float(v), 6) for v in vals] for k, vals in h.history.items()}
out["beta_now"] = float(keras.ops.convert_to_numpy(vae.beta))
out["epoch_s"] = [round(t, 2) for t in times]
out["backend"] = keras.backend.backend()
print(json.dumps(out))
