"""
Processes started by a cluster's launcher instead of Detectron2's ``--num-gpus`` spawner, and spawned
processes that end with their launcher.

``detect_launch`` reads who started this process:

- ``torchrun`` (``TORCHELASTIC_RUN_ID`` and the variables it sets for every worker: RANK, WORLD_SIZE,
  LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), the rendezvous at ``env://``;
- SLURM's ``srun`` with several tasks (a job step: ``SLURM_STEP_ID``; SLURM_PROCID, SLURM_NTASKS,
  SLURM_LOCALID, SLURM_NODEID, SLURM_NNODES and the node list), the rendezvous at the first node of the
  step, on ``MASTER_PORT`` or a port derived from the job id (``slurm_port``), unless
  ``--dist-url tcp://HOST:PORT`` names it;
- ``--dist-url env://``: any other launcher that sets torchrun's six variables.

Each of these processes is one rank of the run: ``join_process_group`` does what Detectron2's launch
does in a process it spawned (process group, per-machine group, GPU), in this process.

``end_with_launcher``: a process that Detectron2's launch spawned asks the kernel for SIGKILL when its
launcher dies, so that a ``kill -9`` of the launcher (which holds the OUTPUT_DIR lock) cannot leave
processes training on without it. (torch's spawn asks for SIGINT, which a training loop can outlive:
seen here, both processes of a ``--num-gpus 2`` run still ran 10 s after ``kill -9`` of their launcher.)
"""

import ctypes
import os
import re
import signal
import sys
from dataclasses import dataclass
from typing import List, Optional

from ..errors import UserError

__all__ = [
    "LaunchedProcess",
    "detect_launch",
    "parse_slurm_nodelist",
    "slurm_port",
    "join_process_group",
    "children_end_with_this_process",
    "end_with_launcher",
    "signal_when_parent_dies",
]

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# srun's default rendezvous port: SLURM_PORT_BASE + job id modulo SLURM_PORT_SPAN, the same for every task
# of the job without any exchange, different for most jobs that share a node, and below Linux's ephemeral
# ports (32768 and up), which outgoing connections may hold.
SLURM_PORT_BASE = 20000
SLURM_PORT_SPAN = 10000
# The launcher's PID, handed to the processes it spawns (environment variables travel with "spawn").
LAUNCHER_PID_VARIABLE = "VADER_D2_LAUNCHER_PID"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class LaunchedProcess:
    """One rank of a run whose processes a cluster launcher started."""

    launcher: str  # "torchrun", "srun" or "--dist-url env://", for messages
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    init_method: str  # for torch.distributed.init_process_group
    rendezvous: str  # where the processes meet, for messages
    hint: str  # what to check when they do not meet

    @property
    def node_rank(self):
        return self.rank // self.local_world_size

    @property
    def num_nodes(self):
        return self.world_size // self.local_world_size


def detect_launch(num_gpus, num_machines, machine_rank, dist_url, environ=None) -> Optional[LaunchedProcess]:
    """
    This process's rank when torchrun, srun (with several tasks) or ``--dist-url env://`` started it, else
    None (``--num-gpus`` then spawns the run's processes). ``dist_url``: the ``--dist-url`` given, None if
    none was. Launcher flags that contradict the launcher are a UserError, as are variables that do not
    make a run Detectron2 can run.
    """
    env = os.environ if environ is None else environ
    if "TORCHELASTIC_RUN_ID" in env:
        if dist_url not in (None, "env://"):
            raise UserError(f"torchrun started this process, so the processes meet at its env:// rendezvous; drop --dist-url {dist_url}")
        launched = _from_torchrun_variables(env, "torchrun")
    elif dist_url == "env://":
        launched = _from_torchrun_variables(env, "--dist-url env://")
    elif _in_srun_step(env) and _int(env, _first_set(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")) > 1:
        launched = _from_slurm_variables(env, dist_url)
    else:
        return None
    _check_no_spawn_flags(launched, num_gpus, num_machines, machine_rank)
    return launched


def _check_no_spawn_flags(launched, num_gpus, num_machines, machine_rank):
    starts = {
        "torchrun": "torchrun --nproc-per-node and --nnodes set the processes",
        "srun": "srun --ntasks-per-node and --nodes set the processes",
    }.get(launched.launcher, "the launcher that set RANK and WORLD_SIZE starts the processes")
    where = f"{launched.launcher} started this process as rank {launched.rank} of {launched.world_size}"
    for flag, value, default in (("--num-gpus", num_gpus, 1), ("--num-machines", num_machines, 1), ("--machine-rank", machine_rank, 0)):
        if value != default:
            raise UserError(f"{where}, so it spawns none: drop {flag} {value} ({starts})")


def _from_torchrun_variables(env, launcher):
    missing = [name for name in TORCHRUN_VARIABLES if not env.get(name)]
    if missing:
        raise UserError(
            f"{launcher}: the environment lacks {', '.join(missing)}; the processes of the run need all of "
            f"{', '.join(TORCHRUN_VARIABLES)} (torchrun sets them)"
        )
    rank, world_size, local_rank, local_world_size = (_int(env, name) for name in TORCHRUN_VARIABLES[:4])
    master = f"{env['MASTER_ADDR']}:{_port(env, 'MASTER_PORT')}"
    hint = (
        "check that every node runs the same torchrun command with the same --nnodes and --nproc-per-node, "
        f"that {master} can be reached from every node (firewall), and that no other run uses the port"
    )
    launched = LaunchedProcess(
        launcher, rank, world_size, local_rank, local_world_size, "env://", f"MASTER_ADDR:MASTER_PORT {master}", hint
    )
    _check_ranks(launched, f"RANK={rank}, WORLD_SIZE={world_size}, LOCAL_RANK={local_rank}, LOCAL_WORLD_SIZE={local_world_size}")
    if "GROUP_RANK" in env and _int(env, "GROUP_RANK") != launched.node_rank:
        raise UserError(
            f"{launcher}: RANK={rank} with LOCAL_WORLD_SIZE={local_world_size} is not on node GROUP_RANK={env['GROUP_RANK']}: "
            "Detectron2's per-machine process groups need the ranks numbered node by node"
        )
    return launched


def _in_srun_step(env):
    # A batch script (sbatch) or an salloc shell has SLURM_PROCID too, but no numeric step id: there the
    # user's own --num-gpus spawns the processes.
    step = _first_set(env, "SLURM_STEP_ID", "SLURM_STEPID")
    tasks = _first_set(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")
    return "SLURM_PROCID" in env and step is not None and env[step].isdigit() and tasks is not None


def _from_slurm_variables(env, dist_url):
    tasks = _int(env, _first_set(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"))
    nodes_variable = _first_set(env, "SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES")
    if nodes_variable is None:
        raise UserError("srun: the environment lacks SLURM_NNODES (and SLURM_STEP_NUM_NODES); is this an srun job step?")
    nodes = _int(env, nodes_variable)
    rank, local_rank, node = (_int(env, name) for name in ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID"))
    if nodes < 1 or tasks % nodes != 0:
        raise UserError(
            f"srun started {tasks} tasks on {nodes} nodes: Detectron2's per-machine process groups need the same "
            "number on every node; use --ntasks-per-node"
        )
    if dist_url is not None:
        if not re.fullmatch(r"tcp://[^:/]+:\d+", dist_url):
            raise UserError(f"srun started this process: --dist-url must be tcp://HOST:PORT of the first task's node, or left out, got {dist_url}")
        address = dist_url[len("tcp://"):]
        chosen = "choose another with --dist-url"
    else:
        host = env.get("MASTER_ADDR") or _first_slurm_node(env)
        port = _port(env, "MASTER_PORT") if env.get("MASTER_PORT") else slurm_port(env.get("SLURM_JOB_ID", "0"))
        address = f"{host}:{port}"
        chosen = "choose another with MASTER_PORT" if env.get("MASTER_PORT") else "it derives from the job id; choose another with MASTER_PORT"
    hint = (
        f"check that srun started all {tasks} tasks, that {address} can be reached from every node (firewall), "
        f"and that no other job uses the port ({chosen})"
    )
    launched = LaunchedProcess("srun", rank, tasks, local_rank, tasks // nodes, f"tcp://{address}", address, hint)
    _check_ranks(launched, f"SLURM_PROCID={rank}, SLURM_NTASKS={tasks}, SLURM_LOCALID={local_rank}, {nodes_variable}={nodes}")
    if node != launched.node_rank:
        raise UserError(
            f"srun placed task {rank} on node {node}, not node {launched.node_rank}: Detectron2's per-machine process "
            "groups need the tasks numbered node by node; use --ntasks-per-node with the default --distribution=block"
        )
    return launched


def _check_ranks(launched, variables):
    r, w, lr, lw = launched.rank, launched.world_size, launched.local_rank, launched.local_world_size
    if not (w >= 1 and lw >= 1 and 0 <= r < w and 0 <= lr < lw and w % lw == 0 and r % lw == lr):
        raise UserError(
            f"{launched.launcher}: {variables} is not a rank of a run with the same number of processes on every "
            "node, numbered node by node (rank = node x processes per node + local rank), which Detectron2's "
            "per-machine process groups need"
        )


def _first_slurm_node(env):
    name = _first_set(env, "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
    if name is None:
        raise UserError("srun: the environment names no node list (SLURM_STEP_NODELIST or SLURM_JOB_NODELIST); set MASTER_ADDR")
    return parse_slurm_nodelist(env[name])[0]


def slurm_port(job_id):
    """The rendezvous port of an srun run without MASTER_PORT: every task of job ``job_id`` computes the same."""
    digits = re.sub(r"\D", "", str(job_id))
    return SLURM_PORT_BASE + int(digits or 0) % SLURM_PORT_SPAN


def parse_slurm_nodelist(text) -> List[str]:
    """
    The host names of a SLURM node list, in order: ``node[01-03,07],gpu5`` -> node01, node02, node03,
    node07, gpu5 (zero-padded ranges keep their width; several bracket groups in one name, as in
    ``rack[1-2]-n[1-2]``, give every combination). A list that is not one is a UserError.
    """
    hosts = []
    for name in _split_top_level(text, text):
        hosts.extend(_expand_hostname(name, text))
    if not hosts:
        raise UserError(f"cannot read the SLURM node list {text!r}: it names no host")
    return hosts


def _split_top_level(text, whole):
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
        if depth not in (0, 1):
            raise UserError(f"cannot read the SLURM node list {whole!r}: unbalanced brackets")
    if depth != 0:
        raise UserError(f"cannot read the SLURM node list {whole!r}: unbalanced brackets")
    parts.append(text[start:])
    if any(not part.strip() for part in parts):
        raise UserError(f"cannot read the SLURM node list {whole!r}: an empty name")
    return [part.strip() for part in parts]


def _expand_hostname(name, whole):
    opening = name.find("[")
    if opening < 0:
        return [name]
    closing = name.index("]", opening)
    prefix, ranges, rest = name[:opening], name[opening + 1 : closing], name[closing + 1 :]
    return [prefix + number + tail for number in _expand_ranges(ranges, whole) for tail in _expand_hostname(rest, whole)]


def _expand_ranges(ranges, whole):
    numbers = []
    for part in ranges.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if not match:
            raise UserError(f"cannot read the SLURM node list {whole!r}: {part!r} is not a number or a range a-b")
        first, last = match.group(1), match.group(2) or match.group(1)
        if int(last) < int(first):
            raise UserError(f"cannot read the SLURM node list {whole!r}: the range {part!r} runs backwards")
        numbers.extend(str(n).zfill(len(first)) for n in range(int(first), int(last) + 1))
    return numbers


def _first_set(env, *names):
    return next((name for name in names if env.get(name)), None)


def _int(env, name):
    try:
        return int(env[name])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"the environment variable {name} must be a whole number, got {env.get(name)!r}") from None


def _port(env, name):
    port = _int(env, name)
    if not 0 < port < 65536:
        raise UserError(f"{name} must be a port number (1-65535), got {port}")
    return port


def join_process_group(launched, use_cuda, timeout):
    """
    What Detectron2's launch does in each process it spawns, for this process of a launched run: join
    the process group (NCCL on GPUs, gloo on CPUs), create Detectron2's per-machine group (which
    ``comm.get_local_rank()`` and the trainer's DDP read), take GPU ``local_rank``, and wait for every
    process. Blocks until all have met; ``vader_d2.engine.rendezvous.LaunchedRendezvousWatch`` bounds the wait.
    """
    import torch
    import torch.distributed as dist
    from detectron2.utils import comm

    if use_cuda:
        # Before the process group, so that NCCL binds this process's GPU (train_net has checked that the
        # node's processes see enough GPUs).
        torch.cuda.set_device(launched.local_rank)
    # Detectron2's launch picks NCCL whenever a GPU is visible; MODEL.DEVICE cpu on a GPU node needs gloo.
    dist.init_process_group(
        backend="nccl" if use_cuda else "gloo",
        init_method=launched.init_method,
        rank=launched.rank,
        world_size=launched.world_size,
        timeout=timeout,
    )
    comm.create_local_process_group(launched.local_world_size)
    comm.synchronize()


def leave_process_group():
    """
    The end of ``join_process_group``, before this process exits: destroy the process groups and drop
    Detectron2's references to the groups it made (the per-machine group, the gloo group its
    ``comm.all_gather`` caches). Their gloo threads then end here; left running until the interpreter
    exits, they can abort the process after its last line ("terminate called without an active
    exception", status -6 instead of 0 or 2).
    """
    import torch.distributed as dist
    from detectron2.utils import comm

    dist.destroy_process_group()
    # Protected names of detectron2.utils.comm: it has no public way to forget the groups it holds.
    comm._LOCAL_PROCESS_GROUP = None
    comm._get_global_gloo_group.cache_clear()


def children_end_with_this_process():
    """Called by a launcher before it spawns: the processes it starts then call ``end_with_launcher``."""
    os.environ[LAUNCHER_PID_VARIABLE] = str(os.getpid())


def signal_when_parent_dies(sig):
    """Have the kernel send ``sig`` to this process when its parent ends (Linux's PR_SET_PDEATHSIG).
    Returns None once asked, else why it could not be (another system, or prctl's error)."""
    if not sys.platform.startswith("linux"):
        return f"{sys.platform} has no PR_SET_PDEATHSIG"
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        return f"prctl: {os.strerror(ctypes.get_errno())}"
    return None


def end_with_launcher():
    """
    In a process spawned by ``children_end_with_this_process``'s caller (elsewhere nothing happens): have the
    kernel send SIGKILL to this process when the launcher dies (Linux's PR_SET_PDEATHSIG; on other systems
    nothing happens). Call it after torch's spawn wrapper, which sets its own signal. SIGKILL, not a
    signal a handler could turn into a checkpoint: the launcher held the OUTPUT_DIR lock, so once it is
    gone another run may own the folder. If the launcher died before the request, this process ends now.
    The variable is removed, so that processes this one spawns do not take it for their launcher.
    """
    launcher = os.environ.pop(LAUNCHER_PID_VARIABLE, None)
    # One process: Detectron2's launch runs the training in the launcher itself.
    if launcher is None or int(launcher) == os.getpid() or not sys.platform.startswith("linux"):
        return
    # The signal follows the thread that spawned this process: Detectron2's launch spawns from the main thread.
    refused = signal_when_parent_dies(signal.SIGKILL)
    if refused:
        print(
            f"vader_d2: warning: cannot ask to end with the launcher ({refused}); "
            "if you kill the launcher, kill its processes too",
            file=sys.stderr, flush=True,
        )
        return
    if os.getppid() != int(launcher):
        os.kill(os.getpid(), signal.SIGKILL)
