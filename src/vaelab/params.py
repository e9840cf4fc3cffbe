"""The typed schema of params.yaml: loaded and validated once, at the start of every stage.

Every error names the key, the bad value and what is allowed, so a typo in a
``dvc exp run -S`` override stops the stage before any work is done.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vaelab.errors import ParamsError

MNIST_TRAIN_SIZE = 60_000
MNIST_TEST_SIZE = 10_000


class Section(BaseModel):
    """A params section: unknown keys and silent type coercion are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class Paths(Section):
    raw: str = "data/raw"
    prepared: str = "data/prepared"
    models: str = "models"
    results: str = "results"
    # Resume state (BackupAndRestore, best checkpoint so far, run id). Never a DVC
    # output, because `dvc repro` deletes outputs before re-running a stage.
    state: str = ".vaelab"


class Base(Section):
    seed: int = Field(42, ge=0, le=2**31 - 1)
    experiment: str = Field("vaelab", min_length=1, max_length=200)
    paths: Paths = Paths()


class Fetch(Section):
    mirrors: list[str] = Field(default_factory=list)
    timeout: float = Field(30.0, gt=0, le=600)

    @model_validator(mode="after")
    def _urls(self) -> Self:
        for url in self.mirrors:
            if not url.startswith(("https://", "http://", "file://")):
                raise ValueError(
                    f"fetch.mirrors entry {url!r} is not a URL; use https://, http:// or file://"
                )
        return self


class Augment(Section):
    enabled: bool = True
    rotation: float = Field(10.0, ge=0, le=180, description="max degrees, both ways")
    shift: float = Field(0.1, ge=0, le=0.5, description="max fraction of height/width")
    shear: float = Field(0.0, ge=0, le=1)
    zoom: float = Field(0.1, ge=0, lt=1, description="max fraction in or out")
    horizontal_flip: bool = False
    vertical_flip: bool = False


class Prepare(Section):
    val_size: int = Field(10_000, ge=1, lt=MNIST_TRAIN_SIZE)
    subset: int | None = Field(None, ge=2, le=MNIST_TRAIN_SIZE)
    binarize: Literal["none", "static", "dynamic"] = "dynamic"
    augment: Augment = Augment()

    @model_validator(mode="after")
    def _split_fits(self) -> Self:
        if self.subset is not None and self.val_size >= self.subset:
            raise ValueError(
                f"prepare.val_size={self.val_size} must be smaller than "
                f"prepare.subset={self.subset}: lower val_size or raise subset"
            )
        return self

    @property
    def train_size(self) -> int:
        return (self.subset or MNIST_TRAIN_SIZE) - self.val_size

    @property
    def test_size(self) -> int:
        return min(self.subset or MNIST_TEST_SIZE, MNIST_TEST_SIZE)


class Architecture(Section):
    kind: Literal["mlp", "conv"] = "mlp"
    hidden: list[typing.Annotated[int, Field(ge=1, le=8192)]] = Field(
        default_factory=lambda: [512, 512], min_length=1, max_length=8
    )
    filters: list[typing.Annotated[int, Field(ge=1, le=1024)]] = Field(
        default_factory=lambda: [32, 64],
        min_length=1,
        max_length=2,
        description="one or two stride-2 conv stages (28 -> 14 -> 7)",
    )
    dense: int = Field(512, ge=0, le=8192, description="conv only; 0 = no dense layer")
    latent_dim: int = Field(32, ge=1, le=512)
    activation: Literal["relu", "elu", "gelu", "tanh", "swish", "leaky_relu"] = "relu"
    batch_norm: bool = False


class Likelihood(Section):
    kind: Literal["bernoulli", "gaussian"] = "bernoulli"
    # Fixed std of the Gaussian decoder. sigma^2 = 0.5 makes -log p(x|z) equal the summed
    # squared error plus a constant, i.e. the tutorial's MSE loss.
    sigma: float = Field(0.5**0.5, gt=0, le=10)


class KLWeight(Section):
    beta: float = Field(1.0, ge=0, le=1000)
    schedule: Literal["constant", "linear", "cyclical"] = "linear"
    unit: Literal["epoch", "step"] = "epoch"
    warmup: float = Field(10.0, gt=0, description="linear: length of the ramp 0 -> beta")
    cycles: int = Field(4, ge=1, description="cyclical: number of cycles M")
    ratio: float = Field(0.5, gt=0, le=1, description="cyclical: fraction R of a cycle rising")
    free_bits: float = Field(0.0, ge=0, le=100, description="KL floor per latent dim, nats")


class Optimizer(Section):
    name: Literal["adam", "rmsprop", "sgd"] = "adam"
    learning_rate: float = Field(1e-3, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd and rmsprop")
    clipnorm: float | None = Field(None, gt=0)


class LRSchedule(Section):
    name: Literal["constant", "exponential", "cosine"] = "cosine"
    decay_rate: float = Field(0.5, gt=0, lt=1, description="exponential: factor per decay_epochs")
    decay_epochs: float = Field(10.0, gt=0, description="exponential")
    min_fraction: float = Field(0.0, ge=0, lt=1, description="cosine: final lr / initial lr")


class ReduceOnPlateau(Section):
    enabled: bool = False
    factor: float = Field(0.5, gt=0, lt=1)
    patience: int = Field(3, ge=0)
    min_lr: float = Field(1e-6, ge=0)


class EarlyStopping(Section):
    enabled: bool = True
    patience: int = Field(10, ge=0)
    min_delta: float = Field(0.0, ge=0)
    start_from_epoch: int = Field(0, ge=0)


class Train(Section):
    epochs: int = Field(30, ge=1, le=10_000)
    batch_size: int = Field(128, ge=1, le=65_536)
    architecture: Architecture = Architecture()
    likelihood: Likelihood = Likelihood()
    kl: KLWeight = KLWeight()
    optimizer: Optimizer = Optimizer()
    lr_schedule: LRSchedule = LRSchedule()
    reduce_on_plateau: ReduceOnPlateau = ReduceOnPlateau()
    early_stopping: EarlyStopping = EarlyStopping()
    run_name: str | None = Field(None, min_length=1, max_length=250)
    distribute: bool = Field(False, description="MirroredStrategy when several GPUs are visible")

    @model_validator(mode="after")
    def _one_lr_controller(self) -> Self:
        if self.reduce_on_plateau.enabled and self.lr_schedule.name != "constant":
            raise ValueError(
                f"train.lr_schedule.name={self.lr_schedule.name!r} cannot be combined with "
                "train.reduce_on_plateau.enabled=true (Keras refuses to change a scheduled "
                "learning rate): set lr_schedule.name to 'constant' or disable reduce_on_plateau"
            )
        return self


class Classifier(Section):
    """The small MNIST classifier whose features the Fréchet distance uses."""

    epochs: int = Field(3, ge=1, le=100)
    batch_size: int = Field(128, ge=1, le=65_536)
    train_images: int = Field(MNIST_TRAIN_SIZE, ge=100, le=MNIST_TRAIN_SIZE)


class Evaluate(Section):
    importance_samples: int = Field(1000, ge=1, le=100_000, description="k of the IWAE bound")
    batch_size: int = Field(100, ge=1, le=10_000)
    chunk: int = Field(100, ge=1, le=10_000, description="samples per decoder call")
    prior_samples: int = Field(10_000, ge=100, le=100_000, description="for the Fréchet distance")


class Figures(Section):
    columns: int = Field(10, ge=1, le=50, description="originals over reconstructions")
    grid: int = Field(10, ge=2, le=40, description="prior samples: grid x grid")
    traversal_dims: int = Field(8, ge=1, le=64)
    traversal_steps: int = Field(11, ge=3, le=41)
    traversal_range: float = Field(3.0, gt=0, le=10, description="+- this many std")
    projection: Literal["pca", "tsne"] = "pca"
    projection_points: int = Field(5000, ge=10, le=MNIST_TEST_SIZE)


class Params(Section):
    base: Base = Base()
    fetch: Fetch = Fetch()
    prepare: Prepare = Prepare()
    train: Train = Train()
    classifier: Classifier = Classifier()
    evaluate: Evaluate = Evaluate()
    figures: Figures = Figures()

    @model_validator(mode="after")
    def _batch_fits(self) -> Self:
        if self.train.batch_size > self.prepare.train_size:
            raise ValueError(
                f"train.batch_size={self.train.batch_size} is larger than the "
                f"{self.prepare.train_size} training images left after prepare.subset and "
                "prepare.val_size: lower batch_size"
            )
        return self

    def flat(self) -> dict[str, Any]:
        """All params as ``{"section.key": value}``, e.g. for MLflow."""
        return flatten(self.model_dump())


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; raise ParamsError naming every bad key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path} not found: run the stage from the project root") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ParamsError(f"{path} cannot be read as YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path} must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(error) for error in exc.errors()]
        raise ParamsError(f"{path} is invalid:\n" + "\n".join(lines)) from None


def _describe(error: Any) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(error["loc"][:-1]))
        return f"  - {key}: unknown key; allowed here: {allowed}"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "value_error":
        return f"  - {key}: {message}"
    return f"  - {key} = {error['input']!r}: {message}"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = Params
    for part in loc:
        annotation = model.model_fields[part].annotation
        model = next(
            (a for a in (*typing.get_args(annotation), annotation) if _is_section(a)), None
        )
        if model is None:
            return []
    return list(model.model_fields)


def _is_section(annotation: Any) -> bool:
    return (
        isinstance(annotation, type)
        and not isinstance(annotation, types.GenericAlias)
        and issubclass(annotation, Section)
    )
