"""What every benchmark script ends with: its results as JSON and as a Markdown table, printed too."""

from __future__ import annotations

import json
from pathlib import Path


def write_results(out: str | Path, stem: str, results: dict, table: str) -> None:
    """``<out>/<stem>.json`` and ``<out>/<stem>.md``; the table also goes to stdout."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / f"{stem}.md").write_text(table.rstrip("\n") + "\n")
    print(table)
