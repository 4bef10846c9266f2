"""Logging of the long-running processes (`sdqkd node`, `sdqkd controller`): to stdout, where
container engines and Kubernetes collect it, as text lines or as JSON lines (one object per
record: time, level, logger, message, and the exception text when there is one).

The JSON formatter is these few lines of `json.dumps` rather than a logging library: the node
image then needs no extra dependency, and the records carry nothing but what the code logs
(the code never logs key material, passwords or bootstrap secrets)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(fmt: str = "text", level: str = "INFO") -> None:
    """Send every record of this process to stdout in `fmt` (text or json)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: expected one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonLineFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
