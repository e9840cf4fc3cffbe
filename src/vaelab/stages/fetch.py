"""DVC stage `fetch`: the four MNIST IDX files, checksum-verified, into data/raw."""

from vaelab.fetch import fetch_all
from vaelab.params import Params
from vaelab.stages import run_stage


def main(params: Params) -> None:
    used = fetch_all(params.base.paths.raw, params.fetch.mirrors, params.fetch.timeout)
    for name, source in used.items():
        print(f"{name}: verified ({source})")


if __name__ == "__main__":
    run_stage(main)
