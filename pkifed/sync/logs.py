"""Logging set-up: readable lines on a terminal, JSON lines when configured."""

from __future__ import annotations

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
    """One JSON object per line: time, level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_text:
            document["traceback"] = record.exc_text
        return json.dumps(document)


def configure_logging(verbose: bool = False, json_lines: bool = False) -> None:
    """Send pkifed's logs to standard error, scrubbed of secrets."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    # Cloud SDKs log request details at INFO and DEBUG, headers included.
    for noisy in ("botocore", "boto3", "urllib3", "azure", "google", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
