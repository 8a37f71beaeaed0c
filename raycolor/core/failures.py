"""What an unexpected exception on one image becomes: that image's error row, never a failed task.

An archive of 100M files holds every kind of damage, and our code and the libraries under it (Pillow, LittleCMS,
tifffile, torch) will meet a file that makes them raise something nobody planned for. Every stage that works on
one image at a time (reading, decoding, the model, compose, encode, write) turns such an exception into the row
``internal: <type>: <message> (in <stage>)`` (:func:`internal_error`) and goes on with the next image; the traceback goes to
the log once per distinct failure site and process, so a bug met by a million images logs once, not a million
times. A bug that fails *every* image must still stop the run: the colorize driver stops after
``ColorizeConfig.stop_after_internal`` consecutive ``internal`` rows.

Stdlib only: the reading loop, the stages and training all use it.
"""

from __future__ import annotations

import logging
import threading
import traceback

INTERNAL = "internal"  # the error reason of such a row (raycolor.outputs.ledger.reason_of gives it back)

# The most characters of an exception's message kept in a row: a library can put a whole buffer in its message.
MESSAGE_CHARS = 300

_log = logging.getLogger("raycolor")
_logged: set[tuple[str, str, str]] = set()
_lock = threading.Lock()


def internal_error(exc: BaseException, stage: str) -> str:
    """The error text of an image whose ``stage`` raised ``exc`` unexpectedly; logs the traceback the first time
    this process sees this (stage, exception type, raising line). The caller redacts the text if it can hold a URI."""
    message = " ".join(str(exc).split())
    if len(message) > MESSAGE_CHARS:
        message = message[:MESSAGE_CHARS] + "..."
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
    key = (stage, type(exc).__name__, where)
    with _lock:
        first = key not in _logged
        _logged.add(key)
    if first:
        _log.error("internal error in %s (one image; the run goes on; logged once per site): %s: %s", stage,
                   type(exc).__name__, message, exc_info=(type(exc), exc, exc.__traceback__))
    return f"{INTERNAL}: {type(exc).__name__}: {message or '(no message)'} (in {stage})"
