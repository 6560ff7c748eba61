"""The errors minseg raises on purpose, in one hierarchy.

Every error a user can act on derives from :class:`MinsegError` and carries the exit
status the command line returns for it, so the CLI and the Ray job entrypoints handle
all of them in one place (message on stderr, no traceback):

- :class:`InputError` (exit 2): the input is wrong — a config key, a file, a row, a
  slide, a manifest. The message names it and says what is wrong.
- :class:`RunError` (exit 1): the input was fine but the job could not produce its
  result (every member of an ensemble failed, the loss diverged).
- ``minseg.io.storage.StorageError`` (exit 2) is an ``OSError`` as well, so code that
  handles I/O failures generically keeps working.

Subclasses live beside the code that raises them (``ConfigError`` in config, ``SlideError``
in io.slides, ``DataError`` in data, ...). Anything else that escapes is a bug and keeps
its traceback.
"""

from __future__ import annotations


class MinsegError(Exception):
    """Base of every error minseg raises on purpose; ``exit_code`` is what the CLI returns."""

    exit_code: int = 1


class InputError(MinsegError, ValueError):
    """Bad input (config, file, row, slide, manifest); the message names it and the reason."""

    exit_code = 2


class RunError(MinsegError, RuntimeError):
    """The job ran on valid input but could not produce its result."""

    exit_code = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM reached the command (``ray job stop``, a scheduler's cancel, ``kill``), once the CLI asked for it
    (``runtime.stop_on_sigterm``): it unwinds as Ctrl-C does (staged outputs abandoned, finished ones kept), and the
    CLI exits 143 (128 + 15) with one line."""
