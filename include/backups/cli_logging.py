"""``backupctl``'s logging: every record on stderr (stdout holds the command's output), restic's levels."""

from __future__ import annotations

import logging
import sys
from typing import Any

#: the CLI's log line format (stderr)
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def route_logging(level: int) -> None:
    """Every log record to stderr at ``level`` (stdout holds only the command's output, so ``--json`` parses).

    Applied after a third-party import that configures logging (``main`` starts with a plain stderr handler):
    importing Airflow (to resolve a ``conn_id``) replaces the root handlers with one on stdout at INFO, sets its own loggers' levels and makes
    structlog (which Airflow's hooks log through) print to stdout. Loggers set below ``level`` are raised to it
    (``-q`` silences their INFO lines); handlers on stdout are moved to stderr."""
    root = logging.getLogger()
    for handler in root.handlers[:]:
        if _on_stdout(handler):
            root.removeHandler(handler)
    if not any(isinstance(h, logging.StreamHandler) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(level)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if not isinstance(logger, logging.Logger):
            continue
        if logger.level != logging.NOTSET and logger.level < level:
            logger.setLevel(level)
        for handler in logger.handlers:
            if _on_stdout(handler):
                handler.setStream(sys.stderr)  # type: ignore[attr-defined]
    structlog = sys.modules.get("structlog")
    if structlog is not None:  # configured by a library (Airflow): hand its events to the stdlib loggers above
        import structlog.stdlib

        # stdlib BoundLogger: the loggers keep the stdlib interface Airflow's code calls (getEffectiveLevel, …)
        structlog.configure(processors=[structlog.stdlib.filter_by_level, _structlog_to_stdlib],
                            wrapper_class=structlog.stdlib.BoundLogger,
                            logger_factory=structlog.stdlib.LoggerFactory(), cache_logger_on_first_use=False)


def _on_stdout(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.__stdout__)


def _structlog_to_stdlib(_logger: Any, _method: str, event_dict: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """structlog's last processor: the event as a plain stdlib log call (its other keys are dropped: they may be
    LogRecord attribute names, and a bound context is Airflow's, not ours)."""
    kwargs = {"exc_info": event_dict["exc_info"]} if event_dict.get("exc_info") else {}
    return (str(event_dict.get("event", "")).replace("%", "%%"),), kwargs


def log_level(verbose: int, quiet: bool) -> int:
    """The CLI's log level, as restic's: warnings and errors by default (stdout holds the result, stderr what went
    wrong), INFO with ``-v``, DEBUG with ``-vv``; ``-q``: errors only."""
    if verbose:
        return logging.DEBUG if verbose > 1 else logging.INFO
    return logging.ERROR if quiet else logging.WARNING
