"""
Launching a training run, for every tool that trains: ``launch_training(main, args, build_config)`` runs
``main(args, notes)`` in each process of the run, however it was started (``build_config``: the tool's
config builder, ``vader_d2.cli.build_config`` or one like it, called as ``build_config(args.config_file,
args.opts)`` for the checks before the launch):

- ``--num-gpus N`` (and ``--num-machines``): Detectron2's ``launch`` spawns the processes of this
  machine, with a bounded, reported wait for the other machines (``rendezvous.RendezvousWatch``);
- torchrun or srun started this process (``launchers.detect_launch``): it is one rank, and joins the
  others itself (``run_launched``).

Either way the config is checked before any process starts (``check_before_launch``), the pre-emption
signals are handled from then on (``preemption.RECORDER``), OUTPUT_DIR is held by the process whose rank
0 writes checkpoints (``output_dir.claim_output_dir``), and a mistake anywhere ends every process with
its one line and exit status 2 (``vader_d2.errors``); a pre-empted run exits with 75.

``args`` are those of ``launch_argument_parser()``: Detectron2's ``default_argument_parser`` with
``--start-over`` and ``--dist-timeout``.
"""

import logging
import os
import sys

import torch
from detectron2.engine import default_argument_parser, launch
from detectron2.utils import comm
from torch.multiprocessing import ProcessExitedException, ProcessRaisedException

from ..config import check_solver_config, check_vader_config
from ..errors import PREEMPTED_EXIT, USER_ERROR_EXIT, UserError, check_output_dir, report_user_error
from .launchers import children_end_with_this_process, detect_launch, end_with_launcher, join_process_group, leave_process_group
from .output_dir import PREVIOUS_RUNS, claim_output_dir
from .preemption import RECORDER
from .rendezvous import LaunchedRendezvousWatch, RendezvousWatch, collective_timeout
from .trainer import VADeRTrainer, check_datasets_registered, is_pretraining, schedule_in_epochs

__all__ = [
    "DEFAULT_DIST_TIMEOUT",
    "launch_argument_parser",
    "launch_training",
    "check_before_launch",
    "check_launch_args",
    "check_devices",
    "worker",
]

# Seconds the processes of all machines have to meet at --dist-url (Detectron2 waits 30 minutes, silently).
DEFAULT_DIST_TIMEOUT = 600

# A failed start-up is reported as one line (vader_d2.engine.rendezvous): before our loggers exist, Detectron2's
# launched processes would print the --dist-url through Python's last-resort handler, and torch's
# launcher one line per process it ends. (This module is imported by every launched process: it holds ``worker``.)
logging.getLogger("detectron2.engine.launch").addHandler(logging.NullHandler())
logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)


def launch_argument_parser():
    """Detectron2's ``default_argument_parser`` with the options of a launch vader_d2 adds."""
    parser = default_argument_parser()
    parser.add_argument(
        "--start-over", action="store_true",
        help=f"train from iteration 0 in an OUTPUT_DIR that holds an earlier run: its files (checkpoints, "
             f"last_checkpoint, metrics, events, logs, config.yaml) are first moved into OUTPUT_DIR/{PREVIOUS_RUNS}/<time>/",
    )
    parser.add_argument(
        "--dist-timeout", type=float, default=DEFAULT_DIST_TIMEOUT, metavar="SECONDS",
        help="give up when the processes of all machines have not met at --dist-url within this many seconds "
             f"(default {DEFAULT_DIST_TIMEOUT}); what is awaited is printed while waiting",
    )
    return parser


def check_devices(cfg, num_processes_per_machine, launched=None):
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"MODEL.DEVICE={cfg.MODEL.DEVICE!r} but no CUDA GPU is visible; add MODEL.DEVICE cpu to the command line")
    if torch.cuda.is_available() and num_processes_per_machine > torch.cuda.device_count():
        if launched is None:
            raise UserError(f"--num-gpus {num_processes_per_machine} but this machine has {torch.cuda.device_count()} GPUs")
        if cfg.MODEL.DEVICE.startswith("cuda"):
            raise UserError(
                f"{launched.launcher} runs {num_processes_per_machine} processes on this node but each sees "
                f"{torch.cuda.device_count()} GPU(s); Detectron2 puts local process i on GPU i, so give every "
                "process all GPUs of its node (no --gpus-per-task or per-task GPU binding)"
            )


def check_launch_args(args):
    if args.num_gpus < 1:
        raise UserError(f"--num-gpus must be at least 1 (processes on this machine), got {args.num_gpus}")
    if args.num_machines < 1:
        raise UserError(f"--num-machines must be at least 1, got {args.num_machines}")
    if not 0 <= args.machine_rank < args.num_machines:
        raise UserError(f"--machine-rank must be in 0..{args.num_machines - 1} for --num-machines {args.num_machines}, got {args.machine_rank}")
    if args.num_machines > 1 and args.dist_url == "auto":
        raise UserError("--dist-url auto picks a free port on this machine only; with several machines pass tcp://HOST:PORT of machine 0")
    timeout = getattr(args, "dist_timeout", DEFAULT_DIST_TIMEOUT)
    if not timeout > 0:
        raise UserError(f"--dist-timeout must be a positive number of seconds, got {timeout:g}")


def worker(main, args, notes=(), arrived=None):
    """``main(args, notes)`` in each launched process: a UserError there (data, checkpoint, diverging
    loss) is reported as one line too; with several processes, each process that meets it prints it."""
    if arrived is not None:
        # Detectron2's launch calls this only after every process of the run has joined the group.
        arrived.set()
    # A process spawned for --num-gpus > 1 ends when the launcher dies, even by SIGKILL. (Until here,
    # torch's spawn wrapper asks for SIGINT, which training may outlive; the launcher may already be gone.)
    end_with_launcher()
    if args.num_gpus > 1 and "OMP_NUM_THREADS" not in os.environ:
        # The processes of one machine share its cores: with each using all of them (torch's default),
        # a CPU step becomes many times slower (torchrun even sets OMP_NUM_THREADS=1).
        torch.set_num_threads(max(1, torch.get_num_threads() // args.num_gpus))
    try:
        return main(args, notes)
    except UserError as e:
        report_user_error(e)


def check_before_launch(args, build_config, launched=None):
    """Catch config mistakes in the launching process, before any worker starts (with ``launched``, in each
    process torchrun or srun started, before they meet). Returns the config as the run will see it."""
    check_launch_args(args)
    world_size = args.num_gpus * args.num_machines
    cfg = VADeRTrainer.auto_scale_workers(build_config(args.config_file, args.opts), world_size)
    check_devices(cfg, args.num_gpus, launched)
    check_datasets_registered(cfg)
    if not args.eval_only:
        cfg, _ = schedule_in_epochs(cfg)
        check_solver_config(cfg)
        if is_pretraining(cfg):
            check_vader_config(cfg, world_size)
    return cfg


def launch_training(main, args, build_config):
    """Run ``main(args, notes)`` in every process of the run ``args`` asks for (``notes``: lines for rank 0
    to log, from taking OUTPUT_DIR), once the config ``build_config`` builds from ``args`` has passed the
    checks. A mistake ends the run with a UserError (one line, status 2), a pre-emption with SystemExit(75)."""
    dist_url_given = None if args.dist_url == default_argument_parser().get_default("dist_url") else args.dist_url
    launched = detect_launch(args.num_gpus, args.num_machines, args.machine_rank, dist_url_given)
    if launched is not None:
        return run_launched(main, args, build_config, launched)
    cfg = check_before_launch(args, build_config)
    if not args.eval_only:
        # A pre-emption signal from here on ends the run with a checkpoint (vader_d2/engine/preemption.py); the
        # launcher of several processes forwards it to them.
        RECORDER.install(cfg.SOLVER.PREEMPTION_SIGNALS, forward_to_children=args.num_gpus > 1)
    claim = None
    if args.eval_only or args.machine_rank != 0:
        # Other machines write only their logs into OUTPUT_DIR.
        check_output_dir(cfg.OUTPUT_DIR, "OUTPUT_DIR")
    else:
        # The machine whose rank-0 process writes the checkpoints holds OUTPUT_DIR for the whole run
        # (the lock dies with this process).
        claim = claim_output_dir(cfg.OUTPUT_DIR, resume=args.resume, start_over=args.start_over)
    watch = None
    if args.num_gpus * args.num_machines > 1:
        watch = RendezvousWatch(args.num_gpus, args.num_machines, args.machine_rank, args.dist_url, args.dist_timeout).start()
    children_end_with_this_process()
    try:
        launch(
            worker,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(main, args, claim.notes if claim else [], watch.arrived if watch else None),
            timeout=collective_timeout(args.dist_timeout),
        )
    except (ProcessExitedException, ProcessRaisedException) as e:
        failure = watch.failure(e) if watch else None
        if failure is not None and watch.timed_out:
            # The watch ended the processes itself (SIGTERM, a pre-emption signal to them): what
            # happened is the missing peer, not a pre-emption.
            raise failure from None
        if isinstance(e, ProcessExitedException) and e.exit_code == PREEMPTED_EXIT:
            raise SystemExit(PREEMPTED_EXIT)  # rank 0 has logged its line
        if isinstance(e, ProcessExitedException) and e.signal_name in [sig.name for sig in RECORDER.signals]:
            # Killed before its handlers were installed: it was still starting, so nothing is lost.
            print(
                f"vader_d2: a training process received {e.signal_name} while starting, before its first iteration; "
                "nothing to save; resume with --resume", file=sys.stderr, flush=True,
            )
            raise SystemExit(PREEMPTED_EXIT)
        if failure is not None:
            raise failure from None
        if isinstance(e, ProcessExitedException) and e.exit_code == USER_ERROR_EXIT:
            raise SystemExit(USER_ERROR_EXIT)  # the worker has printed its line
        raise
    finally:
        if watch is not None:
            watch.stop()
        if claim is not None:
            claim.release()


def run_launched(main, args, build_config, launched):
    """
    One process of a run that torchrun or srun started (``vader_d2.engine.launchers``): the training of
    ``--num-gpus``, in this process. The same checks before the processes meet, the same bounded wait for
    them, and OUTPUT_DIR held by global rank 0 only.
    """
    # What Detectron2's launch would have been given: for the checks, default_setup's log and worker's
    # share of the cores.
    args.num_gpus, args.num_machines, args.machine_rank = launched.local_world_size, launched.num_nodes, launched.node_rank
    args.dist_url = launched.init_method
    cfg = check_before_launch(args, build_config, launched)
    if not args.eval_only:
        # As launch_training(): a pre-emption signal while the processes meet stops the run after its first iteration.
        RECORDER.install(cfg.SOLVER.PREEMPTION_SIGNALS)
    if args.eval_only or launched.rank != 0:
        check_output_dir(cfg.OUTPUT_DIR, "OUTPUT_DIR")
    if launched.world_size > 1:
        watch = LaunchedRendezvousWatch(launched, args.dist_timeout).start()
        try:
            join_process_group(launched, cfg.MODEL.DEVICE.startswith("cuda"), collective_timeout(args.dist_timeout))
            watch.arrived.set()
        except Exception as e:  # torch reports a failed rendezvous with several exception types
            failure = watch.failure(e)
            if failure is None:
                raise
            raise failure from None
        finally:
            watch.stop()
    try:
        claim = claim_output_dir_on_rank_0(cfg, args, launched)
        try:
            return worker(main, args, claim.notes if claim else [])
        finally:
            if claim is not None:
                claim.release()
    finally:
        # Also when rank 0 could not take OUTPUT_DIR.
        if torch.distributed.is_initialized():
            leave_process_group()


def claim_output_dir_on_rank_0(cfg, args, launched):
    """Rank 0 takes OUTPUT_DIR, once all processes have met; when it cannot, every process ends with its line
    (the others would otherwise wait for rank 0 at their first collective)."""
    claim, refusal = None, None
    if launched.rank == 0 and not args.eval_only:
        try:
            claim = claim_output_dir(cfg.OUTPUT_DIR, resume=args.resume, start_over=args.start_over)
        except UserError as e:
            refusal = str(e)
    if launched.world_size > 1:
        refusal = comm.all_gather(refusal)[0]
    if refusal is not None:
        raise UserError(refusal)
    return claim


