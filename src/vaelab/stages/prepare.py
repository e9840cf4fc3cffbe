"""DVC stage `prepare`: normalize, split and (optionally) binarize into data/prepared."""

from vaelab.core.cli import run_stage
from vaelab.core.params import Params
from vaelab.core.paths import Artifacts
from vaelab.data.prepare import prepare


def main(params: Params) -> None:
    meta = prepare(Artifacts.of(params), params.prepare, params.base.seed)
    print(f"prepared {meta['sizes']} (binarize={meta['binarize']})")


if __name__ == "__main__":
    run_stage(main)
