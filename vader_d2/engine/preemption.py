"""
Runs that a cluster stops early lose at most the iteration in flight.

Schedulers announce a pre-emption with a signal (SLURM's ``--signal``, Kubernetes: SIGTERM) and kill the
job a while later. With ``SOLVER.PREEMPTION_SIGNALS`` (default SIGTERM and SIGUSR1):

- ``SignalRecorder``: the handlers only note the first signal received. Python runs them in the main
  thread between two bytecodes, so a signal never interrupts what training is doing, e.g. a checkpoint
  being written: a second signal during the write is noted and changes nothing. In the process that
  launched the training processes (``--num-gpus N``), the handler also forwards the signal to them.
- ``PreemptionCheckpointer``: a hook run after every iteration, after Detectron2's hooks. The processes
  agree with one collective (an all-reduce MAX of one number) whether, and why, to stop at this
  iteration, so that all stop at the same one, whichever of them got the signal. Rank 0 then writes one
  checkpoint of the iteration through the trainer's checkpointer (atomic; ``last_checkpoint`` is
  updated after the file is complete), every process logs ``received SIGTERM at iteration N; checkpoint
  model_N.pth written in S s; resume with --resume`` and exits with ``PREEMPTED_EXIT``.
- ``StopOnWriteFailure``: Detectron2's event writers (``metrics.json``, TensorBoard events) whose write
  fails (a full disk) ask the same hook to stop at the end of the iteration, with one line and the last
  checkpoint intact, instead of a traceback.
"""

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.events import EventWriter

from ..config.checks import parse_signal_names
from ..errors import PREEMPTED_EXIT, USER_ERROR_EXIT, UserError

__all__ = [
    "PREEMPTED_EXIT",
    "DEFAULT_PREEMPTION_SIGNALS",
    "RECORDER",
    "PreemptionCheckpointer",
    "SignalRecorder",
    "StopOnWriteFailure",
    "TrainingStopped",
    "parse_signal_names",
    "stop_on_user_error",
]

logger = logging.getLogger("vader_d2")

# PREEMPTED_EXIT (75) is vader_d2/errors.py's, beside the other exit statuses.

DEFAULT_PREEMPTION_SIGNALS = ("SIGTERM", "SIGUSR1")

class SignalRecorder:
    """
    Handlers for the pre-emption signals that note the first one received (``received``) and do nothing
    else; with ``forward_to_children``, they also send the signal on to this process's children (the
    training processes Detectron2's launch started), so that a signal to the launcher reaches them all.
    """

    def __init__(self):
        self.received = None
        self._forward_to_children = False
        self._previous = {}

    @property
    def signals(self):
        return tuple(self._previous)

    def install(self, names, forward_to_children=False):
        """Handle the signals ``names`` (a list of names) from now on; a signal noted before stays noted.
        Call from the main thread."""
        signals = parse_signal_names(names)
        for sig in [sig for sig in self._previous if sig not in signals]:
            signal.signal(sig, self._previous.pop(sig))
        # Handled without a gap when installed again (the process launched in a one-process run).
        for sig in signals:
            previous = signal.signal(sig, self._note)
            self._previous.setdefault(sig, previous)
        self._forward_to_children = forward_to_children
        return self

    def uninstall(self):
        """Give the signals back the handlers they had before ``install``."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def _note(self, signum, frame):
        if self.received is None:
            self.received = signal.Signals(signum)
        if self._forward_to_children:
            for child in multiprocessing.active_children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signum)


# One per process, as signal handlers are.
RECORDER = SignalRecorder()


class TrainingStopped(BaseException):
    """
    Ends training from a hook with exit status ``status``. A BaseException, so that Detectron2's training
    loop, which logs every Exception with its traceback, lets it pass (its hooks' ``after_train`` still
    run); ``VADeRTrainer.train`` turns it into the exit. ``message``: the line to report, None on the
    processes that report nothing. ``error``: the UserError it stands for (``stop_on_user_error``), which
    ``VADeRTrainer.train`` raises again.
    """

    def __init__(self, status, message=None, error=None):
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.error = error


@contextlib.contextmanager
def stop_on_user_error():
    """
    A UserError inside the training loop (a hook: a periodic checkpoint that cannot be written; a step:
    a loss that diverged) ends training as a pre-emption does, as a ``TrainingStopped`` with its line:
    Detectron2's loop logs every Exception with its whole traceback before letting it go.
    """
    try:
        yield
    except UserError as error:
        raise TrainingStopped(USER_ERROR_EXIT, str(error), error) from None


class PreemptionCheckpointer(HookBase):
    """
    After every iteration: stop when a process noted a pre-emption signal (``recorder``) or a failed
    metrics write (``record_write_failure``), all processes at the same iteration. To be the last hook, so
    that the iteration's LR step, periodic checkpoint, evaluation and metrics are done: the checkpoint then
    holds what a periodic checkpoint of that iteration holds, and ``--resume`` continues from the next.
    """

    # The agreed value: 0 trains on; a signal's number stops for that signal (the largest, if processes
    # noted different ones); WRITE_FAILED (above every signal number) stops without a checkpoint.
    WRITE_FAILED = 1 << 16

    def __init__(self, recorder=RECORDER):
        self.recorder = recorder
        self.write_failure = None
        self._stopped = False

    def record_write_failure(self, description):
        """Called by ``StopOnWriteFailure``: ``description`` says what could not be written and why."""
        self.write_failure = self.write_failure or description

    def after_step(self):
        request = self.WRITE_FAILED if self.write_failure else int(self.recorder.received or 0)
        agreed = self._agree(request)
        if not agreed:
            return
        self._stopped = True
        iteration = self.trainer.iter
        if agreed >= self.WRITE_FAILED:
            raise TrainingStopped(USER_ERROR_EXIT, self._write_failure_line(iteration))
        name = signal.Signals(agreed).name
        if iteration + 1 >= self.trainer.max_iter:
            # Detectron2's checkpointer hook wrote model_final.pth in this same step.
            logger.warning(f"received {name} at the last iteration ({iteration}); the run is complete, model_final.pth written")
            return
        raise TrainingStopped(PREEMPTED_EXIT, self._checkpoint(iteration, name))

    def after_train(self):
        # Detectron2 counts past the last iteration only when the loop completed; after a crash (its own
        # report follows) or a stop there is nothing to add.
        if self._stopped or self.trainer.iter < self.trainer.max_iter:
            return
        if self.write_failure:
            # A write of Detectron2's writers after the last iteration (they write once more and close).
            raise TrainingStopped(USER_ERROR_EXIT, self._write_failure_line(self.trainer.iter - 1))
        if self.recorder.received is not None:
            logger.warning(f"received {self.recorder.received.name} after the last iteration; the run is complete, model_final.pth written")

    @staticmethod
    def _agree(request):
        if comm.get_world_size() == 1:
            return request
        value = torch.tensor([request], dtype=torch.int64, device=_collective_device())
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return int(value.item())

    def _checkpoint(self, iteration, signal_name):
        """Rank 0 writes the checkpoint of ``iteration``; returns the line to log, or raises TrainingStopped."""
        name = f"model_{iteration:07d}"
        started = time.perf_counter()
        failure = None
        try:
            # What Detectron2's periodic checkpointer saves; only rank 0's checkpointer writes.
            self.trainer.checkpointer.save(name, iteration=iteration)
        except UserError as e:  # the disk is full, or the folder cannot be written
            failure = str(e)
        seconds = time.perf_counter() - started
        if comm.get_world_size() > 1:
            # No process may exit before the file is complete: the launcher (Detectron2's, torchrun) ends the
            # other processes once one has exited, by SIGKILL after 30 s.
            written = torch.tensor([failure is None], dtype=torch.int64, device=_collective_device())
            dist.broadcast(written, src=0)
            if not written.item() and failure is None:
                raise TrainingStopped(USER_ERROR_EXIT)  # rank 0 reports its failure
        if failure is not None:
            raise TrainingStopped(USER_ERROR_EXIT, f"{failure} (the checkpoint of iteration {iteration}, after {signal_name})")
        return f"received {signal_name} at iteration {iteration}; checkpoint {name}.pth written in {seconds:.1f} s; resume with --resume"

    def _write_failure_line(self, iteration):
        if self.write_failure is None:
            return None  # another process could not write: it reports
        last = self.trainer.checkpointer.get_checkpoint_file()
        kept = f"the last checkpoint, {os.path.basename(last)}, is intact" if last else "no checkpoint had been written yet"
        return (
            f"{self.write_failure}; training stopped after iteration {iteration} and {kept}; free space on that "
            "disk and rerun with --resume"
        )


def _collective_device():
    # NCCL reduces tensors on the process's GPU only; gloo on the CPU.
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


class StopOnWriteFailure(EventWriter):
    """
    One of Detectron2's event writers whose failed write (OSError: a full disk, a lost mount) asks
    ``hook`` (``PreemptionCheckpointer``) to stop training at the end of the iteration, instead of
    raising in the middle of Detectron2's hooks; after a failure it writes nothing more.
    ``what`` names what the writer writes, for the message.
    """

    def __init__(self, writer, hook, what):
        self.writer = writer
        self.hook = hook
        self.what = what
        self.failed = False
        _leave_tensorboard_write_errors_to_the_main_thread()

    def write(self):
        if self.failed:
            return
        try:
            self.writer.write()
        except OSError as e:
            self._fail(e)

    def close(self):
        try:
            self.writer.close()
        except OSError as e:
            if not self.failed:
                self._fail(e)

    def _fail(self, error):
        self.failed = True
        cause = f"{error.strerror} (errno {error.errno})" if error.errno else str(error)
        self.hook.record_write_failure(f"cannot write {self.what}: {cause}")


def _leave_tensorboard_write_errors_to_the_main_thread():
    """
    TensorBoard writes its events from a thread of its own. A failed write ends that thread, which Python
    reports with a traceback on stderr (threading.excepthook), and TensorBoard raises the same OSError again
    in the main thread at the next write, where ``StopOnWriteFailure`` turns it into the one line. So the
    thread's own report of an OSError is dropped; every other thread exception is reported as before.
    """
    previous = threading.excepthook
    if getattr(previous, "leaves_tensorboard_write_errors", False):
        return

    def excepthook(args):
        if isinstance(args.exc_value, OSError) and type(args.thread).__module__.startswith("tensorboard."):
            return
        previous(args)

    excepthook.leaves_tensorboard_write_errors = True
    threading.excepthook = excepthook
