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

    def format(self, record: logging.LogRecord) -> str:
        from .conf import gateway_settings

        if gateway_settings.LOG_FORMAT == "json":
            return self._json.format(record)
        return super().format(record)
