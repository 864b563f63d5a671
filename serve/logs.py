"""Structured logs: one JSON object a line on stderr, for the scorer's workers.

Each decision is logged by ``serve.app`` with its settlement id, institution, decision,
the rules that hit and whether the answer was degraded or repeated, so a log search for a
settlement id finds what happened to it. ``python-json-logger`` formats the records, with
orjson (its ``OrjsonFormatter``: a decision's line is formatted in half the time of the
``json`` module's, the same object; non-ASCII text stays UTF-8, unescaped); uvicorn's own
loggers go through the same formatter.
"""

from __future__ import annotations

from typing import Any


def log_config(level: str = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for ``fundguard serve`` (also given to uvicorn)."""
    formatter = {
        "()": "pythonjsonlogger.orjson.OrjsonFormatter",
        "fmt": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
        "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
    }
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": formatter},
        "handlers": {"stderr": handler},
        "loggers": {
            "fundguard": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
            "uvicorn.error": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "uvicorn.access": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        },
    }
