"""
torchrun and srun start the processes of a run themselves (vader_d2/engine/launchers.py), and a `--num-gpus` run
ends its processes with its launcher.

Fast: reading the launchers' variables and SLURM node lists, flags that contradict the launcher, config
mistakes found before the processes meet, and the parent-death request in forked processes.
Slow (several training processes each): torchrun and simulated srun tasks compute bit for bit what
`--num-gpus 2` computes; a missing srun task and a folder in use end every process with one line; a
`kill -9` of a `--num-gpus 2` launcher ends its processes and frees OUTPUT_DIR.
"""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import vader_d2.engine.launch as launch
from vader_d2.errors import UserError
from vader_d2.engine.launchers import (
    LAUNCHER_PID_VARIABLE,
    SLURM_PORT_BASE,
    detect_launch,
    end_with_launcher,
    parse_slurm_nodelist,
    slurm_port,
)
from vader_d2.engine.output_dir import OutputDirLock

from .helpers import DEMO_CONFIG, REPO, TINY_OPTS, free_port, load_tool, run_python, run_tool, run_train_net, single_error_line, train_net_env

train_net = load_tool("train_net")

TORCHRUN_ENV = {
    "TORCHELASTIC_RUN_ID": "none", "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
    "GROUP_RANK": "1", "MASTER_ADDR": "node01", "MASTER_PORT": "29500",
}


def srun_env(rank, tasks, nodes, node, local, nodelist="node[01-02]", **extra):
    env = {
        "SLURM_JOB_ID": "123456", "SLURM_STEP_ID": "0", "SLURM_PROCID": str(rank), "SLURM_NTASKS": str(tasks),
        "SLURM_NNODES": str(nodes), "SLURM_NODEID": str(node), "SLURM_LOCALID": str(local), "SLURM_STEP_NODELIST": nodelist,
    }
    env.update(extra)
    return env


def detect(env, num_gpus=1, num_machines=1, machine_rank=0, dist_url=None):
    return detect_launch(num_gpus, num_machines, machine_rank, dist_url, environ=env)


# ---------------------------------------------------------------------------------------------------
# SLURM node lists


@pytest.mark.parametrize(
    "text, hosts",
    [
        ("localhost", ["localhost"]),
        ("node[01-03,07],gpu5", ["node01", "node02", "node03", "node07", "gpu5"]),
        ("n[8-10]", ["n8", "n9", "n10"]),
        ("n[008-010]", ["n008", "n009", "n010"]),
        ("a[1-2]-ib,b", ["a1-ib", "a2-ib", "b"]),
        ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
        ("gpu-a100-[3],cpu1", ["gpu-a100-3", "cpu1"]),
    ],
)
def test_slurm_node_lists_expand_in_order(text, hosts):
    assert parse_slurm_nodelist(text) == hosts


@pytest.mark.parametrize(
    "text, problem",
    [
        ("node[01-03", "unbalanced brackets"), ("node]1[", "unbalanced brackets"), ("a,,b", "an empty name"),
        ("node[3-1]", "the range '3-1' runs backwards"), ("node[a-c]", "'a-c' is not a number or a range a-b"),
        ("", "an empty name"),
    ],
)
def test_unreadable_slurm_node_lists_are_one_line(text, problem):
    with pytest.raises(UserError) as error:
        parse_slurm_nodelist(text)
    assert str(error.value) == f"cannot read the SLURM node list {text!r}: {problem}"


# ---------------------------------------------------------------------------------------------------
# Which launcher started this process


def test_torchrun_variables_give_the_rank_and_the_env_rendezvous():
    launched = detect(TORCHRUN_ENV)
    assert (launched.launcher, launched.rank, launched.world_size, launched.local_rank, launched.local_world_size) == ("torchrun", 3, 4, 1, 2)
    assert (launched.node_rank, launched.num_nodes, launched.init_method) == (1, 2, "env://")
    assert detect(TORCHRUN_ENV, dist_url="env://") == launched


def test_srun_tasks_meet_at_the_first_node_on_a_port_from_the_job_id():
    launched = detect(srun_env(rank=3, tasks=4, nodes=2, node=1, local=1, nodelist="gpu[07-08]"))
    assert (launched.launcher, launched.rank, launched.world_size, launched.local_rank, launched.local_world_size) == ("srun", 3, 4, 1, 2)
    assert launched.node_rank == 1 and launched.num_nodes == 2
    assert slurm_port("123456") == SLURM_PORT_BASE + 3456
    assert launched.init_method == f"tcp://gpu07:{SLURM_PORT_BASE + 3456}"
    # The step's own variables win over the job's; MASTER_ADDR and MASTER_PORT, then --dist-url, over the defaults.
    step = srun_env(0, 8, 4, 0, 0, SLURM_STEP_NUM_TASKS="2", SLURM_STEP_NUM_NODES="1", SLURM_JOB_NODELIST="x[1-4]")
    assert (detect(step).world_size, detect(step).local_world_size, detect(step).init_method) == (2, 2, "tcp://node01:23456")
    assert detect(dict(step, MASTER_ADDR="10.0.0.7", MASTER_PORT="29555")).init_method == "tcp://10.0.0.7:29555"
    assert detect(step, dist_url="tcp://head:29001").init_method == "tcp://head:29001"


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"RANK": "0", "WORLD_SIZE": "2"},  # torch's variables alone: only with --dist-url env://
        srun_env(0, 1, 1, 0, 0),  # one srun task: its --num-gpus spawns the processes
        {k: v for k, v in srun_env(0, 8, 1, 0, 0).items() if k != "SLURM_STEP_ID"},  # the batch script of sbatch --ntasks 8
    ],
    ids=["plain", "rank-without-env-url", "one-srun-task", "sbatch-script"],
)
def test_processes_that_no_launcher_started_spawn_their_own(env):
    assert detect(env) is None
    assert detect(env, num_gpus=8) is None


@pytest.mark.parametrize(
    "env, flags, message",
    [
        (TORCHRUN_ENV, {"num_gpus": 2}, "torchrun started this process as rank 3 of 4, so it spawns none: drop --num-gpus 2 (torchrun --nproc-per-node"),
        (TORCHRUN_ENV, {"num_machines": 2}, "torchrun started this process as rank 3 of 4, so it spawns none: drop --num-machines 2"),
        (TORCHRUN_ENV, {"dist_url": "tcp://127.0.0.1:29500"}, "torchrun started this process, so the processes meet at its env:// rendezvous; drop --dist-url tcp://127.0.0.1:29500"),
        (srun_env(1, 2, 2, 1, 0), {"machine_rank": 1}, "srun started this process as rank 1 of 2, so it spawns none: drop --machine-rank 1 (srun --ntasks-per-node"),
        (srun_env(1, 2, 2, 1, 0), {"dist_url": "auto"}, "srun started this process: --dist-url must be tcp://HOST:PORT of the first task's node, or left out, got auto"),
        ({"RANK": "0"}, {"dist_url": "env://"}, "--dist-url env://: the environment lacks WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT;"),
        (dict(TORCHRUN_ENV, LOCAL_RANK="0"), {}, "torchrun: RANK=3, WORLD_SIZE=4, LOCAL_RANK=0, LOCAL_WORLD_SIZE=2 is not a rank of a run with the same number of processes on every node"),
        (dict(TORCHRUN_ENV, GROUP_RANK="0"), {}, "torchrun: RANK=3 with LOCAL_WORLD_SIZE=2 is not on node GROUP_RANK=0"),
        (dict(TORCHRUN_ENV, MASTER_PORT="http"), {}, "the environment variable MASTER_PORT must be a whole number, got 'http'"),
        (srun_env(1, 3, 2, 0, 1), {}, "srun started 3 tasks on 2 nodes: Detectron2's per-machine process groups need the same number on every node"),
        (srun_env(1, 4, 2, 1, 0), {}, "srun: SLURM_PROCID=1, SLURM_NTASKS=4, SLURM_LOCALID=0, SLURM_NNODES=2 is not a rank"),  # --distribution=cyclic
        (srun_env(1, 2, 2, 0, 0), {}, "srun placed task 1 on node 0, not node 1"),
        (srun_env(0, 2, 2, 0, 0, nodelist="node[1-"), {}, "cannot read the SLURM node list 'node[1-': unbalanced brackets"),
    ],
    ids=[
        "torchrun-num-gpus", "torchrun-num-machines", "torchrun-dist-url", "srun-machine-rank", "srun-dist-url-auto",
        "env-url-missing", "torchrun-ranks-not-by-node", "torchrun-group-rank", "bad-port", "srun-uneven", "srun-cyclic",
        "srun-node-id", "srun-bad-nodelist",
    ],
)
def test_launcher_mistakes_are_one_line(env, flags, message):
    with pytest.raises(UserError) as error:
        detect(env, **flags)
    assert str(error.value).startswith(message), str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "opts, message",
    [
        (["SOLVER.IMS_PER_BATCH", "6"], "SOLVER.IMS_PER_BATCH=6 is not divisible by the 4 processes"),
        (["MODEL.MOMENTUM_CONTRAST.BN_GROUP_SIZE", "2", "SOLVER.IMS_PER_BATCH", "4"], "MODEL.MOMENTUM_CONTRAST.BN_GROUP_SIZE=2 must divide the 1 images each of the 4 processes gets"),
    ],
)
def test_config_mistakes_under_torchrun_are_found_before_the_processes_meet(monkeypatch, tmp_path, opts, message):
    for name, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(name, value)

    def meet(*args):
        raise AssertionError("the processes would meet at node01:29500")

    monkeypatch.setattr(launch, "join_process_group", meet)
    args = train_net.parse_args(["--config-file", DEMO_CONFIG, *TINY_OPTS, *opts, "OUTPUT_DIR", str(tmp_path)])
    with pytest.raises(UserError, match="^" + message.replace(".", r"\.")):
        train_net.run(args)


# ---------------------------------------------------------------------------------------------------
# Processes spawned for --num-gpus end with their launcher


def _forked(child):
    """Run ``child()`` in a forked process that never returns into pytest; return its pid."""
    pid = os.fork()
    if pid == 0:
        try:
            child()
        finally:
            os._exit(0)
    return pid


def test_a_process_whose_launcher_is_already_gone_ends_at_once():
    """The race: the launcher died before the request, so the kernel will never signal; the process ends itself."""
    def child():
        os.environ[LAUNCHER_PID_VARIABLE] = str(os.getppid() + 1_000_000)  # not this process's parent
        end_with_launcher()
        os._exit(3)  # not reached

    _, status = os.waitpid(_forked(child), 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_a_process_ends_when_its_launcher_is_killed():
    """A "launcher" forks two processes, one of which asks to end with it; `kill -9` of the launcher ends
    that one, while the other (the control: what torch's spawn leaves after training has begun) lives on."""
    ready_read, ready_write = os.pipe()

    def launcher():
        os.environ[LAUNCHER_PID_VARIABLE] = str(os.getpid())

        def spawned(role):
            if role == "asking":
                end_with_launcher()
            os.write(ready_write, f"{role} {os.getpid()} {LAUNCHER_PID_VARIABLE in os.environ}\n".encode())
            time.sleep(60)

        _forked(lambda: spawned("asking"))
        _forked(lambda: spawned("control"))
        time.sleep(60)

    launcher_pid = _forked(launcher)
    os.close(ready_write)
    with os.fdopen(ready_read) as ready:
        reports = {role: (int(pid), variable) for role, pid, variable in (ready.readline().split() for _ in range(2))}
    (asking, variable_left), (control, _) = reports["asking"], reports["control"]
    try:
        # Processes the asking one starts would not take its launcher for theirs.
        assert variable_left == "False"
        os.kill(launcher_pid, signal.SIGKILL)
        os.waitpid(launcher_pid, 0)
        assert wait_until_gone([asking], 5), f"process {asking} outlived its launcher"
        assert is_running(control)
    finally:
        for pid in (asking, control):
            if is_running(pid):
                os.kill(pid, signal.SIGKILL)


def wait_until_gone(pids, seconds):
    """True once none of ``pids`` runs (a zombie no longer runs; its new parent reaps it when it will)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(is_running(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


def is_running(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False



LEAVE_SCRIPT = """
import os, sys
from detectron2.utils import comm
from vader_d2.engine.launchers import LaunchedProcess, join_process_group, leave_process_group

def gloo_threads():
    names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
    return sorted(n for n in names if n.startswith(("gloo", "pt_")))

init = f"tcp://127.0.0.1:{sys.argv[1]}"
join_process_group(LaunchedProcess("srun", 0, 1, 0, 1, init, init, ""), use_cuda=False, timeout=None)
comm._get_global_gloo_group()  # what comm.all_gather makes in a run of several processes
print(bool(gloo_threads()), comm.get_local_size())
leave_process_group()
print(gloo_threads())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the thread names in /proc")
def test_leaving_the_process_group_ends_its_threads():
    """Gloo threads still running when the interpreter exits can abort a process after its last line."""
    stdout = run_tool("-c", LEAVE_SCRIPT, str(free_port()), timeout=120)
    assert stdout.split("\n")[:2] == ["True 1", "[]"]


# ---------------------------------------------------------------------------------------------------
# Whole runs (slow: two training processes each)

RUN_OPTS = [*TINY_OPTS, "SOLVER.MAX_ITER", "3", "SEED", "3"]


def srun_tasks(args, tmp_path, ranks=(0, 1), port=None, **variables):
    """Simulated ``srun --nodes 2 --ntasks-per-node 1 tools/train_net.py ARGS`` on this machine: one process per
    rank in ``ranks`` with the variables srun sets, both "nodes" named localhost. Returns (returncode, stdout,
    stderr) per rank."""
    port = port or free_port()
    processes = {}
    for rank in ranks:
        env = srun_env(rank, 2, 2, rank, 0, nodelist="localhost,localhost", MASTER_PORT=str(port), **variables)
        with open(tmp_path / f"task{rank}.out", "w") as out, open(tmp_path / f"task{rank}.err", "w") as err:
            processes[rank] = subprocess.Popen(
                [sys.executable, "tools/train_net.py", *args], cwd=REPO, env=train_net_env(env), stdout=out, stderr=err
            )
    results = {}
    for rank, process in processes.items():
        process.wait(timeout=300)
        results[rank] = subprocess.CompletedProcess(
            process.args, process.returncode, (tmp_path / f"task{rank}.out").read_text(), (tmp_path / f"task{rank}.err").read_text()
        )
    return results


def final_state(output_dir):
    """Every tensor of model_final.pth that training computes: weights, queue, key encoder, SGD momenta."""
    checkpoint = torch.load(os.path.join(output_dir, "model_final.pth"), map_location="cpu", weights_only=False)
    state = {f"model.{k}": v for k, v in checkpoint["model"].items()}
    for index, buffers in checkpoint["trainer"]["_trainer"]["optimizer"]["state"].items():
        state.update({f"optimizer.{index}.{k}": v for k, v in buffers.items()})
    return checkpoint["iteration"], state


def assert_identical(run, reference):
    (iteration, state), (expected_iteration, expected) = final_state(run), final_state(reference)
    assert iteration == expected_iteration == 2
    assert state.keys() == expected.keys() and len(state) > 400
    different = [name for name in expected if not torch.equal(state[name], expected[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def two_gpu_run(tmp_path_factory):
    """The reference: `--num-gpus 2` (Detectron2's launch, gloo) for 3 steps."""
    output_dir = tmp_path_factory.mktemp("num_gpus_2")
    result = run_train_net("--num-gpus", "2", "--dist-url", "auto", "--config-file", DEMO_CONFIG, *RUN_OPTS, "OUTPUT_DIR", str(output_dir))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output_dir


@pytest.mark.slow
def test_torchrun_computes_what_num_gpus_computes(two_gpu_run, tmp_path):
    result = run_python(
        "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "tools/train_net.py",
        "--config-file", DEMO_CONFIG, *RUN_OPTS, "OUTPUT_DIR", str(tmp_path), timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Rank of current process: 0. World size: 2" in result.stdout + result.stderr
    assert_identical(tmp_path, two_gpu_run)
    assert not (tmp_path / ".vader_d2.lock").exists()  # rank 0 released it at the end


@pytest.mark.slow
def test_srun_tasks_on_two_nodes_compute_what_num_gpus_computes(two_gpu_run, tmp_path):
    output_dir = tmp_path / "run"
    results = srun_tasks(["--config-file", DEMO_CONFIG, *RUN_OPTS, "OUTPUT_DIR", str(output_dir)], tmp_path)
    for rank, result in results.items():
        assert result.returncode == 0, (rank, result.stdout[-3000:], result.stderr[-3000:])
    assert "Rank of current process: 0. World size: 2" in results[0].stdout
    assert (output_dir / "log.txt.rank1").exists()
    assert_identical(output_dir, two_gpu_run)


@pytest.mark.slow
@pytest.mark.parametrize("present", [0, 1])
def test_a_missing_srun_task_ends_with_one_line_within_the_timeout(tmp_path, present):
    port = free_port()
    started = time.monotonic()
    result = srun_tasks(
        ["--dist-timeout", "5", "--config-file", DEMO_CONFIG, *RUN_OPTS, "OUTPUT_DIR", str(tmp_path / "run")], tmp_path,
        ranks=(present,), port=port,
    )[present]
    line = single_error_line(result)
    assert line == (
        f"vader_d2: the 2 processes of the run at localhost:{port} started by srun (this is process {present}, node "
        f"{present} of 2) did not all arrive within --dist-timeout 5 s; check that srun started all 2 tasks, that "
        f"localhost:{port} can be reached from every node (firewall), and that no other job uses the port (choose "
        "another with MASTER_PORT)"
    )
    assert time.monotonic() - started < 60
    assert not (tmp_path / "run" / ".vader_d2.lock").exists()  # rank 0 takes the folder only once all have met


@pytest.mark.slow
def test_a_folder_in_use_ends_every_srun_task_with_one_line(tmp_path):
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    lock = OutputDirLock(str(output_dir)).acquire()
    try:
        results = srun_tasks(["--config-file", DEMO_CONFIG, *RUN_OPTS, "OUTPUT_DIR", str(output_dir)], tmp_path)
    finally:
        lock.release()
    lines = {single_error_line(result) for result in results.values()}
    assert len(lines) == 1
    assert f"OUTPUT_DIR '{output_dir}' is in use by the run with PID {os.getpid()}" in lines.pop()
    assert not (output_dir / "log.txt").exists() and not (output_dir / "log.txt.rank1").exists()


def children_of(pid):
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        children.append(int(entry))
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
    return children


@pytest.mark.slow
def test_kill_9_of_the_launcher_ends_its_processes_and_frees_the_folder(tmp_path):
    output_dir = tmp_path / "run"
    log = tmp_path / "launcher.log"
    with open(log, "w") as out:
        launcher = subprocess.Popen(
            [sys.executable, "tools/train_net.py", "--num-gpus", "2", "--dist-url", "auto", "--config-file", DEMO_CONFIG,
             *TINY_OPTS, "SOLVER.MAX_ITER", "100000", "OUTPUT_DIR", str(output_dir)],
            cwd=REPO, env=train_net_env(), stdout=out, stderr=subprocess.STDOUT,
        )
    children = []
    try:
        deadline = time.monotonic() + 240
        while "Starting training from iteration 0" not in (log.read_text() if log.exists() else ""):
            assert launcher.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        children = children_of(launcher.pid)
        assert len(children) >= 2  # the two training processes (and multiprocessing's resource tracker)
        with pytest.raises(UserError, match="is in use by"):
            OutputDirLock(str(output_dir)).acquire()
        launcher.kill()
        launcher.wait()
        assert wait_until_gone(children, 10), [pid for pid in children if is_running(pid)]
        lock = OutputDirLock(str(output_dir)).acquire()  # a stale lock file, taken over
        assert lock.previous_holder["pid"] == launcher.pid
        lock.release()
    finally:
        launcher.kill()
        for pid in children:
            if is_running(pid):
                os.kill(pid, signal.SIGKILL)
