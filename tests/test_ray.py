"""Sweeps on a real two-node Ray cluster on 127.0.0.1, as a team runs them: every experiment
cloned over SSH (a real sshd) from a bare git remote, run as a DVC experiment on some node,
pushed to the git remote and to a DVC remote on the same SSH server, and tracked by the
PostgreSQL-backed MLflow server; a node killed mid-experiment and a driver killed mid-sweep
lose and double nothing."""

from __future__ import annotations

import getpass
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
from ray.cluster_utils import Cluster

from tests.conftest import commit_all, free_port, run
from vaelab.experiments.results import OK, read_rows
from vaelab.tracking.runs import KIND_TAG

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
SSHD = Path("/usr/sbin/sshd")


@dataclass(frozen=True)
class SshServer:
    url: str  # ssh://user@127.0.0.1:port
    key: Path  # the client's private key
    git_ssh: str  # GIT_SSH_COMMAND: that key, and only the server's own host key accepted


@pytest.fixture
def ssh_server(tmp_path: Path) -> Iterator[SshServer]:
    """A real OpenSSH server on a loopback port, with host and client keys made here."""
    if not SSHD.exists():
        pytest.skip("OpenSSH's server is not installed (apt-get install openssh-server)")
    folder = tmp_path / "ssh"
    folder.mkdir()
    for name in ("host", "client"):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)], folder)
    port = free_port()
    (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {(folder / 'host.pub').read_text()}")
    (folder / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host'}\n"
        f"AuthorizedKeysFile {folder / 'client.pub'}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"PidFile {folder / 'sshd.pid'}\nSubsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
    server = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(folder / "sshd_config")])
    options = f"-o UserKnownHostsFile={folder / 'known_hosts'} -o StrictHostKeyChecking=yes"
    yield SshServer(
        f"ssh://{getpass.getuser()}@127.0.0.1:{port}",
        folder / "client",
        f"ssh -i {folder / 'client'} -o IdentitiesOnly=yes -o BatchMode=yes {options}",
    )
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture
def team(project, ssh_server, tracking_server, real_mirror, tmp_path, monkeypatch):
    """The project with its git and DVC remotes on the SSH server and the MLflow server, and
    each node's environment (the one `ray start` would run in): the SSH key for git and DVC,
    the tracking server, the MNIST mirror, a folder for the clones."""
    remote = f"{ssh_server.url}{tmp_path / 'remote.git'}"
    run(["git", "init", "-q", "--bare", "-b", "main", str(tmp_path / "remote.git")], tmp_path)
    dvc_remote = f"{ssh_server.url}{tmp_path / 'dvc-store'}"
    (tmp_path / "dvc-global").mkdir()
    (tmp_path / "dvc-global" / "config").write_text(  # per machine: the key, not committed
        f"['remote \"team\"']\n    url = {dvc_remote}\n    keyfile = {ssh_server.key}\n"
    )
    gitconfig = tmp_path / "gitconfig"  # per machine: who commits, how to reach the remote
    gitconfig.write_text(
        f"[user]\n\tname = node\n\temail = node@vaelab.test\n[core]\n"
        f"\tsshCommand = {ssh_server.git_ssh}\n"
    )
    for name, value in {
        "GIT_CONFIG_GLOBAL": str(gitconfig),  # DVC's git (dulwich) reads core.sshCommand,
        "GIT_SSH_COMMAND": ssh_server.git_ssh,  # and takes OpenSSH only when this is set
        "DVC_GLOBAL_CONFIG_DIR": str(tmp_path / "dvc-global"),
        "VAELAB_MNIST_MIRROR": str(real_mirror),
        "MLFLOW_TRACKING_URI": tracking_server,
        "VAELAB_CLONES": str(tmp_path / "clones"),
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }.items():
        monkeypatch.setenv(name, value)
    run(["dvc", "remote", "add", "-f", "-d", "team", dvc_remote], project)
    commit_all(project, "baseline")
    run(["git", "remote", "add", "origin", remote], project)
    run(["git", "push", "-q", "origin", "main"], project)
    return project


@pytest.fixture
def cluster(team) -> Iterator[Cluster]:
    """Two 1-CPU Ray nodes on loopback, started in the team's environment."""
    nodes = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    nodes.add_node(num_cpus=1)
    nodes.wait_for_nodes()
    yield nodes
    nodes.shutdown()


def start_sweep(project: Path, grid: str, address: str) -> subprocess.Popen:
    """`vaelab sweep` as a user starts it, in a process group of its own."""
    command = [sys.executable, "-m", "vaelab", "sweep", "-S", grid, "--name", "on-ray"]
    return subprocess.Popen(
        [*command, "--out", "report", "--ray", address],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def trainings(status: str | None = None) -> list:
    """The sweep's training runs (not its parent) in the tracking store, of ``status``."""
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(
        experiment_names=["vaelab"], filter_string="tags.sweep = 'on-ray'", output_format="list"
    )
    runs = [r for r in runs if KIND_TAG not in r.data.tags]
    return [r for r in runs if status in (None, r.info.status)]


def wait_for(condition, what: str, sweep: subprocess.Popen, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert sweep.poll() is None, f"the sweep ended before {what}:\n{sweep.stdout.read()}"
        assert time.monotonic() < deadline, f"no {what} in {seconds} s"
        time.sleep(0.5)


def finish(sweep: subprocess.Popen) -> str:
    output, _ = sweep.communicate(timeout=900)
    assert sweep.returncode == 0, output
    return output


def assert_landed_once(project: Path, remote: str, names: list[str]) -> None:
    """One row, one ref in the git remote and one finished training run per experiment; every
    other attempt marked killed, none left running."""
    rows = read_rows(project / "report" / "experiments.csv")
    assert sorted(r["arm"] for r in rows) == sorted(n.split("-")[-2] for n in names)
    assert {r["status"] for r in rows} == {OK}
    pushed = run(["git", "ls-remote", remote, "refs/exps/*"], project).split()
    assert sorted(p.rsplit("/", 1)[-1] for p in pushed if p.startswith("refs/")) == names
    finished = [r.data.tags["dvc_exp_name"] for r in trainings("FINISHED")]
    assert sorted(finished) == names
    assert not trainings("RUNNING")
    parents = {r.data.tags["mlflow.parentRunId"] for r in trainings()}
    assert len(parents) == 1  # a restarted sweep resumes its parent run


def test_a_node_killed_mid_experiment_costs_a_retry_and_nothing_else(team, cluster, tmp_path):
    remote = run(["git", "remote", "get-url", "origin"], team).strip()
    sweep = start_sweep(team, "train.kl.beta=0.5,2,4,8", cluster.address)
    wait_for(lambda: len(trainings("RUNNING")) == 2, "two trainings at once", sweep)
    worker = next(node for node in cluster.worker_nodes)
    cluster.remove_node(worker, allow_graceful=False)  # SIGKILL: raylet, workers, all
    finish(sweep)

    names = [f"on-ray-{i}-s42" for i in range(1, 5)]
    assert_landed_once(team, remote, names)
    client = mlflow.MlflowClient()  # each run whole on the server, trained two at a time
    for r in trainings("FINISHED"):
        for key in ("loss", "val_neg_elbo", "beta", "learning_rate", "epoch_time"):
            assert [m.step for m in client.get_metric_history(r.info.run_id, key)] == [1, 2]
        assert "test_nll" in r.data.metrics and "best_val_neg_elbo" in r.data.metrics
        assert {a.path for a in client.list_artifacts(r.info.run_id, "train")} == {
            "train/history.csv"
        }
        assert len(client.list_artifacts(r.info.run_id, "figures")) == 8
    served = mlflow.pyfunc.load_model(f"runs:/{r.info.run_id}/model")  # the whole VAE, served
    assert served.predict(np.zeros((2, 784), np.float32)).shape == (2, 784)
    assert served.metadata.signature.params is not None
    assert len(trainings("KILLED")) == 1  # the attempt that died with its node: no further

    other = tmp_path / "other"  # any machine gets every experiment back
    run(["git", "clone", "-q", remote, str(other)], tmp_path)
    run(["dvc", "exp", "pull", "origin", "on-ray-3-s42"], other)
    assert "on-ray-3-s42" in run(["dvc", "exp", "show", "--csv"], other)
    run(["dvc", "exp", "apply", "on-ray-3-s42"], other)
    run(["dvc", "pull", "models/model.keras"], other)
    assert (other / "models" / "model.keras").stat().st_size > 0


def test_a_driver_killed_mid_sweep_is_restarted_by_the_same_command(team, cluster):
    remote = run(["git", "remote", "get-url", "origin"], team).strip()
    grid = "train.kl.beta=0.5,2,4"
    run(["git", "commit", "-q", "--allow-empty", "-m", "not pushed"], team)
    unpushed = start_sweep(team, grid, cluster.address)  # a failure of the task's own: once
    output, _ = unpushed.communicate(timeout=300)
    assert unpushed.returncode == 1 and "is not on the git remote the nodes clone" in output
    assert "retries remaining" not in output and "Traceback" not in output
    run(["git", "push", "-q", "origin", "main"], team)
    sweep = start_sweep(team, grid, cluster.address)
    csv = team / "report" / "experiments.csv"
    wait_for(lambda: csv.exists() and len(trainings("RUNNING")) >= 1, "a row and a run", sweep)
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait()
    done_before = len(read_rows(csv))

    output = finish(start_sweep(team, grid, cluster.address))
    assert output.count("done in") <= 3 - done_before  # only what had no row ran again
    assert_landed_once(team, remote, [f"on-ray-{i}-s42" for i in range(1, 4)])
    assert trainings("KILLED")  # the attempts the dead driver's tasks took along
