"""DVC stage `figures`: PNGs of the trained run, also attached to its MLflow run."""

from vaelab import tracking
from vaelab.params import Params
from vaelab.stages import run_stage
from vaelab.visualize import figure_dir, render_all


def main(params: Params) -> None:
    paths = render_all(params)
    with tracking.training_run(params):
        import mlflow

        mlflow.log_artifacts(str(figure_dir(params)), artifact_path="figures")
    print(f"wrote {len(paths)} figures to {figure_dir(params)}")


if __name__ == "__main__":
    run_stage(main)
