"""The multi-node launchers (examples/ascend, examples/cuda, examples/slurm; shared logic in examples/launch_common.sh).

Cheap checks: every script passes `bash -n`, prints with DRY_RUN=1 the torchrun command with the expected nodes,
world size and environment, and stops without CANN (Ascend) or without a driver (CUDA). Real runs, on CPU (gloo,
OSP_LAUNCH_DEVICE=cpu) with two "nodes" on 127.0.0.1 started as two concurrent launchers: the Ascend v1.5
launcher trains the tiny SUV; the slurm script, run directly with bash and fake SLURM_* variables, trains the same
job at TP2 (2 x 2 processes), is stopped by SIGTERM to one node's launcher (every rank saves, exits 0) and resumed
at TP1 (2 x 1); a node killed with SIGKILL makes the other one exit non-zero within a bounded time (no hang), and
relaunching both nodes resumes the run to the uninterrupted losses, bit for bit. No process outlives a test.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train_helpers import make_data, metrics

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
LIB = EXAMPLES / "launch_common.sh"
JOBS = ("pretrain_osp15_suv", "pretrain_osp13_t2v", "pretrain_osp13_i2v", "sample", "extract_latents")
SCRIPTS = [EXAMPLES / p / f"{j}.sh" for p in ("ascend", "cuda", "slurm") for j in JOBS]
TRAIN_CONFIG = {"pretrain_osp15_suv": "osp15_suv_t2v", "pretrain_osp13_t2v": "osp13_t2v",
                "pretrain_osp13_i2v": "osp13_i2v"}
# the caller's environment must not leak into the launchers (a real CANN or Slurm job, a set NNODES ...)
LAUNCH_VARS = ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "NPUS_PER_NODE", "GPUS_PER_NODE", "WORLD_SIZE",
               "RANK", "LOCAL_RANK", "OSP_LAUNCH_DEVICE", "OSP_DEVICE", "DRY_RUN", "LOG_DIR", "CONFIG", "OUTPUT",
               "MODEL", "PRESET", "TP", "CP", "DATA", "VAE", "CACHE", "OSP_ROOT", "OSP_MASTER_PORT", "NUMA_BINDING",
               "ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME", "ASCEND_OPP_PATH", "ASCEND_SET_ENV", "GLOO_SOCKET_IFNAME",
               "PYTHON", "OSP_DIST_TIMEOUT", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "CUDA_DEVICE_MAX_CONNECTIONS",
               "TASK_QUEUE_ENABLE", "MULTI_STREAM_MEMORY_REUSE", "PYTORCH_NPU_ALLOC_CONF", "COMBINED_ENABLE",
               "CPU_AFFINITY_CONF", "HCCL_CONNECT_TIMEOUT", "HCCL_EXEC_TIMEOUT", "TORCH_NCCL_ASYNC_ERROR_HANDLING",
               "PYTORCH_CUDA_ALLOC_CONF")


def clean_env(**changes) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith(("SLURM_", "OSP_SLURM"))}
    env.update(PYTHON=sys.executable, OMP_NUM_THREADS="1")
    env.update({k: str(v) for k, v in changes.items()})
    return env


def bash(script: Path, env: dict, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


# ---------------------------------------------------------------------------------------------------- cheap checks
@pytest.mark.parametrize("script", [LIB, EXAMPLES / "ascend" / "extract_latents_ms.sh", *SCRIPTS],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_scripts_parse(script):
    assert script.is_file()
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    if script != LIB:
        assert os.access(script, os.X_OK), f"{script} is not executable"
    if shutil.which("shellcheck"):
        done = subprocess.run(["shellcheck", "-x", "-S", "warning", str(script)], cwd=script.parent,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stdout


@pytest.fixture
def fake_tools(tmp_path) -> dict:
    """A fake CANN set_env.sh and a fake nvidia-smi (the launchers only check that they exist)."""
    set_env = tmp_path / "Ascend" / "set_env.sh"
    set_env.parent.mkdir()
    set_env.write_text(f"export ASCEND_HOME_PATH={tmp_path}/Ascend\nexport LD_LIBRARY_PATH=$LD_LIBRARY_PATH\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: fake'\n")
    smi.chmod(0o755)
    return {"set_env": set_env, "bin": bin_dir}


def job_vars(script: Path, tmp_path: Path) -> dict:
    job = script.stem
    if job == "sample":
        return {"PRESET": "tiny-osp15-random", "OUTPUT": tmp_path / "v.mp4", "TP": 2, "CP": 2}
    if job == "extract_latents":
        return {"DATA": tmp_path / "data.txt", "CONFIG": tmp_path / "buckets.json", "VAE": tmp_path / "vae",
                "CACHE": tmp_path / "cache"}
    return {"OUTPUT": tmp_path / "run"}


def expected_job(script: Path, out: str, world: int) -> None:
    job = script.stem
    if job in TRAIN_CONFIG:
        config = EXAMPLES / "train" / f"{TRAIN_CONFIG[job]}.json"
        assert f"-m mindspeed_mm.osp.cli train --config {config} --output " in out
        values = json.loads(config.read_text())
        layout = values["parallel"]
        dp = world // (layout["tensor"] * layout["pipeline"] * layout["context"])
        assert f"data parallel DP={dp}; global batch {values['data']['global_batch_size']} = micro batch" in out
        assert "steps=3 optimizer.lr=2e-5" in out   # the arguments reach osp train
    elif job == "sample":
        assert "-m mindspeed_mm.osp.cli sample --preset tiny-osp15-random" in out and "--tp 2 --cp 2" in out
        assert f"TP=2 CP=2 -> {world // 4} group(s)" in out
    else:
        assert "-m mindspeed_mm.osp.cli data extract " in out and "--vae " in out


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_dry_run_prints_the_torchrun_command(script, tmp_path, fake_tools):
    platform = script.parent.name
    env = clean_env(DRY_RUN=1, ASCEND_SET_ENV=fake_tools["set_env"], **job_vars(script, tmp_path))
    if platform == "cuda":
        env.update(PATH=f"{fake_tools['bin']}:{env['PATH']}", GPUS_PER_NODE="8")
    else:
        env.update(NPUS_PER_NODE="8")
    if platform == "slurm":   # the per-node task of a 2-node job, as srun starts it
        env.update(SLURM_JOB_ID="4242", SLURM_JOB_NUM_NODES="2", SLURM_NODEID="1",
                   SLURM_JOB_NODELIST="node[07-08]", OSP_SLURM_STEP="1", NNODES="5", MASTER_ADDR="stale")
        addr, port = "node07", 20000 + 4242
    else:
        env.update(NNODES="2", NODE_RANK="1", MASTER_ADDR="10.1.2.3", MASTER_PORT="6123")
        addr, port = "10.1.2.3", 6123
    args = ("steps=3", "optimizer.lr=2e-5") if script.stem in TRAIN_CONFIG else ("--seed", "7")
    done = bash(script, env, *args)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert (f"-m torch.distributed.run --nnodes=2 --node_rank=1 --nproc_per_node=8 --master_addr={addr} "
            f"--master_port={port} -m mindspeed_mm.osp.cli ") in out
    assert "WORLD_SIZE=16" in out and "DRY_RUN=1: nothing started" in out
    expected_job(script, out, 16)
    if platform == "ascend" or platform == "slurm":   # slurm: auto finds the (fake) CANN first
        assert f"source {fake_tools['set_env']}" in out
        for line in ("HCCL_CONNECT_TIMEOUT=1800", "TASK_QUEUE_ENABLE=2", "CPU_AFFINITY_CONF=1",
                     "MULTI_STREAM_MEMORY_REUSE=1", "PYTORCH_NPU_ALLOC_CONF=expandable_segments:True",
                     "COMBINED_ENABLE=1", "CUDA_DEVICE_MAX_CONNECTIONS=1"):
            assert f"export {line}\n" in out
    else:
        for line in ("TORCH_NCCL_ASYNC_ERROR_HANDLING=1", "CUDA_DEVICE_MAX_CONNECTIONS=1"):
            assert f"export {line}\n" in out
    assert "export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=300\n" in out
    assert not (tmp_path / "run").exists()   # nothing written


@pytest.mark.parametrize("job", JOBS)
def test_ascend_without_cann_stops_with_what_to_source(job, tmp_path):
    missing = tmp_path / "no" / "set_env.sh"
    env = clean_env(ASCEND_SET_ENV=missing, **job_vars(EXAMPLES / "ascend" / f"{job}.sh", tmp_path))
    for dry in ("1", "0"):
        done = bash(EXAMPLES / "ascend" / f"{job}.sh", env | {"DRY_RUN": dry})
        assert done.returncode != 0
        assert "source /usr/local/Ascend/ascend-toolkit/set_env.sh" in done.stderr
        assert str(missing) in done.stderr and "torch.distributed.run" not in done.stdout
    # forced onto CPU: no CANN check, gloo
    done = bash(EXAMPLES / "ascend" / f"{job}.sh", env | {"DRY_RUN": "1", "OSP_LAUNCH_DEVICE": "cpu"})
    assert done.returncode == 0, done.stderr
    assert "export OSP_DEVICE=cpu\n" in done.stdout and "HCCL_CONNECT_TIMEOUT" not in done.stdout
    assert "--nnodes=1 --node_rank=0 --nproc_per_node=8 --master_addr=127.0.0.1 --master_port=6000" in done.stdout


@pytest.mark.skipif(Path("/usr/local/Ascend/ascend-toolkit/set_env.sh").exists(),
                    reason="this machine has CANN at the default place")
def test_ascend_default_set_env_location_is_checked(tmp_path):
    done = bash(EXAMPLES / "ascend" / "pretrain_osp15_suv.sh", clean_env(DRY_RUN=1))
    assert done.returncode != 0
    assert "/usr/local/Ascend/ascend-toolkit/set_env.sh does not exist" in done.stderr


def test_cuda_without_driver_stops(tmp_path):
    env = clean_env(DRY_RUN=1, PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin")
    if shutil.which("nvidia-smi", path=env["PATH"]):
        pytest.skip("this machine has nvidia-smi")
    done = bash(EXAMPLES / "cuda" / "pretrain_osp15_suv.sh", env)
    assert done.returncode != 0 and "nvidia-smi" in done.stderr and "OSP_LAUNCH_DEVICE=cpu" in done.stderr


def test_synonyms_and_bad_values(tmp_path):
    script = EXAMPLES / "cuda" / "pretrain_osp15_suv.sh"
    env = clean_env(DRY_RUN=1, OSP_LAUNCH_DEVICE="cpu", OUTPUT=tmp_path / "r")
    done = bash(script, env | {"NPUS_PER_NODE": "4"})   # NPUS_PER_NODE works for the CUDA launchers too
    assert done.returncode == 0 and "--nproc_per_node=4 " in done.stdout
    for bad, message in (({"NPUS_PER_NODE": "4", "GPUS_PER_NODE": "2"}, "differ"),
                         ({"NNODES": "2", "NODE_RANK": "2"}, "NODE_RANK=2 must be below NNODES=2"),
                         ({"NNODES": "two"}, "NNODES=two: expected an integer"),
                         ({"OSP_LAUNCH_DEVICE": "npu"}, "use examples/ascend")):
        done = bash(script, env | bad)
        assert done.returncode != 0 and message in done.stderr, (bad, done.stderr)


@pytest.mark.parametrize("nodelist, first", [("localhost", "localhost"), ("127.0.0.1", "127.0.0.1"),
                                             ("gpu[003-005,010],cpu1", "gpu003"), ("a1,a2", "a1"),
                                             ("rack1-n[9-12]-ib", "rack1-n9-ib"), ("n[01,04]", "n01"),
                                             ("a1,b[1-2]", "a1"), ("r[1-2]-n[3-4],x", "r1-n3")])
def test_slurm_first_host_without_scontrol(nodelist, first):
    env = clean_env(PATH="/usr/bin:/bin")
    if shutil.which("scontrol", path=env["PATH"]):
        pytest.skip("scontrol installed: it gives the first host")
    done = subprocess.run(["bash", "-c", f'source {LIB} && osp_first_host "$1"', "_", nodelist], env=env,
                          capture_output=True, text=True)
    assert done.stdout.strip() == first, done.stderr


def test_slurm_batch_step_runs_one_srun_task_per_node(tmp_path):
    """In the batch step (no OSP_SLURM_STEP) the script hands itself to srun, one task per node."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text('#!/bin/sh\necho "fake srun got: $*"\necho "OSP_SLURM_STEP in env: $OSP_SLURM_STEP"\n')
    (fake / "srun").chmod(0o755)
    env = clean_env(PATH=f"{fake}:{os.environ['PATH']}", OSP_LAUNCH_DEVICE="cpu", SLURM_JOB_ID="77",
                    SLURM_JOB_NUM_NODES="4", SLURM_NODEID="0", SLURM_JOB_NODELIST="n[1-4]",
                    SLURM_CPUS_PER_TASK="32", SLURM_SUBMIT_DIR=ROOT, OUTPUT=tmp_path / "run")
    script = EXAMPLES / "slurm" / "pretrain_osp15_suv.sh"
    done = bash(script, env, "steps=5")
    assert done.returncode == 0, done.stderr
    assert ("srun --nodes=4 --ntasks=4 --ntasks-per-node=1 --kill-on-bad-exit=1 --export=ALL,OSP_SLURM_STEP=1 "
            f"--cpus-per-task=32 bash {script} steps=5") in done.stdout
    assert "fake srun got: --nodes=4 --ntasks=4" in done.stdout and "torch.distributed.run" not in done.stdout
    dry = bash(script, env | {"DRY_RUN": "1"}, "steps=5")   # the dry run also shows node 0's torchrun
    assert dry.returncode == 0 and "fake srun" not in dry.stdout
    assert "--nnodes=4 --node_rank=0 --nproc_per_node=8 --master_addr=n1 --master_port=20077" in dry.stdout
    outside = bash(script, clean_env(OSP_LAUNCH_DEVICE="cpu"))
    assert outside.returncode != 0 and "not inside a Slurm job" in outside.stderr


# ---------------------------------------------------------------------------------------------------- real runs
STEPS = 8
CONFIG = EXAMPLES / "train" / "osp15_suv_tiny.json"


def free_port(low: int = 20000, high: int = 40000) -> int:
    for _ in range(200):
        port = random.randrange(low, high)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process (Linux /proc)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        table[int(entry)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmd)
    return table


def _tree(pid: int) -> list[int]:
    table = _proc_table()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += [c for c, (parent, _) in table.items() if parent == p]
    return out


def kill_node(proc: subprocess.Popen) -> None:
    """SIGKILL a whole "node": the launcher's process group and the groups of all its descendants (torchrun starts
    every worker in a session of its own, so the launcher's group alone would leave the workers running)."""
    groups = set()
    for pid in _tree(proc.pid):
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            pass
    groups.discard(os.getpgrp())
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kill_leftovers(marker: str) -> list[str]:
    """Kill every process whose command line holds `marker` (this test's unique folder); returns what was found."""
    found = [(pid, cmd) for pid, (_, cmd) in _proc_table().items() if marker in cmd and pid != os.getpid()]
    for pid, _ in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return [cmd for _, cmd in found]


class Nodes:
    """Launchers for NNODES "nodes" on 127.0.0.1, started concurrently, each in its own session."""

    def __init__(self, script: Path, env: dict, args: list[str], logs: Path, node_envs: list[dict]):
        self.procs, self.outputs = [], []
        logs.mkdir(parents=True, exist_ok=True)
        for rank, extra in enumerate(node_envs):
            out = open(logs / f"launcher_{rank}_{time.monotonic_ns()}.out", "w")
            self.procs.append(subprocess.Popen(["bash", str(script), *args], cwd=ROOT, env=env | extra,
                                               stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
            out.close()
            self.outputs.append(Path(out.name))

    def wait(self, timeout: float = 480) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                pytest.fail(f"a node did not finish in {timeout} s:\n{self.tail()}")
        return codes

    def tail(self, chars: int = 4000) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-chars:]}" for p in self.outputs)

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:   # still running: its pid (and so its descendants) cannot have been reused
                kill_node(proc)
                proc.wait(timeout=30)


def wait_for_steps(run: Path, steps: int, nodes: Nodes, timeout: float = 480) -> None:
    log = run / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while not (log.is_file() and len(log.read_text().splitlines()) >= steps):
        assert all(p.poll() is None for p in nodes.procs), nodes.tail()
        assert time.monotonic() < deadline, f"no {steps} steps logged in {timeout} s\n{nodes.tail()}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("launch_data"), videos=8)


def train_args(data: str) -> list[str]:
    return [f"data.source={data}", f"steps={STEPS}", "checkpoint.every=2", "checkpoint.keep_last=2",
            "data.global_batch_size=2", "logging.progress=false", "logging.tensorboard=false"]


def two_nodes(script: Path, run: Path, data: str, port: int, **changes) -> Nodes:
    env = clean_env(OSP_LAUNCH_DEVICE="cpu", NPUS_PER_NODE=1, NNODES=2, MASTER_ADDR="127.0.0.1",
                    MASTER_PORT=port, CONFIG=CONFIG, OUTPUT=run, OSP_DIST_TIMEOUT=30, **changes)
    return Nodes(script, env, train_args(data), run.parent / "launchers", [{"NODE_RANK": "0"}, {"NODE_RANK": "1"}])


def same_run(run: Path, whole: list[dict]) -> None:
    resumed = metrics(run)
    assert [e["step"] for e in resumed] == list(range(1, STEPS + 1))
    for key in ("loss", "grad_norm", "lr", "action", "consumed_samples", "epoch"):
        assert [e[key] for e in resumed] == [e[key] for e in whole], key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data):
    """The Ascend v1.5 launcher, 2 nodes x 1 process on 127.0.0.1, CPU: the reference run of the module."""
    run = tmp_path_factory.mktemp("ascend_2nodes") / "run"
    nodes = two_nodes(EXAMPLES / "ascend" / "pretrain_osp15_suv.sh", run, data, free_port())
    try:
        codes = nodes.wait()
    finally:
        nodes.kill()
        leftovers = kill_leftovers(str(run))
    assert codes == [0, 0], nodes.tail()
    assert not leftovers, leftovers
    return {"run": run, "metrics": metrics(run), "nodes": nodes}


def test_ascend_launcher_trains_on_two_localhost_nodes(uninterrupted):
    run = uninterrupted["run"]
    assert [e["step"] for e in uninterrupted["metrics"]] == list(range(1, STEPS + 1))
    assert all(e["consumed_samples"] == 2 * e["step"] for e in uninterrupted["metrics"])
    assert (run / "checkpoints" / "latest").read_text().strip() == str(STEPS)
    assert sorted(p.name for p in (run / "logs").iterdir()) == ["node_0.log", "node_1.log"]
    for rank in (0, 1):
        log = (run / "logs" / f"node_{rank}.log").read_text()
        assert f"pretrain_osp15_suv node {rank} of 2" in log
        assert f"--nnodes=2 --node_rank={rank} --nproc_per_node=1 --master_addr=127.0.0.1" in log
    assert f"osp train: finished {STEPS} steps" in (run / "logs" / "node_0.log").read_text()
    out = uninterrupted["nodes"].tail(100000)
    assert "data parallel DP=2; global batch 2 = micro batch 1 x DP 2 x accumulation 1" in out
    assert "WORLD_SIZE=2" in out


def test_slurm_script_two_nodes_sigterm_then_resume_under_another_layout(uninterrupted, data, tmp_path):
    """The slurm script run directly with bash as each node's srun task, 2 nodes x 2 processes at TP2 (a TP group
    per node, DP across nodes); SIGTERM to node 1's launcher stops every rank after a saved step (exit 0 on both
    nodes); resubmitted as 2 nodes x 1 process (TP1), the run resumes from the TP2 checkpoint and ends with the
    uninterrupted run's losses (to rounding: TP changes the summation order)."""
    run = tmp_path / "run"
    port = free_port()
    slurm = {"SLURM_JOB_ID": port - 20000, "SLURM_JOB_NUM_NODES": 2, "SLURM_JOB_NODELIST": "127.0.0.1",
             "SLURM_SUBMIT_DIR": ROOT, "OSP_SLURM_STEP": 1}
    script = EXAMPLES / "slurm" / "pretrain_osp15_suv.sh"

    def launch(per_node: int, *extra: str) -> Nodes:
        env = clean_env(OSP_LAUNCH_DEVICE="cpu", NPUS_PER_NODE=per_node, CONFIG=CONFIG, OUTPUT=run,
                        OSP_DIST_TIMEOUT=60, **slurm)
        return Nodes(script, env, [*train_args(data), *extra], tmp_path / "launchers",
                     [{"SLURM_NODEID": "0"}, {"SLURM_NODEID": "1"}])

    nodes = launch(2, "parallel.tensor=2")
    try:
        wait_for_steps(run, 2, nodes)
        nodes.procs[1].send_signal(signal.SIGTERM)   # the launcher forwards it to its workers
        codes = nodes.wait(timeout=300)
        assert codes == [0, 0], nodes.tail()
        stopped = metrics(run)[-1]["step"]
        assert stopped < STEPS, "the run ended before the signal"
        assert (run / "checkpoints" / "latest").read_text().strip() == str(stopped)
        assert f"stopped by SIGTERM after step {stopped}" in (run / "logs" / "node_0.log").read_text()
        nodes = launch(1)   # the same job again, one process per node: resumes
        assert nodes.wait() == [0, 0], nodes.tail()
    finally:
        nodes.kill()
        leftovers = kill_leftovers(str(run))
    assert not leftovers, leftovers
    resumed, whole = metrics(run), uninterrupted["metrics"]
    assert [e["step"] for e in resumed] == list(range(1, STEPS + 1))
    for key in ("lr", "action", "consumed_samples", "epoch"):
        assert [e[key] for e in resumed] == [e[key] for e in whole], key
    for key in ("loss", "grad_norm"):
        assert [e[key] for e in resumed] == pytest.approx([e[key] for e in whole], rel=1e-4), key
    log = (run / "logs" / "node_1.log").read_text()
    assert log.count("pretrain_osp15_suv node 1 of 2") == 2   # one log per node, appended by each launch
    for per_node in (2, 1):
        assert (f"--nnodes=2 --node_rank=1 --nproc_per_node={per_node} --master_addr=127.0.0.1 "
                f"--master_port={port}") in log
    print(f"stopped by SIGTERM after step {stopped} at TP2 (2x2), resumed at TP1 (2x1); largest loss difference "
          f"{max(abs(a['loss'] - b['loss']) for a, b in zip(resumed, whole)):.2e}")


def test_killed_node_fails_the_other_in_bounded_time_and_relaunch_resumes(uninterrupted, data, tmp_path):
    run = tmp_path / "run"
    script = EXAMPLES / "ascend" / "pretrain_osp15_suv.sh"
    nodes = two_nodes(script, run, data, free_port())
    try:
        wait_for_steps(run, 3, nodes)
        kill_node(nodes.procs[1])
        killed_at = time.monotonic()
        try:
            code = nodes.procs[0].wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"node 0 still running 120 s after node 1 was killed\n{nodes.tail()}")
        elapsed = time.monotonic() - killed_at
        assert code != 0, nodes.tail()
        assert elapsed < 120
        assert nodes.procs[1].wait(timeout=30) == -signal.SIGKILL
        logged = metrics(run)[-1]["step"]
        assert logged < STEPS, "the run ended before the kill"
        assert not kill_leftovers(str(run)), "processes of the failed run were still running"
        nodes = two_nodes(script, run, data, free_port())   # relaunch both nodes (a fresh port)
        assert nodes.wait() == [0, 0], nodes.tail()
    finally:
        nodes.kill()
        leftovers = kill_leftovers(str(run))
    assert not leftovers, leftovers
    same_run(run, uninterrupted["metrics"])
    print(f"node 0 exited {elapsed:.1f} s after node 1 was killed at step {logged}")
