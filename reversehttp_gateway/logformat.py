"""Log formatters: one JSON object per line, or text, as the ``LOG_FORMAT`` setting says.

Use them in ``LOGGING`` (docs/metrics.md, "Structured logs")::

    "formatters": {
        "gateway": {
            "()": "reversehttp_gateway.logformat.GatewayFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
    },

``GatewayFormatter`` writes text with its format string, or JSON when ``LOG_FORMAT`` is
``"json"``; ``JsonFormatter`` always writes JSON. A JSON line holds ``time``, ``level``,
``logger`` and ``message``, then every ``extra`` field of the record: the access log line of
``public.py`` adds ``label``, ``method``, ``target``, ``status``, ``transport``, ``duration_ms``,
``bytes_in``, ``bytes_out`` and ``client``.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else in record.__dict__ came from ``extra``.
_RECORD_ATTRIBUTES = frozenset(
    [*logging.LogRecord("", 0, "", 0, "", (), None).__dict__, "message", "asctime"]
)


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON object on one line, with its ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _RECORD_ATTRIBUTES and not name.startswith("_"):
                entry.setdefault(name, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False, separators=(",", ":"))


class GatewayFormatter(logging.Formatter):
    """Text with the configured format string, or JSON when ``LOG_FORMAT`` is ``"json"``.

    The setting is read for every record, so ``override_settings`` applies at once.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._json = JsonFormatter()
        self._stamp: tuple[int, str | None, str] = (-1, None, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        """As ``logging.Formatter.formatTime``, with the date and time part formatted once a
        second (``strftime`` per line was a fifth of an access log line's cost)."""
        second = int(record.created)
        cached_second, cached_format, stamp = self._stamp
        if second != cached_second or datefmt != cached_format:
            stamp = time.strftime(datefmt or self.default_time_format, self.converter(second))
            self._stamp = (second, datefmt, stamp)
        if datefmt or not self.default_msec_format:
            return stamp
        return self.default_msec_format % (stamp, record.msecs)

    def format(self, record: logging.LogRecord) -> str:
        from .conf import gateway_settings

        if gateway_settings.LOG_FORMAT == "json":
            return self._json.format(record)
        return super().format(record)
