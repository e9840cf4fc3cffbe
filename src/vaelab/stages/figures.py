"""DVC stage `figures`: PNGs of the trained run, also attached to its MLflow run."""

from vaelab import tracking
from vaelab.outbox import Delivery, deliver
from vaelab.params import Params
from vaelab.stages import run_stage
from vaelab.visualize import render_all


def main(params: Params) -> None:
    paths = render_all(params)
    run_id = tracking.training_run_id(params)
    deliver(Delivery(run_id, artifacts=[(str(p), "figures") for p in paths.values()]))
    print(f"wrote {len(paths)} figures to {next(iter(paths.values())).parent}")


if __name__ == "__main__":
    run_stage(main)
