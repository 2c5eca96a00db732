"""
One run per OUTPUT_DIR, and no run that destroys another's checkpoints.

- ``OutputDirLock``: an ``fcntl.flock`` on ``OUTPUT_DIR/.vader_d2.lock``, a file naming the holder's PID,
  host and start time. The kernel releases the lock when the holder's process ends, however it ends, so
  a lock file left by a killed run is stale: the next run takes it over and says so.
- ``claim_output_dir``: what ``tools/train_net.py`` does before training: create the folder, take the
  lock, refuse a fresh run in a folder that holds checkpoints (``--resume`` continues them,
  ``--start-over`` moves the earlier run's files aside first), and remove temporary files of
  interrupted checkpoint writes.
- ``select_resume_checkpoint``: the checkpoint ``--resume`` continues from: the one ``last_checkpoint``
  names, else the newest complete ``model_*.pth``; unreadable ones are skipped with a warning.
- ``prune_checkpoints``: ``SOLVER.CHECKPOINT_KEEP``'s retention, after each checkpoint, with
  ``delete_checkpoints`` (which the transfer study also uses on a finished downstream run).
"""

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional

from ..checkpoint.atomic_io import TEMPORARY_SUFFIX, checkpoint_problem
from ..errors import UserError, check_output_dir

__all__ = [
    "LOCK_FILE",
    "OutputDirLock",
    "OutputDirClaim",
    "claim_output_dir",
    "list_checkpoints",
    "select_resume_checkpoint",
    "prune_checkpoints",
    "delete_checkpoints",
    "PREVIOUS_RUNS",
]

logger = logging.getLogger("vader_d2")

LOCK_FILE = ".vader_d2.lock"
# --start-over moves an earlier run's files into OUTPUT_DIR/previous_runs/<time>/.
PREVIOUS_RUNS = "previous_runs"
LAST_CHECKPOINT = "last_checkpoint"
_CHECKPOINT = re.compile(r"^model_(\d+|final)\.pth$")
# What a training run writes into OUTPUT_DIR (Detectron2's files and our checkpoints); --start-over moves
# these and nothing else, so that an OUTPUT_DIR shared with other files never loses them.
_RUN_FILES = re.compile(
    r"^(model_(\d+|final)\.pth|last_checkpoint|metrics\.json|config\.yaml|log\.txt(\.rank\d+)?|events\.out\.tfevents\..*|inference)$"
)


def _describe_holder(info):
    if not info:
        return "another run"
    started = info.get("started", "?")
    return f"the run with PID {info.get('pid', '?')} on {info.get('host', '?')} (started {started})"


class OutputDirLock:
    """
    An exclusive, non-blocking lock on a folder for the lifetime of this process (or until ``release``).

    The lock is an ``fcntl.flock`` on ``folder/.vader_d2.lock``: the kernel drops it when the process
    ends, even on SIGKILL. The file's content (JSON: pid, host, started, command) only describes the
    holder for messages; whether a run holds the folder is decided by the flock alone.
    """

    def __init__(self, folder, what="OUTPUT_DIR"):
        self.folder = folder
        self.what = what  # the folder's name in messages
        self.path = os.path.join(folder, LOCK_FILE)
        self._fd = None
        self.previous_holder = None  # the content of a stale lock file this lock took over
        self.unsupported = None  # why the file system refused to lock, if it did

    def acquire(self):
        """Take the lock or raise a UserError naming the run that holds it."""
        for _ in range(10):
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    # Some network file systems have no locks: training goes on, unprotected, and says so.
                    self.unsupported = f"{e.strerror or e}"
                    return self
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise UserError(f"cannot lock {self.what} {self.folder!r}: {e.strerror or e}") from None
                raise UserError(
                    f"{self.what} {self.folder!r} is in use by {_describe_holder(self._read_holder())}; "
                    f"wait for that run to end or stop it, or choose another {self.what}"
                ) from None
            # A holder that released the lock removes the file: if this descriptor's file is no longer the
            # one at the path, another process may lock the new file; start again on the new one.
            try:
                same_file = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same_file = False
            if not same_file:
                os.close(fd)
                continue
            self._fd = fd
            self.previous_holder = self._read_holder()
            self._write_holder()
            return self
        raise UserError(f"cannot lock {self.what} {self.folder!r}: its lock file keeps being replaced")

    def _open(self):
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot create the lock file {self.path!r}: {e.strerror or e}; choose a folder you can write") from None

    def _read_holder(self):
        # The holder writes its description right after locking: a reader may see it half written.
        for _ in range(5):
            try:
                with open(self.path) as f:
                    text = f.read()
                return json.loads(text) if text.strip() else None
            except (OSError, ValueError):
                time.sleep(0.05)
        return None

    def _write_holder(self):
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(sep=" ", timespec="seconds"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(info).encode(), 0)
        os.fsync(self._fd)

    def release(self):
        """Remove the lock file and drop the lock (the file is removed first, while still held, so that
        no other process can lock it in between and lose it to a third)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None

    @property
    def held(self):
        return self._fd is not None


def list_checkpoints(folder):
    """The ``model_<iteration>.pth`` and ``model_final.pth`` files of ``folder``, oldest first (by the
    iteration in the name; model_final last)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    found = [name for name in names if _CHECKPOINT.match(name) and os.path.isfile(os.path.join(folder, name))]

    def order(name):
        number = _CHECKPOINT.match(name).group(1)
        return (1, 0) if number == "final" else (0, int(number))

    return sorted(found, key=order)


def prune_checkpoints(folder, keep, period):
    """
    Checkpoint retention (``SOLVER.CHECKPOINT_KEEP``), to be run by the one process that writes checkpoints
    right after a checkpoint and the ``last_checkpoint`` naming it are completely written. Deletes:

    - periodic checkpoints (``model_<i>.pth`` with ``i + 1`` a multiple of ``period``) beyond the newest ``keep``;
    - any other ``model_<i>.pth`` (a pre-emption checkpoint, written off the schedule) older than the file
      ``last_checkpoint`` names: that newer checkpoint is complete, so the older one is no longer needed to resume.

    Never deleted: ``model_final.pth``; the file ``last_checkpoint`` names; files of later iterations than
    it (left by a run abandoned by pointing ``last_checkpoint`` back to an earlier checkpoint: the resumed
    run overwrites them when it gets there); anything when ``keep`` is 0 or ``last_checkpoint`` names no
    ``model_*.pth``. A file that is already gone is fine; one that cannot be deleted stays, with a warning.
    Returns the names deleted.
    """
    if not keep:
        return []
    tagged = _read_last_checkpoint(folder)
    tagged_match = _CHECKPOINT.match(tagged or "")
    if not tagged_match:
        return []
    newest = float("inf") if tagged_match.group(1) == "final" else int(tagged_match.group(1))
    numbered = []
    for name in list_checkpoints(folder):
        number = _CHECKPOINT.match(name).group(1)
        if number != "final" and int(number) <= newest:
            numbered.append((int(number), name))
    periodic = [name for iteration, name in numbered if (iteration + 1) % period == 0]
    kept = set(periodic[-keep:]) | {tagged}
    deleted = delete_checkpoints(folder, [name for _, name in numbered if name not in kept],
                                 lambda problem: logger.warning(f"SOLVER.CHECKPOINT_KEEP: {problem}"))
    if deleted:
        logger.info(f"SOLVER.CHECKPOINT_KEEP {keep}: deleted {', '.join(deleted)}; kept {', '.join(sorted(kept))}")
    return deleted


def delete_checkpoints(folder, names, warn):
    """Delete ``names`` of ``folder``; returns those deleted. One already gone is fine; one that cannot be
    deleted stays, and ``warn`` gets a line saying so: losing a checkpoint to delete never stops a run."""
    deleted = []
    for name in names:
        try:
            os.unlink(os.path.join(folder, name))
        except FileNotFoundError:
            continue
        except OSError as e:
            warn(f"cannot delete {os.path.join(folder, name)} ({e.strerror or e}); it stays")
            continue
        deleted.append(name)
    return deleted


def _read_last_checkpoint(folder):
    """The base name ``folder/last_checkpoint`` holds, or None when there is no such file or it is empty."""
    path = os.path.join(folder, LAST_CHECKPOINT)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return os.path.basename(f.read().strip()) or None


@dataclass
class OutputDirClaim:
    """What ``claim_output_dir`` did: the lock it holds and the lines to log once logging is set up."""

    lock: Optional[OutputDirLock]
    notes: List[str] = field(default_factory=list)

    def release(self):
        if self.lock is not None:
            self.lock.release()


def claim_output_dir(output_dir, resume, start_over, lock=True):
    """
    Prepare OUTPUT_DIR for a training run, before anything is written into it:

    1. create it (a folder that cannot be created or written is a one-line UserError);
    2. take its lock (``lock``), or fail naming the run that holds it;
    3. a fresh run (neither ``resume`` nor ``start_over``) in a folder with checkpoints stops with one
       line; ``start_over`` moves the files an earlier run wrote into ``OUTPUT_DIR/previous_runs/<time>/``;
    4. remove temporary files of checkpoint writes that a killed run left behind.

    Returns an OutputDirClaim; its lock is held until ``release()`` or the end of the process.
    """
    if resume and start_over:
        raise UserError("--resume continues the run in OUTPUT_DIR and --start-over sets it aside; give one of them")
    check_output_dir(output_dir, "OUTPUT_DIR")
    claim = OutputDirClaim(OutputDirLock(output_dir).acquire() if lock else None)
    try:
        if claim.lock is not None and claim.lock.unsupported:
            claim.notes.append(
                f"the file system of OUTPUT_DIR {output_dir} cannot lock files ({claim.lock.unsupported}): a second "
                "run into this folder would not be stopped; do not start one"
            )
        if claim.lock is not None and claim.lock.previous_holder:
            claim.notes.append(
                f"OUTPUT_DIR {output_dir} was locked by {_describe_holder(claim.lock.previous_holder)}, which has "
                "ended without releasing it (killed or crashed); taking it over"
            )
        checkpoints = list_checkpoints(output_dir)
        if start_over:
            moved_to = _move_run_files_aside(output_dir)
            if moved_to:
                claim.notes.append(
                    f"--start-over: moved the earlier run's files ({len(os.listdir(moved_to))} entries, "
                    f"{len(checkpoints)} checkpoints) into {moved_to}; delete that folder when you no longer need them"
                )
        elif not resume and checkpoints:
            span = checkpoints[0] if len(checkpoints) == 1 else f"{checkpoints[0]} .. {checkpoints[-1]}"
            raise UserError(
                f"OUTPUT_DIR {output_dir!r} holds the checkpoints of an earlier run ({span}); add --resume to continue "
                f"it, choose another OUTPUT_DIR, or add --start-over to move its files into "
                f"{os.path.join(output_dir, PREVIOUS_RUNS)}/ and train from iteration 0"
            )
        for name in os.listdir(output_dir):
            if name.startswith((".model_", f".{LAST_CHECKPOINT}.")) and name.endswith(TEMPORARY_SUFFIX):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(output_dir, name))
                    claim.notes.append(f"removed {name}, the temporary file of a checkpoint write that never finished")
    except BaseException:
        claim.release()
        raise
    return claim


def _move_run_files_aside(output_dir):
    names = sorted(n for n in os.listdir(output_dir) if _RUN_FILES.match(n))
    if not names:
        return None
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = os.path.join(output_dir, PREVIOUS_RUNS, stamp)
    suffix = 1
    while os.path.exists(target):
        suffix += 1
        target = os.path.join(output_dir, PREVIOUS_RUNS, f"{stamp}-{suffix}")
    try:
        os.makedirs(target)
        for name in names:
            shutil.move(os.path.join(output_dir, name), os.path.join(target, name))
    except OSError as e:
        raise UserError(f"--start-over: cannot move the earlier run's files into {target}: {e.strerror or e}") from None
    return target


def select_resume_checkpoint(folder):
    """
    The checkpoint ``--resume`` continues from, or None when ``folder`` holds none (a fresh start).

    The file ``last_checkpoint`` names, if it is complete; otherwise (no ``last_checkpoint``, or it
    names a missing or damaged file) the newest complete ``model_*.pth``, logged. Damaged files are
    skipped with a warning. If checkpoints exist but none is complete, a UserError: starting from
    iteration 0 would overwrite them.
    """
    checkpoints = list_checkpoints(folder)
    tag_path = os.path.join(folder, LAST_CHECKPOINT)
    tagged = _read_last_checkpoint(folder)
    damaged = []
    if tagged:
        path = os.path.join(folder, tagged)
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning(f"{tag_path} names {tagged}, which {problem}; resuming from the newest complete checkpoint instead")
        damaged.append(f"{tagged}: {problem}")
    elif checkpoints:
        logger.warning(f"{folder} has no last_checkpoint file; resuming from the newest complete model_*.pth")
    for name in reversed(checkpoints):
        if name == tagged:
            continue
        path = os.path.join(folder, name)
        problem = checkpoint_problem(path)
        if problem is None:
            logger.warning(f"Resuming from {path}, the newest complete checkpoint in {folder}")
            return path
        logger.warning(f"Skipping checkpoint {path}: it {problem}")
        damaged.append(f"{name}: {problem}")
    if damaged:
        raise UserError(
            f"--resume: no checkpoint in {folder} can be read ({'; '.join(damaged[:3])}); restore one, or add "
            "--start-over to move them aside and train from iteration 0"
        )
    return None
