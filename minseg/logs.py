"""Structured logging and TTY-aware progress.

Every log line names an event and its fields (``event=synth.done images=8 output=...``),
or is a JSON object when ``MINSEG_LOG_FORMAT=json`` (for log shippers on clusters).
Known secret values from the environment are masked in every record, so a stray
exception text can never leak a credential into a log.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, Iterable, Iterator, TypeVar

from minseg.jsontext import json_text

_SECRET_ENV_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
_REDACTED = "***"

T = TypeVar("T")


def secret_values() -> list[str]:
    """Values of credential variables currently set (only long ones, to avoid masking noise)."""
    return [v for name in _SECRET_ENV_VARS if len(v := os.environ.get(name, "")) >= 8]


def redact(text: str) -> str:
    for value in secret_values():
        text = text.replace(value, _REDACTED)
    return text


class _RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if fields:
            payload["event"] = record.getMessage()
            payload.update(fields)
        else:
            payload["message"] = record.getMessage()
        if record.exc_text:
            payload["exception"] = record.exc_text
        return json_text(payload, indent=None, default=str)  # no bare NaN in a log line either


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {record.name}: "
        fields = getattr(record, "fields", None)
        if fields:
            line += f"event={record.getMessage()} " + " ".join(
                f"{key}={_format_value(value)}" for key, value in fields.items()
            )
        else:
            line += record.getMessage()
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


def _format_value(value: Any) -> str:
    """A field's value as written: quoted (JSON) when it has spaces or is empty; µm, ECD's Greek letters and
    other text as they are, not as \\u escapes; a value that is not UTF-8 (a file name's undecodable bytes,
    held as surrogates) escaped, so no handler fails to encode it."""
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(text)
    return json.dumps(text, ensure_ascii=False) if (" " in text or not text) else text


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def parse_log_level(text: str, source: str) -> str:
    """A log level name in any case (``debug``), as logging wants it (``DEBUG``); ``WARN`` is ``WARNING``.

    Raises:
        InputError: not a level, naming ``source`` (the flag or variable) and the levels there are."""
    from minseg.errors import InputError

    name = text.strip().upper()
    name = "WARNING" if name == "WARN" else name
    if name not in LOG_LEVELS:
        raise InputError(f"{source}: {text!r} is not a log level; use one of {', '.join(LOG_LEVELS)} (any case)")
    return name


def configure_logging(level: str | int | None = None, fmt: str | None = None) -> None:
    """Set up the ``minseg`` logger once per process (idempotent; Ray workers call it too).

    ``level``: a name in any case or a number; default MINSEG_LOG_LEVEL, else INFO.

    Raises:
        InputError: ``level``, MINSEG_LOG_LEVEL or MINSEG_LOG_FORMAT is not one there is (naming it)."""
    from minseg.errors import InputError

    if isinstance(level, str):
        level = parse_log_level(level, "log level")
    elif level is None:
        level = parse_log_level(os.environ.get("MINSEG_LOG_LEVEL") or "INFO", "MINSEG_LOG_LEVEL")
    fmt = (fmt or os.environ.get("MINSEG_LOG_FORMAT") or "text").lower()
    if fmt not in ("text", "json"):
        raise InputError(f"MINSEG_LOG_FORMAT: {fmt!r} is not a log format; use text or json")
    logger = logging.getLogger("minseg")
    logger.setLevel(level)
    for handler in list(logger.handlers):
        if getattr(handler, "_minseg", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._minseg = True  # type: ignore[attr-defined]
    handler.addFilter(_RedactingFilter())
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    logger.addHandler(handler)
    logger.propagate = False


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name if name.startswith("minseg") else f"minseg.{name}")


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log a structured event: what ran, on what, where the outputs went."""
    logger.log(level, event, extra={"fields": fields})


def _is_interactive(stream) -> bool:
    if os.environ.get("CI") or os.environ.get("MINSEG_NO_PROGRESS"):
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


class Progress:
    """A progress bar (tqdm) on a terminal; on a pipe or in CI, one summary line at the end.

    Use ``advance()`` from the loop doing the work, or wrap an iterable with ``track``.
    """

    def __init__(self, total: int | None, description: str, unit: str = "items", stream=None):
        self.total = total
        self.description = description
        self.unit = unit
        self.done = 0
        self._stream = stream or sys.stderr
        self._started = time.monotonic()
        self._bar = None
        if _is_interactive(self._stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=description, unit=f" {unit}", file=self._stream, leave=True,
                             dynamic_ncols=True, mininterval=0.2)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)

    def close(self, failed: bool = False) -> None:
        elapsed = time.monotonic() - self._started
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        log_event(
            get_logger("progress"),
            "progress.failed" if failed else "progress.done",
            task=self.description,
            done=self.done,
            total=self.total,
            unit=self.unit,
            seconds=round(elapsed, 2),
        )


class EpochBoard:
    """A Ray actor (``ray.remote(EpochBoard)``) that training runs post their epochs' metrics to, under their
    trial's index, and the driver drains for its console lines and progress bar."""

    def __init__(self):
        self._posted: list[tuple[int, dict]] = []

    def post(self, trial: int, metrics: dict) -> None:
        self._posted.append((trial, metrics))

    def drain(self) -> list[tuple[int, dict]]:
        posted, self._posted = self._posted, []
        return posted


def verbose() -> bool:
    """Whether Ray's, Ray Data's and Ray Train's own output should reach the console (``--verbose`` /
    MINSEG_LOG_LEVEL=debug); by default it stays in Ray's log folder."""
    return os.environ.get("MINSEG_VERBOSE", "") not in ("", "0") or \
        os.environ.get("MINSEG_LOG_LEVEL", "").upper() == "DEBUG"


def track(items: Iterable[T], description: str, total: int | None = None, unit: str = "items") -> Iterator[T]:
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, description, unit) as progress:
        for item in items:
            yield item
            progress.advance()
