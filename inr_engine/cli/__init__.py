"""The ``inr-engine`` command line: :func:`main` runs one command; user errors are one line and exit 2."""

from __future__ import annotations

import signal
import sys

from ..files import COMMITTED
from .common import USER_ERRORS, Interrupted, UsageError
from .parser import build_parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    COMMITTED.clear()  # what this run writes
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        args.func(args)
    except (UsageError, *USER_ERRORS) as exc:
        return _fail(args, exc)
    except MemoryError as exc:
        return _fail(args, f"not enough memory for this input or configuration ({exc or 'MemoryError'}); use a "
                           "smaller input, configuration or batch")
    except RuntimeError as exc:
        if "allocate" in str(exc):
            return _fail(args, "not enough memory for this input or configuration; use a smaller input, "
                               "configuration or batch")
        if "CUDA" not in str(exc) and "cuda" not in str(exc):  # other RuntimeErrors are bugs
            raise
        return _fail(args, exc)
    except KeyboardInterrupt as exc:
        done = (f"after its outputs were written ({', '.join(p.name for p in COMMITTED)})" if COMMITTED else
                "; no output was written or changed")
        print(f"inr-engine {args.command}: interrupted{' ' if COMMITTED else ''}{done}", file=sys.stderr)
        return getattr(exc, "status", 128 + signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def console_main() -> None:
    """The ``inr-engine`` program: :func:`main`, then exit; once it has finished, a late Ctrl-C
    cannot turn a finished run into an exit status of 130."""
    status = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(status)


def _interrupt(signum: int, _frame) -> None:
    raise Interrupted(signum)


def _fail(args, exc: BaseException | str) -> int:
    message = " ".join(str(exc).split())  # one line, whatever a library put in its message
    print(f"inr-engine {args.command}: error: {message}", file=sys.stderr)
    return 2

