"""``python -m inr_engine.cli``: the ``inr-engine`` program."""

from . import console_main

console_main()
