"""DVC stage `classifier`: the small MNIST classifier behind the Fréchet distance (cached).

It learns from the raw images, all 60,000 training ones (not the prepared split), so it does
not change with the prepare params and is trained once.
"""

from vaelab.core.atomic import save_model, write_json
from vaelab.core.cli import run_stage, tensorflow_backend
from vaelab.core.mnist import normalize
from vaelab.core.params import Params
from vaelab.core.paths import Artifacts
from vaelab.sources.files import load_split


def main(params: Params) -> None:
    from vaelab.classifier.network import train_classifier  # after the quiet TF import

    paths = Artifacts.of(params)
    (x_train, y_train), (x_test, y_test) = (load_split(paths.raw, s) for s in ("train", "test"))
    model, accuracy = train_classifier(
        (normalize(x_train), y_train),
        (normalize(x_test), y_test),
        params.classifier,
        params.base.seed,
    )
    save_model(model, paths.classifier_model)
    write_json(paths.classifier_metrics, {"test_accuracy": round(accuracy, 4)})
    print(f"classifier test accuracy {accuracy:.4f}")


if __name__ == "__main__":
    run_stage(main, backend=tensorflow_backend)
