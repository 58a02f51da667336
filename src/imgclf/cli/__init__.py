"""The ``imgclf`` command line: :func:`run` is the console script, one module per subcommand."""

from __future__ import annotations

import atexit
import signal
import sys


def run(argv: list[str] | None = None) -> int:
    """The ``imgclf`` console script and ``python -m imgclf``: load the commands, then run
    one. Loading PyTorch takes a few seconds; Ctrl-C meanwhile ends the command as it does
    later on (exit 130), not with a traceback. Once the command has ended, Ctrl-C is
    ignored while the process exits: Python's clean-up (worker processes joined, say) then
    runs whole, instead of printing a traceback from one of its callbacks."""
    try:
        from imgclf.cli.main import main
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    try:
        return main(argv)
    finally:  # registered last, so first to run at exit
        atexit.register(signal.signal, signal.SIGINT, signal.SIG_IGN)
