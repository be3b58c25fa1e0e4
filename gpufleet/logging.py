"""structlog configuration, done once: JSON off a terminal, readable console output on one."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

__all__ = ["LogFormat", "configure_logging"]

LogFormat = Literal["auto", "console", "json"]


def configure_logging(fmt: LogFormat = "auto", level: str = "info", stream: object = None) -> None:
    """Configure structlog for the process. ``auto`` picks console on a TTY, else JSON."""
    out = stream if stream is not None else sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and hasattr(out, "isatty") and out.isatty())
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=use_console and fmt != "json")
        if use_console
        else structlog.processors.JSONRenderer()
    )
    logging.getLogger("asyncio").addFilter(_QuietTlsEof())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=out),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


class _QuietTlsEof(logging.Filter):
    """asyncio warns on every TLS connection nats-py closes ("returning true from eof_received() has
    no effect when using ssl"): harmless, and not a line a person should see."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received" not in record.getMessage()
