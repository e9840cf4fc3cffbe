"""DVC stage `figures`: PNGs of the trained run, also attached to its MLflow run."""

from vaelab.core.cli import evaluation_backend, run_stage
from vaelab.core.params import Params
from vaelab.core.paths import Artifacts
from vaelab.tracking.runs import log_to_training_run, training_run_id


def main(params: Params) -> None:
    from vaelab.report.render import render_all  # TensorFlow: after run_stage's quiet import

    run_id = training_run_id(params)
    paths = render_all(params)
    print(f"wrote {len(paths)} figures to {Artifacts.of(params).figures}")
    log_to_training_run(params, run_id, artifacts=[(str(p), "figures") for p in paths.values()])


if __name__ == "__main__":
    run_stage(main, backend=evaluation_backend)
