"""``python -m vaelab``: the `vaelab` command without the console script installed."""

from vaelab.cli import main

main()
