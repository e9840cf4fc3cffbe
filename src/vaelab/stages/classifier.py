"""DVC stage `classifier`: the small MNIST classifier behind the Fréchet distance (cached)."""

from pathlib import Path

from vaelab.atomic import save_model, write_json
from vaelab.frechet import train_classifier
from vaelab.params import Params
from vaelab.stages import run_stage


def main(params: Params) -> None:
    model, accuracy = train_classifier(params.base.paths.raw, params.classifier, params.base.seed)
    save_model(model, Path(params.base.paths.models) / "classifier.keras")
    write_json(
        Path(params.base.paths.results) / "classifier" / "metrics.json",
        {"test_accuracy": round(accuracy, 4)},
    )
    print(f"classifier test accuracy {accuracy:.4f}")


if __name__ == "__main__":
    run_stage(main)
