"""structlog configured once per process: JSON lines by default, console for people.

Every command calls `configure_logging` once, at its entry point, with the settings
it has just loaded (`PAYSTEP_LOG_FORMAT`, `PAYSTEP_LOG_LEVEL`).

Task tokens are capabilities: logs carry `token_hash(token)`, never the token.
"""

from __future__ import annotations

import hashlib
import logging
import sys

import structlog

from paystep_common.settings import PaystepSettings


def configure_logging(settings: PaystepSettings) -> None:
    """Route structlog (and stdlib logging) to stderr as one event per line."""
    numeric_level = logging.getLevelNamesMapping()[settings.log_level.upper()]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if settings.log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # botocore and aiohttp log through the standard library; keep them quiet and on stderr.
    logging.basicConfig(level=max(numeric_level, logging.WARNING), stream=sys.stderr)


def token_hash(token: str) -> str:
    """A short, stable, non-reversible name for a task token, fit for logs.

    Any string, since it names what arrived before anything vouched for it: a JSON
    `\\udc80` escape decodes to a lone surrogate, which strict UTF-8 cannot encode.
    """
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:12]
