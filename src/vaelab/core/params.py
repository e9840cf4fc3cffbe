"""The typed schema of params.yaml: loaded and validated once, at the start of every stage.

params.yaml is the only place defaults live: the schema has none, so a missing key is an
error, never a silent fallback. Every error names the key, the bad value and what is allowed,
so a typo in a ``dvc exp run -S`` override stops the stage before any work is done.
"""

from __future__ import annotations

import itertools
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vaelab.core.errors import ParamsError
from vaelab.core.mnist import HEIGHT, PIXELS, TEST_SIZE, TRAIN_SIZE

EVALUATE_BYTES = 4 * 2**30  # one IWAE decoder call may take this much memory
TSNE_PERPLEXITY = 30  # scikit-learn's default, which the figures stage uses
Backend = Literal["tensorflow", "jax"]  # the Keras backends a stage can run on


class Section(BaseModel):
    """A params section: unknown keys, missing keys and silent type coercion are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class Paths(Section):
    raw: str = Field(min_length=1)
    prepared: str = Field(min_length=1)
    models: str = Field(min_length=1)
    results: str = Field(min_length=1)
    # Resume state and the MLflow outbox. Never a DVC output, because `dvc repro` deletes
    # outputs before re-running a stage.
    state: str = Field(min_length=1)

    @model_validator(mode="after")
    def _apart(self) -> Self:
        # DVC deletes an output before its stage runs: nothing may live inside another path.
        named = {k: PurePosixPath(os.path.normpath(v)) for k, v in self.model_dump().items()}
        for (a, pa), (b, pb) in itertools.combinations(named.items(), 2):
            if pa == pb or pa in pb.parents or pb in pa.parents:
                raise ValueError(
                    f"base.paths.{a}={str(pa)!r} and base.paths.{b}={str(pb)!r} overlap: `dvc "
                    "repro` deletes a stage's outputs before it runs, with whatever is inside "
                    "them; give each its own folder"
                )
        return self


class Base(Section):
    seed: int = Field(ge=0, le=2**31 - 1)
    experiment: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$",
        max_length=200,
        description="also the registered model's name: letters, digits, ' ', '.', '_', '-'",
    )
    paths: Paths


def check_mirror(url: str, allow_http: bool) -> None:
    """Raise ValueError unless ``url`` is a file:// or https:// URL (or http:// if allowed)."""
    schemes = ("https://", "file://", *(("http://",) if allow_http else ()))
    if url.startswith(schemes):
        return
    if url.startswith("http://"):
        raise ValueError(
            f"{url!r} is plain http:// (readable and alterable on the way); use https://, or "
            "set fetch.allow_http: true to accept it (the MD5 check still applies)"
        )
    raise ValueError(f"{url!r} is not a usable URL; use https:// or file://")


class Fetch(Section):
    mirrors: list[str]
    timeout: float = Field(gt=0, le=600, description="seconds a request may stay silent")
    deadline: float = Field(gt=0, le=86_400, description="seconds per file and source, in all")
    allow_http: bool

    @model_validator(mode="after")
    def _urls(self) -> Self:
        for url in self.mirrors:
            try:
                check_mirror(url, self.allow_http)
            except ValueError as exc:
                raise ValueError(f"fetch.mirrors: {exc}") from None
        return self


class Augment(Section):
    enabled: bool
    rotation: float = Field(ge=0, le=180, description="max degrees, both ways")
    shift: float = Field(ge=0, le=0.5, description="max fraction of height/width")
    shear: float = Field(ge=0, le=1)
    zoom: float = Field(ge=0, lt=1, description="max fraction in or out")
    horizontal_flip: bool
    vertical_flip: bool


class Prepare(Section):
    val_size: int = Field(ge=1, lt=TRAIN_SIZE)
    subset: int | None = Field(
        ge=100, le=TRAIN_SIZE, description="the latent probe needs every class: >= 100 images"
    )
    binarize: Literal["none", "static", "dynamic"]
    augment: Augment

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
        return (self.subset or TRAIN_SIZE) - self.val_size

    @property
    def test_size(self) -> int:
        return min(self.subset or TEST_SIZE, TEST_SIZE)


class Architecture(Section):
    kind: Literal["mlp", "conv"]
    hidden: list[Annotated[int, Field(ge=1, le=8192)]] = Field(min_length=1, max_length=8)
    filters: list[Annotated[int, Field(ge=1, le=1024)]] = Field(
        min_length=1, max_length=2, description="one or two stride-2 conv stages (28 -> 14 -> 7)"
    )
    dense: int = Field(ge=0, le=8192, description="conv only; 0 = no dense layer")
    upsample: Literal["transpose", "pixel_shuffle"] = Field(
        description="conv decoder's last step to 28x28: a transposed-conv stage, or a 3x3 conv"
        " to 4 logits per 14x14 pixel rearranged by depth_to_space (half the cost)"
    )
    latent_dim: int = Field(ge=2, le=512, description="the figures project it onto 2 axes")
    activation: Literal["relu", "elu", "gelu", "tanh", "swish", "leaky_relu"]
    batch_norm: bool
    normalize_inputs: bool = Field(description="false: the encoder sees raw 0-255 pixels")


class Likelihood(Section):
    kind: Literal["bernoulli", "gaussian"]
    # Fixed std of the Gaussian decoder. sigma^2 = 0.5 makes -log p(x|z) equal the summed
    # squared error plus a constant, i.e. the tutorial's MSE loss.
    sigma: float = Field(gt=0, le=10)


class KLWeight(Section):
    beta: float = Field(ge=0, le=1000)
    schedule: Literal["constant", "linear", "cyclical"]
    unit: Literal["epoch", "step"]
    warmup: float = Field(gt=0, le=1e7, description="linear: length of the ramp 0 -> beta")
    cycles: int = Field(ge=1, le=10_000, description="cyclical: number of cycles M")
    ratio: float = Field(gt=0, le=1, description="cyclical: fraction R of a cycle rising")
    free_bits: float = Field(ge=0, le=100, description="KL floor per latent dim, nats")


class Prior(Section):
    kind: Literal["standard", "mixture"] = Field(description="N(0, I) | a learned mixture")
    components: int = Field(ge=1, le=4096, description="mixture: Gaussian components")


class Optimizer(Section):
    name: Literal["adam", "rmsprop", "sgd"]
    learning_rate: float = Field(gt=0, le=10)
    momentum: float = Field(ge=0, lt=1, description="sgd and rmsprop")
    clipnorm: float | None = Field(gt=0, le=1e6)


class LRSchedule(Section):
    name: Literal["constant", "exponential", "cosine"]
    decay_rate: float = Field(gt=0, lt=1, description="exponential: factor per decay_epochs")
    decay_epochs: float = Field(gt=0, le=1e6, description="exponential")
    min_fraction: float = Field(ge=0, lt=1, description="cosine: final lr / initial lr")


class ReduceOnPlateau(Section):
    enabled: bool
    factor: float = Field(gt=0, lt=1)
    patience: int = Field(ge=0, le=10_000)
    min_lr: float = Field(ge=0, le=10)


class EarlyStopping(Section):
    enabled: bool
    patience: int = Field(ge=0, le=10_000)
    min_delta: float = Field(ge=0, le=1e6)
    start_from_epoch: int = Field(ge=0, le=10_000)


class Train(Section):
    epochs: int = Field(ge=1, le=10_000)
    batch_size: int = Field(ge=1, le=65_536)
    architecture: Architecture
    likelihood: Likelihood
    kl: KLWeight
    prior: Prior
    optimizer: Optimizer
    lr_schedule: LRSchedule
    reduce_on_plateau: ReduceOnPlateau
    early_stopping: EarlyStopping
    run_name: str | None = Field(min_length=1, max_length=250)
    distribute: bool = Field(description="each batch split over the visible devices")
    steps_per_execution: int = Field(ge=1, le=10_000, description="train steps per graph call")
    backend: Backend = Field(description="the Keras backend of the train stage")

    @model_validator(mode="after")
    def _free_bits_need_dimensions(self) -> Self:
        if self.prior.kind == "mixture" and self.kl.free_bits > 0:
            raise ValueError(
                f"train.kl.free_bits={self.kl.free_bits:g} floors the KL of each latent "
                "dimension, which only the standard prior splits by dimension: set "
                "train.kl.free_bits to 0 or train.prior.kind to 'standard'"
            )
        return self

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

    epochs: int = Field(ge=1, le=100)
    batch_size: int = Field(ge=1, le=65_536)
    train_images: int = Field(ge=100, le=TRAIN_SIZE)


class Evaluate(Section):
    importance_samples: int = Field(ge=1, le=100_000, description="k of the IWAE bound")
    batch_size: int = Field(ge=1, le=10_000)
    chunk: int = Field(ge=1, le=10_000, description="samples per decoder call")
    prior_samples: int = Field(ge=100, le=100_000, description="for the Fréchet distance")
    backend: Backend = Field(description="the Keras backend of the evaluate and figures stages")


class Figures(Section):
    columns: int = Field(ge=1, le=50, description="originals over reconstructions")
    grid: int = Field(ge=2, le=40, description="prior samples: grid x grid")
    traversal_dims: int = Field(ge=1, le=64)
    traversal_steps: int = Field(ge=3, le=41)
    traversal_range: float = Field(gt=0, le=10, description="+- this many std")
    projection: Literal["pca", "tsne"]
    projection_points: int = Field(ge=10, le=TEST_SIZE)

    @model_validator(mode="after")
    def _tsne_points(self) -> Self:
        if self.projection == "tsne" and self.projection_points <= TSNE_PERPLEXITY:
            raise ValueError(
                f"figures.projection_points={self.projection_points} is too few for t-SNE "
                f"(perplexity {TSNE_PERPLEXITY}): use more than {TSNE_PERPLEXITY}, or pca"
            )
        return self


class Tracking(Section):
    """How runs are logged; no DVC stage depends on it, since it changes no output."""

    system_metrics: bool = Field(description="CPU and memory use sampled into training runs")
    system_metrics_interval: float = Field(ge=0.1, le=3600, description="seconds between samples")
    # Set per experiment by a sweep (`-S`), so that they travel with the experiment itself.
    sweep: str | None = Field(min_length=1, max_length=250, description="the runs' sweep tag")
    parent_run: str | None = Field(pattern=r"^[0-9a-f]{32}$", description="MLflow parent run")


class Params(Section):
    base: Base
    tracking: Tracking
    fetch: Fetch
    prepare: Prepare
    train: Train
    classifier: Classifier
    evaluate: Evaluate
    figures: Figures

    @model_validator(mode="after")
    def _batch_fits(self) -> Self:
        if self.train.batch_size > self.prepare.train_size:
            raise ValueError(
                f"train.batch_size={self.train.batch_size} is larger than the "
                f"{self.prepare.train_size} training images left after prepare.subset and "
                "prepare.val_size: lower batch_size"
            )
        return self

    @model_validator(mode="after")
    def _evaluation_fits(self) -> Self:
        ev = self.evaluate
        need = evaluation_bytes(self)
        if need > EVALUATE_BYTES:
            raise ValueError(
                f"evaluate.batch_size={ev.batch_size} x evaluate.chunk={ev.chunk} decodes "
                f"{ev.batch_size * ev.chunk:,} images at once, about {need / 2**30:.1f} GiB for "
                f"this decoder (train.architecture); the limit is {EVALUATE_BYTES / 2**30:g} "
                "GiB: lower either (they set memory and speed, not what is estimated)"
            )
        return self

    def flat(self) -> dict[str, Any]:
        """All params as ``{"section.key": value}``, e.g. for MLflow."""
        return flatten(self.model_dump())

    def replace(self, overrides: Mapping[str, Any]) -> Params:
        """A validated copy with ``overrides`` (nested sections) merged in."""
        return validate(merge(self.model_dump(), overrides), "overrides")


def evaluation_bytes(params: Params) -> int:
    """Memory of one decoder call of the IWAE bound: batch_size x chunk images, each with its
    decoder activations and three image-sized tensors (targets, logits, log-likelihoods)."""
    arch, side = params.train.architecture, HEIGHT // 2
    if arch.kind == "mlp":
        units = sum(arch.hidden)
    else:  # the conv decoder's feature maps: 7x7 (two stages), 14x14, and the dense layer
        maps = [f * (side // 2**i) ** 2 for i, f in enumerate(arch.filters)]
        units = arch.dense + 2 * sum(maps)
    return 4 * params.evaluate.batch_size * params.evaluate.chunk * (units + 3 * PIXELS)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def merge(tree: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``tree`` with ``overrides`` merged in, section by section."""
    merged = dict(tree)
    for key, value in overrides.items():
        inner = merged.get(key)
        merged[key] = (
            merge(inner, value)
            if isinstance(value, Mapping) and isinstance(inner, Mapping)
            else value
        )
    return merged


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; raise ParamsError naming every bad key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path} not found: run the stage from the project root") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ParamsError(f"{path} cannot be read as YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ParamsError(
            f"{path} must be a mapping of sections, got {type(raw).__name__}: restore it with "
            "`git checkout params.yaml`"
        )
    return validate(raw, str(path))


def validate(raw: Mapping[str, Any], source: str) -> Params:
    """``raw`` as Params; ParamsError listing every bad key of ``source``."""
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(error) for error in exc.errors()]
        raise ParamsError(f"{source} is invalid:\n" + "\n".join(lines)) from None


def _describe(error: Any) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(error["loc"][:-1]))
        return f"  - {key}: unknown key; allowed here: {allowed}"
    if error["type"] == "missing":
        return f"  - {key}: missing; every key is set in params.yaml (see the committed one)"
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
