"""Keep secrets out of every string the tool prints, logs or raises.

Any code that learns a secret calls `register_secret`; `redact` then replaces it wherever it
appears. A logging filter applies the same to every record of the `podcycle` loggers.
"""

from __future__ import annotations

import logging
import threading

_lock = threading.Lock()
_secrets: set[str] = set()
MASK = "****"


def register_secret(value: str | None) -> None:
    if value and len(value) >= 6:
        with _lock:
            _secrets.add(value)


def mask(value: str | None) -> str:
    """A key shown as its last four characters only, e.g. for 'which key is this'."""
    if not value:
        return "(none)"
    return f"{MASK}{value[-4:]}" if len(value) > 12 else MASK


def redact(text: object) -> str:
    result = str(text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in result:
            result = result.replace(secret, MASK)
    return result


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install_logging_filter(logger_name: str = "") -> None:
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
