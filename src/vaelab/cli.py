"""`vaelab`: the project's own commands, beside `dvc repro` (the pipeline) and `mlflow`.

Each subcommand runs from the project root; `vaelab COMMAND --help` says what it does.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from vaelab.core.cli import run_command
from vaelab.core.params import load_params
from vaelab.core.paths import ABLATION, REPORTS
from vaelab.serving.server import HOST, PORT, TIMEOUT

COMMANDS: dict[str, tuple[str, str]] = {  # name: (what it does, an example)
    "sweep": ("run a grid of params overrides as DVC experiments, tracked in MLflow under one "
              "parent run, then compare them and register the best as the champion",
              "vaelab sweep -S 'train.kl.beta=0.5,1,2,4' --name beta-sweep"),
    "ablation": ("run what a study's runs.csv lacks of its plan (default: the trick ablation, "
                 "docs/ablation/plan.yaml), and render its page",
                 "vaelab ablation --plan docs/claims/plan.yaml --only batch-norm"),
    "compare": ("compare the runs of an MLflow experiment (a sweep's, with --sweep) in one "
                "report: table, rate-distortion plot, reconstructions side by side",
                "vaelab compare --sweep beta-sweep"),
    "register": ("register a run's model (the best of a sweep, or --run) as a new version; "
                 "the champion alias moves to it only if its test NLL is lower",
                 "vaelab register --sweep beta-sweep"),
    "ui": ("start the MLflow UI on 127.0.0.1 at this project's runs (port: VAELAB_UI_PORT)",
           "VAELAB_UI_PORT=5001 vaelab ui"),
    "outbox": ("send what a stage kept in its outbox while the tracking server was away",
               "vaelab outbox"),
    "serve": ("serve the champion (or --model URI) over HTTP with `mlflow models serve`: "
              "reconstruct, encode, decode, sample and score (docs/serving.md)",
              "vaelab serve --port 5001"),
}  # fmt: skip


def _executor(args: argparse.Namespace):
    """Where the experiments run: this machine (``--jobs`` at once) or a Ray cluster."""
    if args.ray is None:
        from vaelab.executors.local import LocalExecutor

        return LocalExecutor(args.jobs)
    from vaelab.core.git import git
    from vaelab.executors.ray_cluster import RayExecutor

    remote = args.git_remote or git("remote", "get-url", "origin").stdout.strip()
    return RayExecutor(args.ray, remote, args.cpus, args.gpus)


def _sweep(args: argparse.Namespace) -> None:
    from vaelab.experiments.sweep import run_sweep

    name = args.name or datetime.now().strftime("sweep-%Y%m%d-%H%M%S")
    print(run_sweep(name, args.set_param, _executor(args), args.out))


def _ablation(args: argparse.Namespace) -> None:
    from vaelab.experiments.plan import load_plan
    from vaelab.experiments.results import answer, read_rows
    from vaelab.experiments.runner import pending
    from vaelab.experiments.study import RESULTS, run_study

    only = set(args.only.split(",")) if args.only else None
    if args.list:  # every run, its stage, whether it is done or runs (again, here), overrides
        rows, plan = read_rows(args.plan.parent / RESULTS), load_plan(args.plan, only)
        todo = pending(plan, rows)
        for e in plan.experiments:
            state = ("again here" if answer(rows, e) else "to run") if e in todo else "done"
            print(f"{e.name:40s} {e.stage:9s} {state:10s} {e.overrides}")
        return
    executor = None if args.report else _executor(args)
    print(f"wrote {run_study(args.plan, executor, only)}")


def _compare(args: argparse.Namespace) -> None:
    from vaelab.experiments.compare import compare_runs
    from vaelab.tracking.store import connect

    connect(require=True)
    compare_runs(args.experiment or load_params().base.experiment, args.sweep, args.out)


def _register(args: argparse.Namespace) -> None:
    from vaelab.tracking.registry import promote
    from vaelab.tracking.store import connect

    experiment = args.experiment or load_params().base.experiment
    connect(require=True)
    print(promote(experiment, args.sweep, args.run))


def _ui(args: argparse.Namespace) -> None:
    from vaelab.tracking.ui import open_ui

    open_ui(load_params())


def _outbox(args: argparse.Namespace) -> None:
    from vaelab.tracking.outbox import send_kept

    send_kept(load_params())


def _serve(args: argparse.Namespace) -> None:
    from vaelab.serving.server import champion_uri, serve

    model = args.model or champion_uri(load_params().base.experiment)
    serve(model, args.host, args.port, args.workers, args.timeout)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="vaelab", description=__doc__.splitlines()[0])
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub: dict[str, argparse.ArgumentParser] = {}
    for name, (what, example) in COMMANDS.items():
        sub[name] = commands.add_parser(name, help=what, description=what[0].upper() + what[1:],
                                        epilog=f"example: {example}")  # fmt: skip
    jobs = {"type": int, "default": 1, "help": "experiments at once (default 1)"}
    p = sub["sweep"]
    p.add_argument("-S", "--set-param", action="append", required=True,
                   help="KEY=V1,V2,... as for `dvc exp run -S`; several make a grid")  # fmt: skip
    p.add_argument("--name", help="the sweep's tag (default: sweep-<time>)")
    p.add_argument("--out", type=Path, help="default: reports/sweeps/<name>")
    for name in ("sweep", "ablation"):
        p = sub[name]
        p.add_argument("--jobs", "-j", **jobs)
        p.add_argument(
            "--ray",
            metavar="ADDRESS",
            help="run on the Ray cluster at ADDRESS "
            "(HOST:PORT, or auto: the one this machine is in) instead of here",
        )
        p.add_argument(
            "--git-remote",
            help="what the cluster's nodes clone (default: origin); "
            "the commit must be pushed there",
        )
        p.add_argument("--cpus", type=float, default=1, help="CPUs per experiment (Ray)")
        p.add_argument("--gpus", type=float, help="GPUs per experiment (Ray; default: 1 where "
                       "the cluster has GPUs, else 0)")  # fmt: skip
    p = sub["ablation"]
    p.add_argument("--plan", type=Path, default=ABLATION / "plan.yaml", help="a plan file")
    p.add_argument("--only", help="comma-separated arm names")
    p.add_argument("--list", action="store_true", help="list the runs and which are done")
    p.add_argument("--report", action="store_true", help="render the page only, run nothing")
    for name in ("compare", "register"):
        sub[name].add_argument("--experiment", help="default: base.experiment of params.yaml")
    sub["compare"].add_argument("--sweep", help="only runs tagged sweep=NAME")
    sub["compare"].add_argument("--out", default=REPORTS / "compare", type=Path)
    choice = sub["register"].add_mutually_exclusive_group()
    choice.add_argument("--sweep", help="choose the best of the runs tagged sweep=NAME")
    choice.add_argument("--run", help="register this run's model")
    p = sub["serve"]
    p.add_argument("--model", help="a model URI (default: models:/<base.experiment>@champion)")
    p.add_argument("--host", default=HOST, help=f"address to listen on (default {HOST})")
    p.add_argument("--port", type=int, default=PORT, help=f"default {PORT}")
    p.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    p.add_argument("--timeout", type=int, default=TIMEOUT,
                   help=f"seconds a request may take (default {TIMEOUT})")  # fmt: skip
    return top


HANDLERS: dict[str, Callable[[argparse.Namespace], None]] = {
    "sweep": _sweep, "ablation": _ablation, "compare": _compare,
    "register": _register, "ui": _ui, "outbox": _outbox, "serve": _serve,
}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` and run its command; expected failures exit 1 with one message."""
    args = parser().parse_args(argv)
    run_command(lambda: HANDLERS[args.command](args))
