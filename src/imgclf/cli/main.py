"""The ``imgclf`` command: one entry point, one module per subcommand."""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import sys

from imgclf import __version__
from imgclf.cli import audit, compare, evaluate, export, models, predict, report, train
from imgclf.cli.common import setup_logging
from imgclf.engine.runtime import flush_denormals
from imgclf.errors import INPUT_ERRORS, ImgclfError, Interrupted
from imgclf.machine import env_local_rank, interrupted_by

SUBCOMMANDS = (audit, train, evaluate, predict, compare, report, models, export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgclf",
        description="Image classification from folders of labelled pictures.")
    parser.add_argument("--version", action="version", version=f"imgclf {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    for command in sub.choices.values():
        command.set_defaults(command_parser=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    flush_denormals()  # before any parallel operation starts PyTorch's threads
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # Reported by the command's own parser, so that the error shows its usage, not
        # imgclf's.
        getattr(args, "command_parser", parser).error(
            f"unrecognized arguments: {' '.join(unknown)}")
    if not hasattr(args, "func"):
        parser.print_help()
        return 0
    setup_logging(getattr(args, "verbose", 0))
    try:
        with interrupted_by(signal.SIGTERM):  # `kill`, a scheduler's stop: as Ctrl-C
            return args.func(args)
    except Interrupted as exc:
        print(str(exc), file=sys.stderr)
        return 130
    except ImgclfError as exc:
        if not isinstance(exc, INPUT_ERRORS) or env_local_rank() == 0:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError as exc:
        if not _stdout_reader_gone():
            return _file_system_error(exc)
        # ``imgclf audit DATA | head``: end quietly, as other command-line tools do, with
        # stdout on the null device so that Python's own flush at exit does not report it,
        # and the status a shell gives such a tool.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # SIGPIPE
    except OSError as exc:
        return _file_system_error(exc)
    except MemoryError:
        print("error: out of memory: try a smaller --img-size or --batch-size, or fewer "
              "images", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        # PyTorch's allocators out of memory: the CPU's, or a GPU's (OutOfMemoryError).
        on_gpu = type(exc).__name__ == "OutOfMemoryError"
        if not (on_gpu or "can't allocate memory" in str(exc)):
            raise
        logging.getLogger("imgclf").debug("out of memory", exc_info=True)
        where = "the GPU's memory" if on_gpu else "memory"
        print(f"error: out of {where} (PyTorch could not allocate a tensor): try a smaller "
              "--img-size or --batch-size, or fewer images", file=sys.stderr)
        return 2
    except Exception:
        logging.getLogger("imgclf").debug("unexpected error", exc_info=True)
        raise


def _file_system_error(exc: OSError) -> int:
    """A path that cannot be written or read as asked (a file where a folder is needed, no
    permission, a full disk): named on one line, without a traceback (-v shows one)."""
    logging.getLogger("imgclf").debug("file system error", exc_info=True)
    where = f": {exc.filename}" if exc.filename else ""
    print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
    return 2


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (without ``poll``, as on
    Windows, a broken pipe is taken to be stdout's)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (captured, say)
        return False
    if not hasattr(select, "poll"):
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(event & select.POLLERR for _, event in poller.poll(0))
