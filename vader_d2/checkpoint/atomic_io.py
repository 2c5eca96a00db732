"""
Writing checkpoint files safely, and telling whether one is complete: ``atomic_write`` (temporary file,
fsync, rename) and ``checkpoint_problem`` (a missing, empty, truncated or torn file, said in words).
"""

import contextlib
import json
import os
import secrets
import zipfile

import torch

from ..errors import UserError

__all__ = ["atomic_write", "atomic_write_json", "checkpoint_problem", "short_error", "TEMPORARY_SUFFIX"]


class _ErrorRecordingFile:
    """A binary file whose first OSError on write is kept: torch.save reports a failed write (a full
    disk) only as a RuntimeError of its zip writer ("unexpected pos ..."), which hides the cause."""

    def __init__(self, file):
        self.file = file
        self.error = None

    def write(self, data):
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self):
        self.file.flush()


def atomic_write(path, write, what="file"):
    """
    Write ``path`` so that it either holds everything ``write(binary_file)`` wrote or is left as it was:
    the data go to a temporary file in the same folder, are flushed and fsync'ed, and the temporary file
    is renamed to ``path`` (atomic on POSIX file systems). On failure (e.g. a full disk) the temporary
    file is removed and a one-line UserError names the cause.
    """
    folder = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}")
    try:
        os.makedirs(folder, exist_ok=True)
        # Created as open() creates files (mode 0666 less the umask), unlike tempfile's private 0600.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        raise UserError(f"cannot write {what} {path}: {e.strerror or e}; check that its folder can be written") from None
    recorder = None
    try:
        with os.fdopen(fd, "wb") as f:
            recorder = _ErrorRecordingFile(f)
            write(recorder)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
        _fsync_folder(folder)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        cause = (recorder.error if recorder is not None else None) or (e if isinstance(e, OSError) else None)
        if cause is None:
            raise
        raise UserError(
            f"cannot write {what} {path}: {cause.strerror or cause} (errno {cause.errno}); nothing was written under "
            "that name; free space on its file system or choose another folder"
        ) from None


def atomic_write_json(path, content, what="file"):
    """``atomic_write`` of ``content`` as indented JSON: a results file is whole or not there."""
    atomic_write(path, lambda f: f.write((json.dumps(content, indent=1) + "\n").encode()), what=what)


def _fsync_folder(folder):
    # The rename is durable only once the folder's entry is on disk; not every file system allows it.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# atomic_write's temporary files: ".NAME.<random>.tmp" beside NAME.
TEMPORARY_SUFFIX = ".tmp"


def checkpoint_problem(path):
    """
    Why ``path`` is not a complete checkpoint file, or None if it is (as far as can be told without
    unpickling it). torch.save writes a zip archive: a truncated one lacks its central directory, and
    one torn by two writers fails the CRC of a record, which ``torch.load`` does not check, so every
    record is read and its CRC compared. Other files (.pkl, legacy torch format) are checked when loaded.
    """
    if not os.path.exists(path):
        return "does not exist"
    if not os.path.isfile(path):
        return "is not a file"
    size = os.path.getsize(path)
    if size == 0:
        return "is empty (0 bytes)"
    if path.endswith(".pkl"):
        return None
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04":
                return "is truncated: its zip archive has no end (an interrupted write, or one still running)"
        try:  # torch's legacy (pre-zip) format
            torch.load(path, map_location="cpu")
        except Exception as e:
            return f"cannot be read by torch.load ({short_error(e)}): truncated, or not a checkpoint"
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        return f"is a damaged zip archive ({short_error(e)})"
    if bad is not None:
        return f"is damaged: record {bad} fails its CRC check (a torn or interrupted write)"
    return None


def short_error(error):
    """The exception's type and first sentence (torch's messages run on for several)."""
    lines = str(error).strip().splitlines()
    text = lines[0].split(". ")[0][:300] if lines else ""
    return f"{type(error).__name__}: {text}".rstrip(": ")
