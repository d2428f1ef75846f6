"""The library's logging: structured fields on every record, and `MIRAKL_CANCEL_LOG`.

Every record of the `mirakl_cancel` logger carries `order_id`, `action_id`, `attempt`
and `status` as record attributes (None where they do not apply), so that a JSON
formatter gets a stable schema and a plain `%(order_id)s` format never fails.

The transport does not thread ids through every helper that may log: it sets a
`LogContext` (order, action, attempt) for the duration of a request, in a context
variable, and a filter on the logger copies it onto each record that does not say
otherwise (`extra=` wins). Concurrent requests run in their own tasks, so each sees
its own context.

Like `OPENAI_LOG` and `STRIPE_LOG`, `MIRAKL_CANCEL_LOG=debug|info` turns on stderr
logging without code (read when the package is imported).
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["ENV_LOG", "FIELDS", "LogContext", "configure_from_env", "env_level", "fields",
           "log_context", "remove_env_handler"]

ENV_LOG = "MIRAKL_CANCEL_LOG"
FIELDS = ("order_id", "action_id", "attempt", "status")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}

logger = logging.getLogger("mirakl_cancel")


class LogContext:
    """The ids of the request being made (the transport updates `attempt`)."""

    __slots__ = ("action_id", "attempt", "order_id")

    def __init__(self, order_id: str | None = None, action_id: str | None = None) -> None:
        self.order_id = order_id
        self.action_id = action_id
        self.attempt: int | None = None


log_context: contextvars.ContextVar[LogContext | None] = contextvars.ContextVar(
    "mirakl_cancel_log_context", default=None)


def fields(*, order_id: str | None = None, action_id: str | None = None,
           attempt: int | None = None, status: int | None = None) -> dict[str, Any]:
    """An `extra=` for a record logged outside a request (the tracker, the job...)."""
    return {"order_id": order_id, "action_id": action_id, "attempt": attempt, "status": status}


class _Fields(logging.Filter):
    """Fills the four fields on every record of the logger (never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = log_context.get()
        values = record.__dict__
        for name in FIELDS:
            if name not in values:
                values[name] = getattr(context, name, None) if name != "status" else None
        return True


if not any(isinstance(f, _Fields) for f in logger.filters):
    logger.addFilter(_Fields())


class _EnvHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The stderr handler `MIRAKL_CANCEL_LOG` installs (recognisable, to be removed)."""


def env_level(environ: Mapping[str, str] | None = None) -> int | None:
    """The level `MIRAKL_CANCEL_LOG` asks for, or None (unset or not a known level)."""
    value = (os.environ if environ is None else environ).get(ENV_LOG, "").strip().lower()
    return _LEVELS.get(value)


def configure_from_env(environ: Mapping[str, str] | None = None) -> None:
    """Log to stderr at the level of `MIRAKL_CANCEL_LOG`, if set (once per process)."""
    level = env_level(environ)
    if level is None or any(isinstance(h, _EnvHandler) for h in logger.handlers):
        return
    handler = _EnvHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s [order_id=%(order_id)s "
        "action_id=%(action_id)s attempt=%(attempt)s status=%(status)s]"))
    logger.addHandler(handler)
    logger.setLevel(level)


def remove_env_handler() -> None:
    """Drop the `MIRAKL_CANCEL_LOG` handler (the CLI logs through its own)."""
    for handler in list(logger.handlers):
        if isinstance(handler, _EnvHandler):
            logger.removeHandler(handler)
