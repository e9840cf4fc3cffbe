"""The train stage on tiny data: options, determinism, MLflow content, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
import yaml

from tests.conftest import ROOT, committed_params, free_port
from vaelab.core.paths import Artifacts, TrainingState
from vaelab.data.prepared import load_prepared, model_data, read_meta
from vaelab.model.vae import build_decoder, build_encoder, build_vae
from vaelab.training.callbacks import (
    MONITOR,
    EpochHistory,
    ResumableEarlyStopping,
    ResumablePlateau,
)
from vaelab.training.history import read_history
from vaelab.training.kl_schedule import BetaSchedule
from vaelab.training.loop import build_callbacks, state_dir, train
from vaelab.training.optim import build_optimizer
from vaelab.training.pipeline import training_dataset


@pytest.mark.parametrize(
    "train_cfg",
    [
        {"optimizer": {"name": "adam"}},
        {"optimizer": {"name": "rmsprop"}, "lr_schedule": {"name": "exponential"}},
        {"optimizer": {"name": "sgd", "momentum": 0.9}, "lr_schedule": {"name": "constant"}},
        {"lr_schedule": {"name": "constant"}, "reduce_on_plateau": {"enabled": True}},
        {"architecture": {"kind": "conv", "batch_norm": True}},
        {"architecture": {"kind": "conv", "upsample": "pixel_shuffle"}},
        {"architecture": {"kind": "mlp", "batch_norm": True, "activation": "elu"}},
        {
            "likelihood": {"kind": "gaussian"},
            "kl": {"schedule": "cyclical", "free_bits": 0.5},
            "prior": {"kind": "standard"},
        },
        {"prior": {"kind": "mixture", "components": 4}, "kl": {"free_bits": 0.0}},
    ],
    ids=[
        "adam-cosine",
        "rmsprop-exp",
        "sgd-momentum",
        "plateau",
        "conv-bn",
        "conv-shuffle",
        "mlp-bn",
        "gauss",
        "mixture-prior",
    ],
)
def test_every_option_trains(tiny_workdir, train_cfg):
    params = tiny_workdir(**{**train_cfg, "epochs": 1})
    cfg = params.train
    x, _ = load_prepared(Artifacts.of(params), "train")
    model = build_vae(cfg, seed=0)
    model.compile(optimizer=build_optimizer(cfg, steps_per_epoch=2))
    before = [w.copy() for w in model.get_weights()]
    prior = [] if model.prior is None else [model.prior.means, model.prior.logits]
    prior_before = [keras.ops.convert_to_numpy(w).copy() for w in prior]
    ds = training_dataset(x[:100], cfg.batch_size, 0, params.prepare.augment, "dynamic")
    logs = model.fit(ds, epochs=1, shuffle=False, verbose=0).history
    assert np.isfinite(logs["loss"][0]) and logs["neg_elbo"][0] > 0
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    for weight, start in zip(prior, prior_before, strict=True):  # a prior learns with the model
        assert not np.array_equal(keras.ops.convert_to_numpy(weight), start)


@pytest.mark.parametrize("binarize", ["none", "static", "dynamic"])
def test_augmentation_recipes_feed_valid_images(tiny_workdir, binarize):
    full = {
        "enabled": True,
        "rotation": 20,
        "shift": 0.1,
        "shear": 0.2,
        "zoom": 0.1,
        "horizontal_flip": True,
        "vertical_flip": True,
    }
    params = tiny_workdir(binarize=binarize, augment=full)
    x, _ = model_data(Artifacts.of(params), "train", fixed_draw=False)
    batch = next(iter(training_dataset(x, 50, 0, params.prepare.augment, binarize))).numpy()
    if binarize == "dynamic":  # drawn by the model, in its train step
        vae = build_vae(params.train, 0, binarize=True)
        batch = keras.ops.convert_to_numpy(vae.training_inputs(batch))
    assert batch.shape == (50, 28, 28, 1) and batch.min() >= 0 and batch.max() <= 1
    assert not np.array_equal(batch, x[:50])
    if binarize != "none":
        assert set(np.unique(batch)) <= {0.0, 1.0}


def test_unnormalized_encoder_sees_raw_pixel_values(tiny_workdir):
    params = tiny_workdir()
    raw = params.train.architecture.model_copy(update={"normalize_inputs": False})
    normalized, unnormalized = build_encoder(params.train.architecture), build_encoder(raw)
    unnormalized.set_weights(normalized.get_weights())
    x, _ = load_prepared(Artifacts.of(params), "val")
    got = unnormalized.predict(x[:8], verbose=0)
    want = normalized.predict(np.round(x[:8] * 255.0), verbose=0)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
    assert not np.allclose(got[0], normalized.predict(x[:8], verbose=0)[0], atol=1e-2)


@pytest.mark.parametrize("upsample", ["transpose", "pixel_shuffle"])
def test_model_round_trips_through_keras_file_in_safe_mode(tiny_workdir, tmp_path, upsample):
    params = tiny_workdir(
        architecture={"kind": "conv", "batch_norm": True, "upsample": upsample},
        prior={"kind": "mixture", "components": 3},
        kl={"free_bits": 0.0},
    )
    model = build_vae(params.train, seed=1)
    x, _ = load_prepared(Artifacts.of(params), "val")
    model.save(tmp_path / "m.keras")
    back = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert type(back).__name__ == "VAE" and back.likelihood == "bernoulli"
    np.testing.assert_allclose(
        back.predict(x[:8], verbose=0), model.predict(x[:8], verbose=0), atol=1e-6
    )
    z = np.random.default_rng(0).normal(size=(4, params.train.architecture.latent_dim)).astype("f")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(back.log_prior(z)),
        keras.ops.convert_to_numpy(model.log_prior(z)),
    )


def test_pixel_shuffle_decoder_puts_each_logit_in_its_2x2_patch(tiny_workdir):
    params = tiny_workdir(architecture={"kind": "conv", "upsample": "pixel_shuffle"})
    arch = params.train.architecture
    decoder = build_decoder(arch)
    assert decoder.output_shape == (None, 28, 28, 1)
    assert [type(layer).__name__ for layer in decoder.layers].count("Conv2DTranspose") == 1
    z = np.random.default_rng(0).standard_normal((3, arch.latent_dim)).astype("float32")
    patches = keras.Model(decoder.input, decoder.layers[-2].output).predict(z, verbose=0)
    logits = decoder.predict(z, verbose=0)
    assert patches.shape == (3, 14, 14, 4)
    for row, col in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        np.testing.assert_array_equal(logits[:, row::2, col::2, 0], patches[..., 2 * row + col])


def test_same_seed_same_losses(tiny_workdir):
    """The same seed gives the same losses, to float32 rounding: without TensorFlow's
    op-determinism switch a value may differ in its last unit (seen: 532.816 and 532.8161)."""
    params = tiny_workdir(augment={"enabled": True})
    train(params)
    first = _history_without_time(params)
    train(params)
    again = _history_without_time(params)
    assert len(first) == len(again) == 2
    for a, b in zip(first, again, strict=True):
        assert a.keys() == b.keys() and a == pytest.approx(b, rel=1e-6)


def _history_without_time(params) -> list[dict]:
    return [
        {k: v for k, v in row.items() if k != "epoch_time"}
        for row in read_history(Artifacts.of(params).train_history)
    ]


def test_steps_per_execution_changes_speed_not_results(tiny_workdir):
    # 250 images, batch 50: 5 steps, so 2 per call leaves a remainder call of one step
    params = tiny_workdir(kl={"schedule": "linear", "unit": "step", "warmup": 7})
    train(params)
    one = _history_without_time(params)
    train(params.replace({"train": {"steps_per_execution": 2}}))
    two = _history_without_time(params)
    assert len(one) == 2 and len(two) == 2
    for a, b in zip(one, two, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5), key


def test_train_stage_outputs_and_mlflow_run(tiny_workdir):
    params = tiny_workdir(epochs=3, kl={"beta": 4.0, "schedule": "cyclical", "cycles": 1})
    summary = train(params)
    out = Artifacts.of(params)
    rows = read_history(out.train_history)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert {
        "loss",
        "val_loss",
        "reconstruction",
        "val_kl",
        "beta",
        "learning_rate",
        "epoch_time",
    } <= set(rows[0])
    assert json.loads(out.train_metrics.read_text())["epochs"] == summary["epochs"] == 3
    assert list(Path(params.base.paths.state).glob("train-*")) == []  # resume state cleared

    run_id = json.loads(out.train_run.read_text())["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["beta"] == "4" and run.data.tags["kl_schedule"] == "cyclical"
    assert run.info.run_name.startswith("beta=4 cyclical")
    assert run.data.tags["data_md5.train"]
    assert run.data.params["train.kl.beta"] == "4.0"
    client = mlflow.MlflowClient()
    for key in ("loss", "val_neg_elbo", "beta", "learning_rate", "epoch_time"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2, 3]
    betas = [m.value for m in client.get_metric_history(run_id, "beta")]
    assert betas == pytest.approx([r["beta"] for r in rows]) and betas[0] < betas[-1] <= 4.0

    x, _ = load_prepared(Artifacts.of(params), "val")
    served = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")  # the served VAE (test_serving)
    best = keras.saving.load_model(out.model)
    expected = best.predict(x[:4], verbose=0).reshape(4, -1)
    np.testing.assert_allclose(served.predict(x[:4].reshape(4, -1)), expected, atol=1e-5)
    assert served.metadata.signature.params is not None
    assert {a.path for a in client.list_artifacts(run_id, "train")} == {"train/history.csv"}


def test_nan_loss_stops_with_clear_message_and_failed_run(tiny_workdir):
    from vaelab.core.errors import TrainingDiverged

    params = tiny_workdir(
        optimizer={"name": "sgd", "learning_rate": 10.0, "momentum": 0.99},
        lr_schedule={"name": "constant"},
        kl={"schedule": "constant"},
        epochs=20,
        likelihood={"kind": "gaussian", "sigma": 0.001},
    )
    with pytest.raises(TrainingDiverged, match="learning_rate") as raised:
        train(params)
    finished = read_history(state_dir(params, read_meta(Artifacts.of(params))["md5"]).history)
    assert f"in epoch {len(finished) + 1}, at batch " in str(raised.value)
    mlflow.set_tracking_uri(f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["vaelab"], output_format="list")
    assert [r.info.status for r in runs] == ["FAILED"]


def test_resume_after_sigkill_continues_from_saved_epoch(tiny_workdir):
    params = tiny_workdir(epochs=12)
    Path("params.yaml").write_text(yaml.safe_dump(params.model_dump()))
    history = state_dir(params, _md5(params)).history
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "vaelab.stages.train"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(read_history(history) if history.is_file() else []) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, "training ended too early"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(read_history(history))
    assert 3 <= done_before < 12

    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "resuming MLflow run" in result.stdout
    epochs_trained = result.stdout.count("Epoch ") + result.stderr.count("Epoch ")
    assert epochs_trained <= 12 - done_before + 1
    rows = read_history(Artifacts.of(params).train_history)
    assert [r["epoch"] for r in rows] == list(range(1, 13))
    run_id = json.loads(Artifacts.of(params).train_run.read_text())["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "val_loss")]
    assert steps == list(range(1, 13))
    assert len(mlflow.search_runs(experiment_names=["vaelab"], output_format="list")) == 1


def _md5(params):
    return read_meta(Artifacts.of(params))["md5"]


@pytest.mark.parametrize(
    ("victim", "fix"),
    [("data/prepared/train.npz", "dvc checkout"), ("data/prepared/meta.json", "dvc checkout")],
)
def test_corrupted_prepared_data_stops_the_stage_cleanly(tiny_workdir, victim, fix):
    params = tiny_workdir()
    Path("params.yaml").write_text(yaml.safe_dump(params.model_dump()))
    path = Path(victim)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = subprocess.run(
        [sys.executable, "-m", "vaelab.stages.train"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1
    assert victim in result.stderr and fix in result.stderr
    assert "Traceback" not in result.stderr
    assert not Path("models").exists() and not Path("mlflow.db").exists()


def test_unreachable_tracking_server_fails_fast_before_training(tiny_workdir, monkeypatch):
    from vaelab.core.errors import VaelabError

    port = free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    params = tiny_workdir()
    started = time.monotonic()
    with pytest.raises(VaelabError, match=f"127.0.0.1:{port} does not answer"):
        train(params)
    assert time.monotonic() - started < 30
    assert not Path(params.base.paths.models).exists()


_BLOCKING_SAVE = """
import io, os, pathlib, sys, time
from keras.src.saving import saving_lib

original, saves = saving_lib._save_model_to_fileobj, []


def blocking(model, fileobj, weights_format):
    saves.append(1)
    if len(saves) < 2:
        return original(model, fileobj, weights_format)
    whole = io.BytesIO()
    original(model, whole, weights_format)
    fileobj.write(whole.getvalue()[: len(whole.getvalue()) // 2])  # half of the archive
    fileobj.flush()
    os.fsync(fileobj.fileno())
    pathlib.Path(sys.argv[1]).touch()
    time.sleep(600)  # killed here, in the middle of the second save


saving_lib._save_model_to_fileobj = blocking
from vaelab.core.cli import run_stage
from vaelab.stages.train import main

run_stage(main)
"""


def test_kill_during_the_best_checkpoint_save_leaves_a_loadable_model(tiny_workdir, tmp_path):
    from vaelab.model.io import load_vae

    params = tiny_workdir(epochs=4, kl={"schedule": "constant"})
    Path("params.yaml").write_text(yaml.safe_dump(params.model_dump()))
    (tmp_path / "blocking.py").write_text(_BLOCKING_SAVE)
    marker = tmp_path / "saving"
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "blocking.py"), str(marker)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no second save happened"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (state,) = Path(params.base.paths.state).glob("train-*")
    load_vae(state / "best.keras")  # the first best, intact: the half-save went elsewhere

    result = subprocess.run(
        [sys.executable, "-m", "vaelab.stages.train"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    vae = load_vae(Artifacts.of(params).model)
    assert vae.predict(np.zeros((1, 28, 28, 1), np.float32), verbose=0).shape == (1, 28, 28, 1)
    assert not [p.name for p in Path("models").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("enabled", [True, False])
def test_runs_carry_their_datasets_and_system_metrics(tiny_workdir, enabled):
    from vaelab.tracking.datasets import dvc_digest

    params = tiny_workdir(epochs=3).replace(
        {"tracking": {"system_metrics": enabled, "system_metrics_interval": 0.1}}
    )
    train(params)
    run_id = json.loads(Artifacts.of(params).train_run.read_text())["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    run = mlflow.get_run(run_id)
    digest = dvc_digest(Artifacts.of(params).prepared)
    contexts = {
        next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset
        for d in run.inputs.dataset_inputs
    }
    assert set(contexts) == {"training", "validation", "test"}
    assert {d.digest for d in contexts.values()} == {digest} and digest.endswith(".dir")
    assert json.loads(contexts["test"].source)["file"] == "data/prepared/test.npz"
    system = [k for k in run.data.metrics if k.startswith("system/")]
    if enabled:
        assert "system/cpu_utilization_percentage" in system
        assert "system/system_memory_usage_megabytes" in system
    else:
        assert system == []


def _replay(callback, values: list[float], first: int = 0) -> int | None:
    """Feed ``values`` to an early-stopping ``callback`` as epochs from ``first`` on; the
    epoch (counted from 1) it stopped the training at, or None."""
    callback.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    callback.model.stop_training = False  # as `fit` sets it
    callback.on_train_begin()
    for epoch, value in enumerate(values, first):
        callback.on_epoch_begin(epoch)
        callback.on_epoch_end(epoch, {MONITOR: value})
        if callback.model.stop_training:
            return epoch + 1
    return None


@pytest.mark.parametrize(
    ("schedule", "watched_from", "stops"), [("constant", 0, True), ("cyclical", 114, False)]
)
def test_early_stopping_waits_for_the_kl_weight_to_settle(tmp_path, schedule, watched_from, stops):
    """A claims run of the default with a cyclical weight (130 epochs, 4 cycles; its history in
    tests/data) stopped at epoch 41: each cycle restarts beta at 0, and the objective rose for
    more than the patience of 10. Replayed, its recorded objective stops a run whose weight is
    constant there where it stopped, and not one that is still cycling."""
    kl = {"schedule": schedule, "free_bits": 0.0}
    params = committed_params().replace({"train": {"epochs": 130, "kl": kl}})
    settled = BetaSchedule(params.train.kl, params.train.epochs, 391).settled_epoch()
    history = EpochHistory(tmp_path / "history.csv")
    callbacks = build_callbacks(params, TrainingState(tmp_path), history, None, settled)
    (early,) = [c for c in callbacks if isinstance(c, ResumableEarlyStopping)]
    assert early.start_from_epoch == watched_from
    recorded = read_history(ROOT / "tests/data/kl_cyclical_history.csv")
    stopped_at = _replay(early, [row[MONITOR] for row in recorded])
    assert stopped_at == (len(recorded) if stops else None)


def test_a_resumed_early_stopping_stops_where_an_uninterrupted_one_does(tmp_path):
    """Patience counts the epochs before a resume only from ``start_from_epoch`` on."""
    values = [1.0, 5.0, 4.0, 3.0, 3.5, 3.6, 3.7]

    def early(rows: list[float], min_delta: float = 0.0) -> ResumableEarlyStopping:
        history = EpochHistory(tmp_path / "history.csv")
        history.rows = [{"epoch": e + 1, MONITOR: v} for e, v in enumerate(rows)]
        return ResumableEarlyStopping(
            history, monitor=MONITOR, mode="min", patience=2, start_from_epoch=2,
            min_delta=min_delta,
        )  # fmt: skip

    assert _replay(early([]), values) == 6
    assert _replay(early(values[:4]), values[4:], first=4) == 6
    # 3.0 is no improvement on 4.0 by min_delta = 1.5: patience runs out at epoch 5
    assert _replay(early([], 1.5), values) == 5
    assert _replay(early(values[:4], 1.5), values[4:], first=4) == 5


def _cuts(plateau: ResumablePlateau, values: list[float], first: int = 0, rate: float = 1.0):
    """Feed ``values`` to ``plateau`` as epochs from ``first`` on, the optimizer starting at
    ``rate``; the history rows it leads to (each epoch's rate, as `EpochExtras` logs it)."""
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(rate))
    plateau.set_model(model)
    plateau.on_train_begin()
    rows = []
    for epoch, value in enumerate(values, first):
        plateau.on_epoch_begin(epoch)
        rate = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        rows.append({"epoch": epoch + 1, MONITOR: value, "learning_rate": rate})
        plateau.on_epoch_end(epoch, {MONITOR: value})
    return rows


def test_a_resumed_plateau_cuts_the_rate_where_an_uninterrupted_one_does(tmp_path):
    """Before, a resume forgot the epochs without improvement: the cut came late."""
    values = [5.0, 4.0, 4.5, 4.6, 4.7, 4.8, 4.9, 3.0, 3.1, 3.2, 3.3]

    def plateau(rows: list[dict[str, float]]) -> ResumablePlateau:
        history = EpochHistory(tmp_path / "history.csv")
        history.rows = rows
        return ResumablePlateau(history, monitor=MONITOR, mode="min", factor=0.5, patience=2)

    whole = _cuts(plateau([]), values)
    rates = [1, 1, 1, 1, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.125]
    assert [row["learning_rate"] for row in whole] == rates
    for cut in (3, 5, 8, 9):
        resumed = _cuts(plateau(whole[:cut]), values[cut:], cut, whole[cut]["learning_rate"])
        assert whole[:cut] + resumed == whole


def test_the_plateau_waits_for_the_kl_weight_to_settle(tmp_path):
    """With a cyclical KL weight the plateau cuts nothing before the last cycle's rise ends."""
    params = committed_params().replace(
        {
            "train": {
                "epochs": 130,  # the recorded run's
                "kl": {"schedule": "cyclical", "free_bits": 0.0},
                "lr_schedule": {"name": "constant"},
                "reduce_on_plateau": {"enabled": True},
            }
        }
    )
    settled = BetaSchedule(params.train.kl, params.train.epochs, 391).settled_epoch()
    history = EpochHistory(tmp_path / "history.csv")
    callbacks = build_callbacks(params, TrainingState(tmp_path), history, None, settled)
    (plateau,) = [c for c in callbacks if isinstance(c, ResumablePlateau)]
    recorded = [row[MONITOR] for row in read_history(ROOT / "tests/data/kl_cyclical_history.csv")]
    rate = float(np.float32(params.train.optimizer.learning_rate))
    assert settled == 114 > len(recorded)
    assert {row["learning_rate"] for row in _cuts(plateau, recorded, rate=rate)} == {rate}
    plateau.start_from_epoch = 0  # watched from the start, the cycles look like plateaus
    plateau.history = EpochHistory(tmp_path / "other.csv")
    assert len({row["learning_rate"] for row in _cuts(plateau, recorded, rate=rate)}) > 1
