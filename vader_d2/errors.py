"""
How vader_d2 ends on a mistake: ``UserError`` (a mistake in the user's config, data, files or command
line), reported as the one line ``vader_d2: ...`` on stderr with exit status ``USER_ERROR_EXIT`` (2, as
argparse exits on a bad command line), never a traceback; a pre-empted run exits with ``PREEMPTED_EXIT``
(75). The path checks every tool makes before it starts work are here too.

This module imports nothing of the package, so that every layer (config, data, modeling, checkpoint,
engine, the command line) raises and reports its errors the same way.
"""

import json
import os
import sys
import tempfile

__all__ = [
    "UserError",
    "USER_ERROR_EXIT",
    "PREEMPTED_EXIT",
    "report_user_error",
    "check_input_file",
    "check_output_dir",
    "check_output_file",
    "read_json_file",
    "read_text_file",
]


class UserError(Exception):
    """A mistake in the user's config, data or command line: reported as one line, without a traceback."""


# Exit status after a UserError, as argparse exits on a command-line mistake.
USER_ERROR_EXIT = 2

# The exit status of every process of a pre-empted run, for a requeue script to test. It is sysexits.h's
# EX_TEMPFAIL ("a temporary failure ... the user is invited to retry later"), and none of the statuses that
# mean something else: 0 (finished), 1 (a crash: Python's status after an uncaught exception), 2 (a
# mistake to fix first: USER_ERROR_EXIT) and 128 + n (killed by signal n, e.g. 137 for SIGKILL, 143 for
# SIGTERM: a run that could not write its checkpoint).
PREEMPTED_EXIT = 75


def report_user_error(error):
    """Print ``vader_d2: <error>`` as one line on stderr and exit with status 2."""
    print(f"vader_d2: {' '.join(str(error).split())}", file=sys.stderr, flush=True)
    sys.exit(USER_ERROR_EXIT)


def check_input_file(path, what):
    """``path`` names an existing file (URLs are left to the code that fetches them)."""
    if not path or "://" in path:
        return
    if not os.path.exists(path):
        raise UserError(f"{what} {path!r} does not exist")
    if not os.path.isfile(path):
        raise UserError(f"{what} {path!r} is not a file")


def check_output_dir(path, what):
    """Create the folder ``path`` if needed and make sure a file can be written into it, so that a run
    fails at start-up rather than when it first writes. Returns ``path``."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {what} {path!r}: {e.strerror or e}; choose a folder you can write") from None
    if not os.path.isdir(path):
        raise UserError(f"{what} {path!r} is not a folder; choose a folder you can write")
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError(f"cannot write into {what} {path!r}: {e.strerror or e}; choose a folder you can write") from None
    return path


def check_output_file(path, what):
    """The file ``path`` can be written: its folder exists or can be created and is writable, and
    ``path`` is not a folder. Nothing is written at ``path`` itself."""
    if os.path.isdir(path):
        raise UserError(f"{what} {path!r} is a folder; give a file name")
    check_output_dir(os.path.dirname(os.path.abspath(path)), f"the folder of {what}")
    return path


def read_text_file(path, what):
    """The text of ``path``; a missing or unreadable file is one line naming it as ``what``."""
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        raise UserError(f"the {what} {path} does not exist") from None
    except OSError as e:
        raise UserError(f"cannot read the {what} {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"the {what} {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_json_file(path, what="results file"):
    """The JSON content of ``path``; a missing, empty, truncated or malformed file is one line naming it."""
    text = read_text_file(path, what)
    if not text.strip():
        raise UserError(f"the {what} {path} is empty; delete it so that its run is made again")
    try:
        return json.loads(text)
    except ValueError as e:
        raise UserError(f"the {what} {path} is not valid JSON (truncated? {e}); delete it so that its run is made again") from None
