"""
Distributed start-up that speaks: while the processes of a run wait for each other at ``--dist-url``,
say what is awaited, and give up after a bounded time with one line.

Detectron2's ``launch`` spawns this machine's processes, which meet the others' in
``torch.distributed.init_process_group`` and a barrier, and only then call the training function. Until
then they print nothing, and they wait as long as the process group's timeout (Detectron2's default:
30 minutes). ``RendezvousWatch`` runs in the launching process: the training function sets its
``arrived`` event first thing (so every process of the run has met), and a watchdog thread reports
every ``period`` seconds until then; after ``timeout`` seconds it terminates this machine's processes,
and ``launch`` returns by an exception that ``failure()`` turns into one line. ``LaunchedRendezvousWatch``
does the same in a process that torchrun or srun started, which meets the others itself.
"""

import multiprocessing
import os
import sys
import threading
import time
from datetime import timedelta

from detectron2.engine.launch import DEFAULT_TIMEOUT

from ..errors import UserError, report_user_error

__all__ = ["RendezvousWatch", "LaunchedRendezvousWatch", "collective_timeout"]


def collective_timeout(rendezvous_seconds):
    """
    The process-group timeout to give ``launch``. It bounds the rendezvous and also every collective
    operation of training, where a rank may legitimately wait minutes for another (rank 0 writing a
    checkpoint or evaluating COCO). So the start-up bound is kept by ``RendezvousWatch``, and the process
    group keeps Detectron2's 30 minutes, or more when the start-up bound is longer.
    """
    return max(DEFAULT_TIMEOUT, timedelta(seconds=rendezvous_seconds))


class RendezvousWatch:
    def __init__(self, num_gpus, num_machines, machine_rank, dist_url, timeout, period=None, out=None, arrived=None):
        self.num_gpus = num_gpus
        self.num_machines = num_machines
        self.machine_rank = machine_rank
        self.dist_url = dist_url
        self.timeout = float(timeout)
        self.period = period if period is not None else min(30.0, max(1.0, self.timeout / 5))
        self.out = out or sys.stdout
        # Spawned processes inherit the event (Detectron2's launch starts them with "spawn").
        self.arrived = arrived if arrived is not None else multiprocessing.get_context("spawn").Event()
        self.timed_out = False
        self._stop = threading.Event()
        self._thread = None
        self._started = None

    @property
    def world_size(self):
        return self.num_gpus * self.num_machines

    def _what(self):
        first = self.machine_rank * self.num_gpus
        ranks = f"process {first}" if self.num_gpus == 1 else f"processes {first}..{first + self.num_gpus - 1}"
        return (
            f"the {self.world_size} processes of the run at {self._where()} "
            f"(this is machine {self.machine_rank} of --num-machines {self.num_machines}, running {ranks})"
        )

    def start(self):
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._watch, name="vader_d2-rendezvous-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _watch(self):
        deadline = self._started + self.timeout
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                break
            if self.arrived.wait(min(self.period, deadline - now)):
                return
            if self._stop.is_set():
                return
            waited = time.monotonic() - self._started
            if waited < self.timeout:
                self._say_waiting(waited)
        if self._stop.is_set() or self.arrived.is_set():
            return
        self.timed_out = True
        self._give_up()

    def _say_waiting(self, waited):
        print(
            f"vader_d2: waiting for {self._what()}: {waited:.0f} s of --dist-timeout {self.timeout:g} s",
            file=self.out, flush=True,
        )

    def _give_up(self):
        # Ends launch(): it sees its processes die and terminates the rest. Processes may still be
        # starting when a short timeout passes, so keep ending them until launch() has returned.
        while not self._stop.is_set():
            for process in multiprocessing.active_children():
                process.terminate()
            self._stop.wait(0.2)

    def failure(self, error=None):
        """The UserError to report when ``launch`` ended before every process arrived, or None if they
        had all arrived (the error then belongs to training)."""
        if self.arrived.is_set():
            return None
        check = self._check()
        if self.timed_out:
            return UserError(
                f"{self._what()} did not all arrive within --dist-timeout {self.timeout:g} s; {check}"
            )
        if error is not None:
            lines = [line for line in str(error).strip().splitlines() if line.strip()]
            cause = lines[-1].strip() if lines else type(error).__name__
            return UserError(f"the processes could not meet at {self._where()}: {cause}; {check}")
        return None

    def _where(self):
        return f"--dist-url {self.dist_url}"

    def _check(self):
        return (
            "check that every machine runs the same command with the same --num-machines, --num-gpus and "
            "--dist-url and its own --machine-rank, that machine 0 can be reached at that address from the "
            "others (firewall), and that no other run uses the port"
        )


class LaunchedRendezvousWatch(RendezvousWatch):
    """
    The watch of a process that torchrun or srun started (``vader_d2.engine.launchers``), which meets the others
    itself: its main thread waits in torch's rendezvous, which no exception interrupts, and there is no
    spawned process to end. So on time-out this thread prints the one line and ends the process (it holds
    nothing yet: rank 0 takes OUTPUT_DIR only once all have met). Only local rank 0 prints the waiting
    lines, one per node instead of one per process.
    """

    def __init__(self, launched, timeout, period=None, out=None):
        super().__init__(
            launched.local_world_size, launched.num_nodes, launched.node_rank, launched.init_method, timeout,
            period=period, out=out, arrived=threading.Event(),
        )
        self.launched = launched

    def _where(self):
        return self.launched.rendezvous

    def _what(self):
        p = self.launched
        return (
            f"the {p.world_size} processes of the run at {p.rendezvous} started by {p.launcher} "
            f"(this is process {p.rank}, node {p.node_rank} of {p.num_nodes})"
        )

    def _check(self):
        return self.launched.hint

    def _say_waiting(self, waited):
        if self.launched.local_rank == 0:
            super()._say_waiting(waited)

    def _give_up(self):
        try:
            report_user_error(self.failure())
        except SystemExit as end:  # report_user_error's exit would end this thread only
            self.out.flush()
            os._exit(end.code)
