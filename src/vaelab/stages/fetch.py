"""DVC stage `fetch`: the four MNIST IDX files, checksum-verified, into data/raw."""

from vaelab.core.cli import run_stage
from vaelab.core.params import Params
from vaelab.core.paths import Artifacts
from vaelab.sources.fetch import fetch_all


def main(params: Params) -> None:
    used = fetch_all(Artifacts.of(params).raw, params.fetch)
    for name, source in used.items():
        print(f"{name}: verified ({source})")


if __name__ == "__main__":
    run_stage(main)
