"""The ``imgclf`` command line: :func:`run` is the console script, one module per subcommand."""

from __future__ import annotations

import sys


def run(argv: list[str] | None = None) -> int:
    """The ``imgclf`` console script and ``python -m imgclf``: load the commands, then run
    one. Loading PyTorch takes a few seconds; Ctrl-C meanwhile ends the command as it does
    later on (exit 130), not with a traceback."""
    try:
        from imgclf.cli.main import main
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return main(argv)
