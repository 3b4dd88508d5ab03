"""``priors list|show|verify|set|manifest``."""

from __future__ import annotations

import json

from ..priors import DEFAULT_PRIORS
from .common import UsageError


def run_priors(args) -> dict:
    from ..priors import BUNDLED_DIR, bundled_priors, load_prior, set_metadata, write_manifest

    if args.action in ("set", "manifest") and args.prior is None:
        raise UsageError(f"priors {args.action}: name the prior file (set) or the folder of priors (manifest)")
    if args.action == "set":
        changes = dict(_metadata_change(item) for item in args.set or [])
        if not changes:
            raise UsageError("priors set: give at least one --set KEY=JSON")
        path = set_metadata(args.prior, changes)
        print(f"updated {path}: {', '.join(sorted(changes))}")
        return load_prior(path).metadata
    if args.action == "manifest":
        path = write_manifest(args.prior)
        print(f"wrote {path}")
        return {"manifest": str(path)}
    if args.action == "list":
        entries = bundled_priors()
        for name, e in entries.items():
            print(f"{name:24s} {e['task']:18s} {e['description']}")
        print(f"({BUNDLED_DIR})")
        return entries
    prior = args.prior or DEFAULT_PRIORS["shape_completion"]
    if args.action == "show":
        meta = dict(load_prior(prior).metadata)  # verifies format, metadata and checksum
        print(json.dumps(meta, indent=2))
        return meta
    from .prior_check import verify_prior

    print(verify_prior(prior))  # every check that loading for use runs, the network built
    return dict(load_prior(prior).metadata)


def _metadata_change(item: str) -> tuple[str, object]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UsageError(f"--set {item!r}: expected KEY=JSON, e.g. classes='[\"background\", \"liver\"]'")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--set {key}: the value is not JSON ({exc})") from exc
