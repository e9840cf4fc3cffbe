"""DVC stage `prepare`: normalize, split and (optionally) binarize into data/prepared."""

from vaelab.params import Params
from vaelab.prepare import prepare
from vaelab.stages import run_stage


def main(params: Params) -> None:
    meta = prepare(
        params.base.paths.raw, params.base.paths.prepared, params.prepare, params.base.seed
    )
    print(f"prepared {meta['sizes']} (binarize={meta['binarize']})")


if __name__ == "__main__":
    run_stage(main)
