"""Exceptions that imgclf raises for problems a user can fix.

The command line prints their message (no traceback) and exits with status 2, so each
message names what was received, what is allowed, and how to fix it. ``Interrupted`` is a
KeyboardInterrupt instead, as Ctrl-C is in Python: the command line exits with 130.
"""


class ImgclfError(Exception):
    """Base class for every error caused by input, configuration or environment."""


class DataError(ImgclfError):
    """The dataset's layout or contents cannot be used as given."""


class ConfigError(ImgclfError, ValueError):
    """A configuration value or key, or an argument of the Python API, is not valid (a
    ValueError too, as Python's own errors for a bad argument are)."""


class ModelError(ImgclfError):
    """A model name or model option is not valid."""


class WeightsUnavailableError(ImgclfError):
    """Pretrained weights for a backbone cannot be found offline or downloaded."""


class RunError(ImgclfError):
    """A run folder is missing, incomplete, or does not match the request."""


class RunFolderBusy(RunError):
    """Another process is training into the run folder (``paths.run_folder_lock``)."""


INPUT_ERRORS = (DataError, ConfigError, ModelError, WeightsUnavailableError)
"""Errors in what the user gave. Every process that torchrun starts on a machine finds the
same one, so the command line lets the machine's first process alone report it."""


class Interrupted(KeyboardInterrupt):
    """Work was stopped by Ctrl-C or SIGTERM, with progress saved; the message says how to
    go on. A KeyboardInterrupt, as Ctrl-C is everywhere in Python: a script's ``except
    Exception`` around a training does not swallow it and go on to the next."""


class Diverged(ImgclfError):
    """The training loss, the weights or the validation outputs stopped being finite."""
