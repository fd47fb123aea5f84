"""The multi-node launchers (examples/ascend, examples/cuda, examples/slurm; shared logic in examples/launch_common.sh).

Cheap checks: every script passes `bash -n`, prints with DRY_RUN=1 the torchrun command with the expected nodes,
world size and environment, and stops without CANN (Ascend) or without a driver (CUDA).

Real runs, on CPU (gloo, OSP_LAUNCH_DEVICE=cpu) with two "nodes" on 127.0.0.1 started as two concurrent launchers
(the slurm scripts run directly with bash as each node's srun task, with fake SLURM_* variables), every job kind
through a real launcher at least once:
- v1.5 SUV training: the Ascend launcher (2 x 1, 8 steps, the module's reference run); the slurm script at TP2
  (2 x 2), stopped by SIGTERM to one node's launcher (every rank saves, exits 0) and resumed at TP1 (2 x 1) to the
  reference losses;
- v1.3 T2V and I2V training: the CUDA launchers (2 steps: metrics, checkpoint, logs);
- sampling: the Ascend sample.sh, TP=2 across the two nodes (the mp4 and its settings, written once);
- feature extraction: the slurm extract_latents.sh (one manifest, each node's shards, every item readable).
Failures, each bounded in time: a node killed with SIGKILL makes the other one exit non-zero and relaunching both
resumes the run to the reference losses, bit for bit; a hung node (SIGSTOP) makes the other one exit non-zero after
OSP_DIST_TIMEOUT; SIGKILL to one node's torchrun alone takes its workers along (PR_SET_PDEATHSIG,
mindspeed_mm/osp/parallel/lifetime.py, also tested on its own with a fake launcher) and fails the other node at once.
No process outlives a test.
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


def signal_node(proc: subprocess.Popen, sig: int) -> list[int]:
    """Send `sig` to a whole "node": the launcher's process group and the groups of all its descendants (torchrun
    starts every worker in a session of its own, so the launcher's group alone would miss the workers). Returns the
    node's pids."""
    pids, groups = _tree(proc.pid), set()
    for pid in pids:
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            pass
    groups.discard(os.getpgrp())
    for group in groups:
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            pass
    return pids


def kill_node(proc: subprocess.Popen) -> None:
    signal_node(proc, signal.SIGKILL)


def _state(pid: int) -> str:
    """The process's state letter (R, S, T stopped, Z zombie, ...), or "" when it no longer exists."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def alive(pids) -> list[int]:
    return [p for p in pids if _state(p) not in ("", "Z", "X")]


def wait_gone(pids, timeout: float) -> float:
    """Poll until none of `pids` runs (zombies count as gone); returns the seconds it took, or inf."""
    start = time.monotonic()
    while alive(pids):
        if time.monotonic() - start > timeout:
            return float("inf")
        time.sleep(0.02)
    return time.monotonic() - start


def torchrun_and_workers(proc: subprocess.Popen) -> tuple[int, list[int]]:
    """The pid of the node's torchrun (under its launcher) and of torchrun's children, the workers."""
    table = _proc_table()
    runs = [p for p in _tree(proc.pid) if "-m torch.distributed.run " in table.get(p, (0, ""))[1]]
    assert len(runs) == 1, f"expected one torchrun under the launcher, found {runs}"
    return runs[0], [c for c, (parent, _) in table.items() if parent == runs[0]]


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
                pids = signal_node(proc, signal.SIGKILL)
                proc.wait(timeout=30)
                wait_gone(pids, 30)   # SIGKILL takes a moment: kill_leftovers must not find them dying


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


def train_args(data: str, steps: int = STEPS, every: int = 2) -> list[str]:
    return [f"data.source={data}", f"steps={steps}", f"checkpoint.every={every}", "checkpoint.keep_last=2",
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


# ---------------------------------------------------------------------------------------------------- every job kind
# The other launchers, each job kind at least once through a real launcher: 2 "nodes" x 1 process on 127.0.0.1,
# CPU, the shortest run that shows the job's outcome.
NODE_RANKS = [{"NODE_RANK": "0"}, {"NODE_RANK": "1"}]


def localhost_env(**changes) -> dict:
    """The environment of 2 "nodes" x 1 process on 127.0.0.1 (CPU, gloo, a free port); NODE_RANK is per node."""
    return clean_env(OSP_LAUNCH_DEVICE="cpu", NPUS_PER_NODE=1, NNODES=2, MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=free_port(), **changes)


def finish(nodes: Nodes, marker: Path, timeout: float = 240) -> list[int]:
    """Wait for every node; then make sure nothing of the run is left (killing what is, and failing)."""
    try:
        codes = nodes.wait(timeout)
    finally:
        nodes.kill()
        leftovers = kill_leftovers(str(marker))
    assert not leftovers, f"processes left running: {leftovers}"
    return codes


@pytest.mark.parametrize("recipe", ["osp13_t2v", "osp13_i2v"])
def test_cuda_launcher_trains_v13_on_two_localhost_nodes(recipe, data, tmp_path):
    """examples/cuda/pretrain_osp13_{t2v,i2v}.sh on CPU with the tiny v1.3 configs: two steps, one checkpoint."""
    run = tmp_path / "run"
    config = EXAMPLES / "train" / f"{recipe}_tiny.json"
    env = localhost_env(CONFIG=config, OUTPUT=run, OSP_DIST_TIMEOUT=60)
    nodes = Nodes(EXAMPLES / "cuda" / f"pretrain_{recipe}.sh", env, train_args(data, steps=2), tmp_path / "launchers",
                  NODE_RANKS)
    assert finish(nodes, tmp_path) == [0, 0], nodes.tail()
    logged = metrics(run)
    assert [e["step"] for e in logged] == [1, 2], logged
    assert [e["consumed_samples"] for e in logged] == [2, 4]
    assert all(e["action"] == "keep" and 0 < e["loss"] < 10 for e in logged), logged
    assert (run / "checkpoints" / "latest").read_text().strip() == "2"
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["model"]["version"] == "v1.3"
    assert (resolved["diffusion"]["inpaint"] is not None) == (recipe == "osp13_i2v")   # I2V trains with masks
    for rank in (0, 1):
        log = (run / "logs" / f"node_{rank}.log").read_text()
        assert f"pretrain_{recipe} node {rank} of 2" in log and "-m mindspeed_mm.osp.cli train --config " in log
    assert "osp train: finished 2 steps" in (run / "logs" / "node_0.log").read_text()
    assert "data parallel DP=2; global batch 2 = micro batch 1 x DP 2 x accumulation 1" in nodes.tail(100000)


def test_ascend_sample_launcher_tensor_parallel_across_two_nodes(tmp_path):
    """examples/ascend/sample.sh with the tiny v1.5 preset and TP=2 over the 2 "nodes" (one sampling group): the
    video and its settings are written once, by the group's first rank."""
    out = tmp_path / "out" / "video.mp4"
    out.parent.mkdir()
    env = localhost_env(PRESET="tiny-osp15-random", OUTPUT=out, TP=2, LOG_DIR=tmp_path / "logs", OSP_DIST_TIMEOUT=60)
    args = ["--prompt", "a red ball", "--steps", "2", "--num-frames", "9", "--height", "32", "--width", "48",
            "--seed", "3"]
    nodes = Nodes(EXAMPLES / "ascend" / "sample.sh", env, args, tmp_path / "launchers", NODE_RANKS)
    assert finish(nodes, tmp_path) == [0, 0], nodes.tail()
    assert sorted(p.name for p in out.parent.iterdir()) == ["video.json", "video.mp4"]
    assert out.stat().st_size > 1000
    settings = json.loads(out.with_suffix(".json").read_text())
    assert (settings["tp"], settings["cp"], settings["data_parallel"]) == (2, 1, 1)
    assert (settings["preset"], settings["num_frames"], settings["steps"]) == ("tiny-osp15-random", 9, 2)
    assert f"wrote {out} (9 frames 32x48" in (tmp_path / "logs" / "node_0.log").read_text()
    assert "TP=2 CP=1 -> 1 group(s) sampling different prompts" in nodes.tail(100000)


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory) -> Path:
    from mindspeed_mm.osp.vae.model import WFVAE

    import torch
    torch.manual_seed(0)
    return WFVAE.from_preset("tiny_v15").save_pretrained(tmp_path_factory.mktemp("vae") / "wfvae")


def test_slurm_extract_latents_two_nodes_write_one_cache(data, tiny_vae, tmp_path):
    """examples/slurm/extract_latents.sh as each node's srun task (fake SLURM_* variables), 2 nodes x 1 process:
    the 8 videos in 4 shards of 2, shards 0 and 2 from node 0, 1 and 3 from node 1, one manifest."""
    from mindspeed_mm.osp.data.cache import LatentCache, read_manifest, shard_name

    cache = tmp_path / "cache"
    port = free_port()
    env = clean_env(OSP_LAUNCH_DEVICE="cpu", NPUS_PER_NODE=1, SLURM_JOB_ID=port - 20000, SLURM_JOB_NUM_NODES=2,
                    SLURM_JOB_NODELIST="127.0.0.1", SLURM_SUBMIT_DIR=ROOT, OSP_SLURM_STEP=1, DATA=data,
                    CONFIG=CONFIG, VAE=tiny_vae, CACHE=cache, LOG_DIR=tmp_path / "logs", OSP_DIST_TIMEOUT=60)
    nodes = Nodes(EXAMPLES / "slurm" / "extract_latents.sh", env, ["--shard-size", "2"], tmp_path / "launchers",
                  [{"SLURM_NODEID": "0"}, {"SLURM_NODEID": "1"}])
    assert finish(nodes, tmp_path) == [0, 0], nodes.tail()
    manifest = read_manifest(cache)
    assert (manifest["num_kept"], manifest["shard_size"], manifest["num_shards"]) == (8, 2, 4), manifest
    assert sorted(p.name for p in cache.glob("shard-*")) == [shard_name(s) for s in range(4)]
    reader = LatentCache(cache)
    assert all(int(item) in reader for item in reader.items) and len(reader.items) == 8
    for rank in (0, 1):
        log = (tmp_path / "logs" / f"node_{rank}.log").read_text()
        assert f"--nnodes=2 --node_rank={rank} --nproc_per_node=1 --master_addr=127.0.0.1 --master_port={port}" in log
        assert f"rank {rank}/2: wrote 2 shard(s) (4 items)" in log


# ---------------------------------------------------------------------------------------------------- failures
HANG_TIMEOUT = 20   # OSP_DIST_TIMEOUT of the hang test, seconds


def failure_run(tmp_path: Path, data: str, **changes) -> tuple[Path, Nodes]:
    """examples/cuda/pretrain_osp13_t2v.sh, 2 nodes x 1 process, long enough to be interrupted (no checkpoint)."""
    run = tmp_path / "run"
    env = localhost_env(CONFIG=EXAMPLES / "train" / "osp13_t2v_tiny.json", OUTPUT=run, **changes)
    nodes = Nodes(EXAMPLES / "cuda" / "pretrain_osp13_t2v.sh", env, train_args(data, steps=500, every=500),
                  tmp_path / "launchers", NODE_RANKS)
    return run, nodes


def test_hung_node_fails_the_other_within_the_collective_timeout(data, tmp_path):
    """SIGSTOP every process of node 1 mid-run (a hung node, not a dead one: its sockets stay open): node 0's next
    collective times out after OSP_DIST_TIMEOUT (the world group's and megatron's groups' timeout) and node 0
    exits non-zero, instead of waiting gloo's default 30 min. Then the stopped node is killed; nothing is left."""
    run, nodes = failure_run(tmp_path, data, OSP_DIST_TIMEOUT=HANG_TIMEOUT)
    try:
        wait_for_steps(run, 2, nodes)
        stopped = signal_node(nodes.procs[1], signal.SIGSTOP)
        stopped_at = time.monotonic()
        bound = 2 * HANG_TIMEOUT + 30
        try:
            code = nodes.procs[0].wait(timeout=bound)
        except subprocess.TimeoutExpired:
            pytest.fail(f"node 0 still running {bound} s after node 1 hung (OSP_DIST_TIMEOUT={HANG_TIMEOUT})\n"
                        f"{nodes.tail()}")
        elapsed = time.monotonic() - stopped_at
        assert code != 0, nodes.tail()
        assert metrics(run)[-1]["step"] < 500, "the run ended before the stop"
        # node 1 was hung, not dead, all along: node 0 gave up on its own timeout
        assert alive(stopped) and all(_state(p) == "T" for p in alive(stopped)), \
            {p: _state(p) for p in stopped}
        assert f"Timed out waiting {HANG_TIMEOUT * 1000}ms" in (run / "logs" / "node_0.log").read_text(), \
            nodes.tail()
        kill_node(nodes.procs[1])
        assert nodes.procs[1].wait(timeout=30) == -signal.SIGKILL
        assert wait_gone(stopped, 30) < 30, [(p, _state(p)) for p in alive(stopped)]
    finally:
        nodes.kill()
        leftovers = kill_leftovers(str(tmp_path))
    assert not leftovers, f"processes left running: {leftovers}"
    print(f"node 0 exited {elapsed:.1f} s after node 1 was stopped (OSP_DIST_TIMEOUT={HANG_TIMEOUT})")


def test_killed_torchrun_takes_its_workers_and_fails_the_other_node(data, tmp_path):
    """SIGKILL to node 1's torchrun only (not its workers, which run in sessions of their own): the workers get
    SIGKILL from the kernel (PR_SET_PDEATHSIG, parallel/lifetime.py) within moments, so node 0's collectives fail
    and it exits non-zero at once; node 1's launcher reports torchrun's death (137). Nothing is left."""
    run, nodes = failure_run(tmp_path, data, OSP_DIST_TIMEOUT=60)
    try:
        wait_for_steps(run, 2, nodes)
        torchrun, workers = torchrun_and_workers(nodes.procs[1])
        assert len(workers) == 1, workers
        os.kill(torchrun, signal.SIGKILL)
        killed_at = time.monotonic()
        gone = wait_gone(workers, 10)
        assert gone < 10, f"node 1's worker {workers} outlived its torchrun by 10 s (orphaned)\n{nodes.tail()}"
        try:
            code = nodes.procs[0].wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"node 0 still running 60 s after node 1's torchrun was killed\n{nodes.tail()}")
        elapsed = time.monotonic() - killed_at
        assert code != 0, nodes.tail()
        assert nodes.procs[1].wait(timeout=30) == 128 + signal.SIGKILL, nodes.tail()
        assert "torchrun exited with 137" in (run / "logs" / "node_1.log").read_text()
        assert metrics(run)[-1]["step"] < 500, "the run ended before the kill"
    finally:
        nodes.kill()
        leftovers = kill_leftovers(str(tmp_path))
    assert not leftovers, f"processes left running: {leftovers}"
    print(f"node 1's worker gone {gone:.2f} s after its torchrun was killed; node 0 exited after {elapsed:.1f} s")


LIFETIME = ROOT / "mindspeed_mm" / "osp" / "parallel" / "lifetime.py"
# a worker: loads parallel/lifetime.py alone (no torch), records itself, arms, then waits for its parent to die
WORKER = r"""
import importlib.util, os, sys, time
from pathlib import Path
path, out, mode, parent = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
spec = importlib.util.spec_from_file_location("osp_lifetime", path)
lifetime = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lifetime)


def note(name, text):   # atomic: whoever sees the file sees its text
    (out / f".{name}").write_text(text)
    os.replace(out / f".{name}", out / name)


note("pid", str(os.getpid()))
if mode == "orphan":   # the launcher died before the worker got to arm itself
    while os.getppid() == parent:
        time.sleep(0.01)
    note("new_parent", str(os.getppid()))
note("armed", str(lifetime.die_with_launcher()))
time.sleep(0 if mode == "orphan" else 30)
"""
# a launcher: starts the worker in a session of its own (as torchrun does); "orphan": exits at once, else once
# the worker is armed
LAUNCHER = r"""
import os, subprocess, sys, time
from pathlib import Path
worker, path, out, mode = sys.argv[1:5]
subprocess.Popen([sys.executable, "-c", worker, path, out, mode, str(os.getpid())], start_new_session=True)
deadline = time.monotonic() + 20
while mode != "orphan" and not Path(out, "armed").exists() and time.monotonic() < deadline:
    time.sleep(0.01)
os._exit(0)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
@pytest.mark.parametrize("mode", ["armed", "orphan"])
def test_worker_dies_with_its_launcher(mode, tmp_path):
    """parallel/lifetime.die_with_launcher in a fake torchrun worker: armed, it is killed when its launcher exits;
    started by a launcher that is already gone, it kills itself."""
    env = clean_env(TORCHELASTIC_RUN_ID="test", LOCAL_RANK=0)
    done = subprocess.run([sys.executable, "-c", LAUNCHER, WORKER, str(LIFETIME), str(tmp_path), mode], env=env,
                          timeout=60)
    assert done.returncode == 0
    pid_file = tmp_path / "pid"
    deadline = time.monotonic() + 20
    while not pid_file.is_file():
        assert time.monotonic() < deadline, "the worker never started"
        time.sleep(0.01)
    pid = int(pid_file.read_text())
    try:
        gone = wait_gone([pid], 10)
        if mode == "orphan":
            while not (tmp_path / "new_parent").is_file() and alive([pid]):
                time.sleep(0.01)
            adopter = (tmp_path / "new_parent").read_text() if (tmp_path / "new_parent").is_file() else "?"
            if adopter not in ("1", "?") and (tmp_path / "armed").is_file():
                pytest.skip(f"the orphan was adopted by a sub-reaper (pid {adopter}), not init: the documented gap")
            assert not (tmp_path / "armed").is_file(), "an orphaned worker armed itself and ran on"
        else:
            assert (tmp_path / "armed").read_text() == "True"
        assert gone < 10, f"the worker (pid {pid}) outlived its launcher by 10 s"
    finally:
        if alive([pid]):
            os.kill(pid, signal.SIGKILL)


def test_lifetime_is_a_no_op_outside_torchrun_and_reads_the_timeout(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("osp_lifetime_test", LIFETIME)
    lifetime = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lifetime)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert lifetime.die_with_launcher() is False
    for raw, seconds in (("", None), (" 30 ", 30.0), ("0.5", 0.5)):
        monkeypatch.setenv("OSP_DIST_TIMEOUT", raw)
        timeout = lifetime.dist_timeout()
        assert (timeout.total_seconds() if timeout else None) == seconds, raw
    for raw in ("abc", "0", "-5"):
        monkeypatch.setenv("OSP_DIST_TIMEOUT", raw)
        with pytest.raises(ValueError, match="OSP_DIST_TIMEOUT"):
            lifetime.dist_timeout()
