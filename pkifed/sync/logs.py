"""Logging set-up: readable lines on a terminal, JSON lines when configured."""

from __future__ import annotations

import datetime
import json
import logging
import sys

from pkifed.secrets import redact


class RedactingFilter(logging.Filter):
    """Scrub every resolved secret from a record before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed = redact(message)
        if scrubbed != message:
            record.msg = scrubbed
            record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            # Tracebacks print the exception's text, which may quote a secret.
            record.exc_text = redact(
                logging.Formatter().formatException(record.exc_info)
            )
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO-8601 UTC), level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        document = {
            "time": moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_text:
            document["traceback"] = record.exc_text
        return json.dumps(document)


def configure_logging(
    verbose: bool = False, json_lines: bool = False, level: int = logging.WARNING
) -> None:
    """Send pkifed's logs at ``level`` or above to standard error, without secrets.

    ``verbose`` lowers the level to DEBUG.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else level)
    # Cloud SDKs log request details at INFO and DEBUG, headers included.
    # APScheduler logs every job run, and Alembic its set-up, at INFO.
    noisy_loggers = ("botocore", "boto3", "urllib3", "azure", "google", "s3transfer")
    for noisy in (*noisy_loggers, "apscheduler", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
