"""Structured logging for the daemons: ``key=value`` text or one JSON object a line.

Messages are written as ``"event key=%s key=%s"`` with arguments, so the text format is
already key=value; the JSON format adds the rendered message plus standard fields.
"""

from __future__ import annotations

import json
import logging
import sys
import time


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    converter = time.gmtime

    def __init__(self) -> None:
        super().__init__("ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


class _ClientErrorsAreNotTracebacks(logging.Filter):
    """aiohttp logs a client's malformed request (a bad request line, a bad header) at
    ERROR with a traceback: any client could then fill the log with multi-line stack
    traces. Such a request is the client's fault and aiohttp already answered it with a
    400 (or the client hung up in the middle of its own request body: aiohttp's reader
    raises ConnectionResetError in the handler), so it becomes one DEBUG line naming the
    problem; other errors raised by our own handlers keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError | ConnectionResetError):
            record.msg = "malformed or abandoned HTTP request: %s"
            record.args = (" ".join(str(exc).split())[:300],)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def setup_logging(level: str = "info", fmt: str = "text", stream=None) -> None:
    """Configure the root logger once for a daemon process."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_JSONFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would duplicate our own request logging.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _ClientErrorsAreNotTracebacks) for f in server_log.filters):
        server_log.addFilter(_ClientErrorsAreNotTracebacks())
