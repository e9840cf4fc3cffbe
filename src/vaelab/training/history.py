"""The per-epoch history CSV (results/train/history.csv): one row per epoch, ``epoch`` 1-based."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from vaelab.core.errors import DataFileError


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a history CSV (``epoch`` is 1-based: epochs completed), or [] if absent."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            rows = [_row(row, reader.line_num) for row in reader]
        except ValueError as exc:
            raise DataFileError(
                path,
                f"unreadable history ({exc})",
                "Restore it with `dvc checkout`, or delete it (and the training state it belongs "
                "to) and re-run `dvc repro train`",
            ) from None
    return rows


def _row(row: dict[str, str | None], line: int) -> dict[str, Any]:
    values = {}
    for key, text in row.items():
        if key is None or text is None or text.strip() == "":
            raise ValueError(f"line {line}: no value for {key or 'an extra column'}")
        try:
            values[key] = float(text)
        except ValueError:
            raise ValueError(f"line {line}: {key} = {text!r} is not a number") from None
    if "epoch" not in values:
        raise ValueError(f"line {line}: no epoch column")
    values["epoch"] = int(values["epoch"])
    return values


def history_csv(rows: list[dict[str, float]]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(
        {k: v if isinstance(v, int) else f"{v:.7g}" for k, v in row.items()} for row in rows
    )
    return out.getvalue()
