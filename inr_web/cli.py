"""``inr-engine web``: the subcommand this package adds to the engine's command line.

Registered through the ``inr_engine.commands`` entry point; importing this module imports
neither trame nor PyTorch, so ``inr-engine --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from inr_engine.cli.common import UsageError

INSTALL_HINT = 'the web front end needs its extra: pip install "inr-engine[web]"'


def register(subparsers) -> None:
    """Add ``web`` to the engine's subcommands."""
    w = subparsers.add_parser(
        "web", help="open the methods in a browser (trame-slicer; needs the web extra)",
        description="Start a web server with slice views, a 3D view, a segment editor and the INR methods. It listens "
                    "on 127.0.0.1 (this computer only) unless --host says otherwise: --host 0.0.0.0 lets anyone who "
                    "can reach this computer's port load files into it, run methods and download results.")
    w.add_argument("files", nargs="*", help="NIfTI or NRRD files to load at start (images, or label maps to complete)")
    w.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this computer only)")
    w.add_argument("--port", type=int, default=8080, help="port (default: 8080; 0 picks a free one)")
    w.add_argument("--open", action="store_true", help="open the page in this computer's browser")
    w.set_defaults(func=run_web)


def run_web(args: argparse.Namespace) -> None:
    for file in args.files:
        if not Path(file).is_file():
            raise UsageError(f"{file}: no such file")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0 to 65535, got {args.port}")
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # headless servers: no X display
    try:
        from .app import InrWebApp
    except ImportError as exc:
        raise UsageError(f"{INSTALL_HINT} ({exc})") from exc
    app = InrWebApp(files=tuple(args.files))
    app.server.start(host=args.host, port=args.port, open_browser=args.open)
