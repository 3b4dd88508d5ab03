"""What every benchmark shares: its common options, where its files go, and one results writer.

Common options: ``--data-root`` (the shared data folder; each benchmark finds its data set in it,
see :mod:`benchmarks.datasets`), ``--out`` (the results folder), ``--work-dir`` (caches, trained
baselines and intermediate priors: never results), ``--threads``, and where a benchmark has them,
``--seed`` and ``--device``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = REPO.parent / "shared" / "data"  # the shared data folder (its README names the data sets)
RESULTS = REPO / "benchmarks" / "results"
WORK = REPO / "runs"  # git-ignored


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows the defaults that are values (not None or False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default in (None, False) else super()._get_help_string(action)


def parser(doc: str, results: str = "", *, threads: int | None = None, seed: bool = False,
           device: bool = False) -> argparse.ArgumentParser:
    """A benchmark's argument parser with the common options; ``doc``: its module docstring (the first
    paragraph describes it), ``results``: its folder under ``benchmarks/results``."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=_Help)
    p.add_argument("--data-root", type=Path, default=DATA_ROOT, help="the shared data folder")
    p.add_argument("--out", type=Path, default=RESULTS / results, help="results folder")
    p.add_argument("--work-dir", type=Path, default=WORK,
                   help="caches, trained baselines and intermediate priors (never results)")
    p.add_argument("--threads", type=int, default=threads,
                   help="torch CPU threads" + (" (default: torch's choice)" if threads is None else ""))
    if seed:
        p.add_argument("--seed", type=int, default=0)
    if device:
        p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    return p


def parse(p: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` and apply ``--threads``."""
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def command() -> str:
    """This process's command line: ``python -m benchmarks.<name> ...`` when run as a module."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    head = ["-m", spec.name] if spec is not None else sys.argv[:1]
    return " ".join([sys.executable, *head, *sys.argv[1:]])


def write_results(out: str | Path, stem: str, results: dict, table: str | None = None) -> None:
    """``<out>/<stem>.json`` (strict JSON: NumPy scalars as numbers, NaN and infinities as null) and,
    given a Markdown ``table``, ``<out>/<stem>.md``; the table also goes to stdout."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(jsonable(results), indent=1) + "\n")
    if table is not None:
        (out / f"{stem}.md").write_text(table.rstrip("\n") + "\n")
        print(table)


def jsonable(value):
    """NumPy scalars to Python, tuples to lists, NaN and infinity to None (strict JSON)."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value
