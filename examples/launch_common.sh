# shellcheck shell=bash
# Shared logic of the multi-node launchers in examples/ascend, examples/cuda and examples/slurm. Sourced by them,
# never run on its own. Every variable is described in docs/launch.md; in short:
#
#   NPUS_PER_NODE | GPUS_PER_NODE   processes per node (synonyms; default 8)
#   NNODES NODE_RANK MASTER_ADDR MASTER_PORT   the nodes (defaults 1, 0, 127.0.0.1, 6000; slurm derives them)
#   OSP_LAUNCH_DEVICE   npu | cuda | cpu (cpu: gloo, no CANN/NVIDIA checks; for tests)  [slurm: auto]
#   DRY_RUN=1           print the environment and the exact commands, start nothing, exit 0
#   LOG_DIR             per-node logs LOG_DIR/node_<NODE_RANK>.log (appended; default OUTPUT/logs for training)
#   PYTHON              the interpreter (default: python, else python3)
#   ASCEND_SET_ENV      CANN's set_env.sh (default /usr/local/Ascend/ascend-toolkit/set_env.sh)
#
# The per-job scripts call `osp_launch <ascend|cuda|slurm> <script path in the repo>` and then one of
# `osp_job_train <default config> "$@"`, `osp_job_sample "$@"`, `osp_job_extract "$@"`.

OSP_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OSP_ENV_SET=()   # names of the variables this library exported (printed before the command)

osp_say() { printf '[osp-launch] %s\n' "$*"; }

osp_quote() {   # the words as one shell command line (quoted only where needed)
    local word out=() q="'\\''"
    for word in "$@"; do
        if [[ $word =~ ^[][A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=("$word"); else out+=("'${word//\'/$q}'"); fi
    done
    printf '%s\n' "${out[*]}"
}
osp_die() { printf '[osp-launch] error: %s\n' "$*" >&2; exit 1; }

osp_export() {   # osp_export NAME DEFAULT: keep the caller's value when set, else DEFAULT; export and remember
    local name=$1
    if [[ -z ${!name+x} ]]; then printf -v "$name" '%s' "$2"; fi
    # shellcheck disable=SC2163
    export "$name"
    OSP_ENV_SET+=("$name")
}

osp_int() {      # osp_int NAME MIN: the variable holds an integer >= MIN
    local name=$1 value=${!1}
    if ! [[ $value =~ ^[0-9]+$ ]] || (( value < $2 )); then osp_die "$name=$value: expected an integer >= $2"; fi
}

# ------------------------------------------------------------------------------------------------ slurm
osp_first_host() {   # the first host name of a Slurm node list, e.g. "gpu[003-004,010],cpu1" -> gpu003
    local list=$1 first
    if command -v scontrol >/dev/null 2>&1; then
        first=$(scontrol show hostnames "$list" 2>/dev/null | head -n 1) || first=
        if [[ -n $first ]]; then printf '%s\n' "$first"; return; fi
    fi
    # fallback without scontrol: the first entry of the list (commas inside brackets do not split), each bracketed
    # set replaced by its first value
    local i ch depth=0 range
    first=
    for (( i = 0; i < ${#list}; i++ )); do
        ch=${list:i:1}
        if [[ $ch == "[" ]]; then depth=$(( depth + 1 )); elif [[ $ch == "]" ]]; then depth=$(( depth - 1 )); fi
        if [[ $ch == "," ]] && (( depth == 0 )); then break; fi
        first+=$ch
    done
    while [[ $first == *"["*"]"* ]]; do
        range=${first#*\[}
        range=${range%%\]*}
        range=${range%%,*}
        first=${first%%\[*}${range%%-*}${first#*\]}
    done
    printf '%s\n' "$first"
}

osp_slurm_vars() {   # NNODES NODE_RANK MASTER_ADDR MASTER_PORT from the job's SLURM_* variables
    [[ -n ${SLURM_JOB_ID:-} ]] || osp_die "SLURM_JOB_ID is unset: not inside a Slurm job (submit with sbatch;" \
        "to run one node's part by hand set SLURM_JOB_ID, SLURM_JOB_NUM_NODES, SLURM_NODEID," \
        "SLURM_JOB_NODELIST and OSP_SLURM_STEP=1)"
    # sbatch copies the submitting shell's environment: the allocation's facts win over stale exports.
    NNODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-}}
    [[ -n $NNODES ]] || osp_die "SLURM_JOB_NUM_NODES (or SLURM_NNODES) is unset"
    NODE_RANK=${SLURM_NODEID:-0}
    local nodelist=${SLURM_JOB_NODELIST:-${SLURM_NODELIST:-}}
    [[ -n $nodelist ]] || osp_die "SLURM_JOB_NODELIST (or SLURM_NODELIST) is unset"
    MASTER_ADDR=$(osp_first_host "$nodelist")
    osp_int SLURM_JOB_ID 0
    MASTER_PORT=${OSP_MASTER_PORT:-$(( 20000 + SLURM_JOB_ID % 20000 ))}   # per job: jobs sharing a node differ
}

osp_slurm_dispatch() {   # in the batch step: srun this script once per node; in the per-node task: return
    local script=$1; shift
    [[ ${OSP_SLURM_STEP:-} == 1 ]] && return 0
    command -v srun >/dev/null 2>&1 || osp_die "srun not found; to run this node's part of the job directly" \
        "(NODE_RANK=SLURM_NODEID), set OSP_SLURM_STEP=1"
    # shellcheck disable=SC2054  # the comma belongs to --export's value
    local cmd=(srun --nodes="$NNODES" --ntasks="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1
               --export=ALL,OSP_SLURM_STEP=1)
    if [[ -n ${SLURM_CPUS_PER_TASK:-} ]]; then cmd+=(--cpus-per-task="$SLURM_CPUS_PER_TASK"); fi
    cmd+=(bash "$OSP_ROOT/$script" "$@")
    osp_say "slurm job ${SLURM_JOB_ID}: $NNODES node(s) from ${SLURM_JOB_NODELIST:-${SLURM_NODELIST:-}}," \
        "master $MASTER_ADDR:$MASTER_PORT; one task per node:"
    osp_quote "${cmd[@]}"
    if [[ ${DRY_RUN:-0} == 1 ]]; then
        osp_say "DRY_RUN=1: srun not started; node ${NODE_RANK}'s task would run:"
        return 0
    fi
    exec "${cmd[@]}"   # srun forwards SIGTERM to the tasks (see #SBATCH --signal in the scripts)
}

# ------------------------------------------------------------------------------------------------ devices
osp_cann_found() {   # the CANN environment is set, or its set_env.sh exists
    [[ -n ${ASCEND_HOME_PATH:-}${ASCEND_TOOLKIT_HOME:-} || -f $ASCEND_SET_ENV ]]
}

osp_setup_npu() {
    if [[ -n ${ASCEND_HOME_PATH:-}${ASCEND_TOOLKIT_HOME:-} ]]; then
        osp_say "CANN environment already set (ASCEND_HOME_PATH=${ASCEND_HOME_PATH:-}" \
            "ASCEND_TOOLKIT_HOME=${ASCEND_TOOLKIT_HOME:-})"
    elif [[ -f $ASCEND_SET_ENV ]]; then
        osp_say "source $ASCEND_SET_ENV"
        set +u   # CANN's set_env.sh reads unset variables
        # shellcheck disable=SC1090
        source "$ASCEND_SET_ENV"
        set -u
        [[ -n ${ASCEND_HOME_PATH:-}${ASCEND_TOOLKIT_HOME:-} ]] || osp_die "$ASCEND_SET_ENV set neither" \
            "ASCEND_HOME_PATH nor ASCEND_TOOLKIT_HOME: is it CANN's set_env.sh?"
    else
        osp_die "CANN environment not found: ASCEND_HOME_PATH and ASCEND_TOOLKIT_HOME are unset and" \
            "$ASCEND_SET_ENV does not exist. Source CANN's set_env.sh first" \
            "(source /usr/local/Ascend/ascend-toolkit/set_env.sh), or set ASCEND_SET_ENV=/path/to/set_env.sh;" \
            "OSP_LAUNCH_DEVICE=cpu runs on CPU (gloo) instead"
    fi
    # MindSpeed-MM's launcher environment (examples/opensoraplan1.5/pretrain.sh)
    osp_export CUDA_DEVICE_MAX_CONNECTIONS 1
    osp_export TASK_QUEUE_ENABLE 2
    osp_export MULTI_STREAM_MEMORY_REUSE 1
    osp_export PYTORCH_NPU_ALLOC_CONF expandable_segments:True
    osp_export COMBINED_ENABLE 1
    osp_export CPU_AFFINITY_CONF 1      # torch_npu binds each process's threads to the cores near its NPU
    osp_export HCCL_CONNECT_TIMEOUT 1800
    if [[ -n ${HCCL_EXEC_TIMEOUT:-} ]]; then osp_export HCCL_EXEC_TIMEOUT "$HCCL_EXEC_TIMEOUT"; fi
}

osp_setup_cuda() {
    command -v nvidia-smi >/dev/null 2>&1 || osp_die "no NVIDIA driver found (nvidia-smi is not on PATH);" \
        "run on a GPU node, or OSP_LAUNCH_DEVICE=cpu to run on CPU (gloo) instead"
    osp_export CUDA_DEVICE_MAX_CONNECTIONS 1        # megatron's TP/SP overlap needs in-order kernel launches
    osp_export TORCH_NCCL_ASYNC_ERROR_HANDLING 1    # a failed/timed-out collective aborts instead of hanging
    osp_export PYTORCH_CUDA_ALLOC_CONF expandable_segments:True
}

osp_setup_cpu() {
    osp_export OSP_DEVICE cpu   # the package then uses gloo and CPU tensors
    case $MASTER_ADDR in
        127.*|localhost|::1) osp_export GLOO_SOCKET_IFNAME lo ;;   # localhost "nodes": gloo on the loopback
    esac
}

# ------------------------------------------------------------------------------------------------ setup
osp_launch() {   # osp_launch ascend|cuda|slurm SCRIPT_PATH_IN_REPO [args for the slurm re-run]
    OSP_PLATFORM=$1 OSP_SCRIPT=$2
    shift 2
    OSP_JOB_NAME=$(basename "$OSP_SCRIPT" .sh)
    ASCEND_SET_ENV=${ASCEND_SET_ENV:-/usr/local/Ascend/ascend-toolkit/set_env.sh}

    local device=${OSP_LAUNCH_DEVICE:-}
    case $OSP_PLATFORM in
        ascend) device=${device:-npu}; [[ $device == npu || $device == cpu ]] || osp_die \
                    "OSP_LAUNCH_DEVICE=$device: examples/ascend runs npu (or cpu); use examples/cuda for GPUs" ;;
        cuda)   device=${device:-cuda}; [[ $device == cuda || $device == cpu ]] || osp_die \
                    "OSP_LAUNCH_DEVICE=$device: examples/cuda runs cuda (or cpu); use examples/ascend for NPUs" ;;
        slurm)  device=${device:-auto}
                if [[ $device == auto ]]; then
                    if osp_cann_found; then device=npu
                    elif command -v nvidia-smi >/dev/null 2>&1; then device=cuda
                    else osp_die "cannot tell the device: no CANN environment ($ASCEND_SET_ENV) and no" \
                        "nvidia-smi; set OSP_LAUNCH_DEVICE=npu, cuda or cpu"
                    fi
                fi
                [[ $device == npu || $device == cuda || $device == cpu ]] || osp_die \
                    "OSP_LAUNCH_DEVICE=$device: expected auto, npu, cuda or cpu" ;;
        *)      osp_die "osp_launch: unknown platform $OSP_PLATFORM" ;;
    esac
    OSP_LAUNCH_DEVICE=$device

    # processes per node: NPUS_PER_NODE and GPUS_PER_NODE are synonyms
    if [[ -n ${NPUS_PER_NODE:-} && -n ${GPUS_PER_NODE:-} && $NPUS_PER_NODE != "$GPUS_PER_NODE" ]]; then
        osp_die "NPUS_PER_NODE=$NPUS_PER_NODE and GPUS_PER_NODE=$GPUS_PER_NODE differ (they are synonyms: set one)"
    fi
    NPROC_PER_NODE=${NPUS_PER_NODE:-${GPUS_PER_NODE:-8}}

    if [[ $OSP_PLATFORM == slurm ]]; then
        osp_slurm_vars
    else
        NNODES=${NNODES:-1}
        NODE_RANK=${NODE_RANK:-0}
        MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
        MASTER_PORT=${MASTER_PORT:-6000}
    fi
    osp_int NPROC_PER_NODE 1; osp_int NNODES 1; osp_int NODE_RANK 0; osp_int MASTER_PORT 1
    (( MASTER_PORT < 65536 )) || osp_die "MASTER_PORT=$MASTER_PORT: not a TCP port"
    (( NODE_RANK < NNODES )) || osp_die "NODE_RANK=$NODE_RANK must be below NNODES=$NNODES"
    WORLD_SIZE=$(( NPROC_PER_NODE * NNODES ))   # not exported: torchrun gives each worker its own

    if [[ $OSP_PLATFORM == slurm ]]; then osp_slurm_dispatch "$OSP_SCRIPT" "$@"; fi

    if [[ -z ${PYTHON:-} ]]; then
        if command -v python >/dev/null 2>&1; then PYTHON=python; else PYTHON=python3; fi
    fi
    case $device in
        npu) osp_setup_npu ;;
        cuda) osp_setup_cuda ;;
        cpu) osp_setup_cpu ;;
    esac
    # torchrun, when signalled itself (Ctrl-C, scancel), passes the signal to its workers and SIGKILLs them after
    # this many seconds (torch's default: 30): time to finish the step and write the checkpoint
    osp_export TORCH_ELASTIC_SHUTDOWN_TIMEOUT 300
    case ":${PYTHONPATH:-}:" in   # the package importable from any working directory
        *":$OSP_ROOT:"*) ;;
        *) PYTHONPATH=$OSP_ROOT${PYTHONPATH:+:$PYTHONPATH} ;;
    esac
    export PYTHONPATH
    OSP_ENV_SET+=(PYTHONPATH)

    osp_say "$OSP_JOB_NAME ($OSP_PLATFORM launcher) on $device: node $NODE_RANK of $NNODES"
    osp_say "NNODES=$NNODES NODE_RANK=$NODE_RANK NPROC_PER_NODE=$NPROC_PER_NODE" \
        "MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT WORLD_SIZE=$WORLD_SIZE"
}

osp_torchrun() {  # the torchrun prefix (static rendezvous at MASTER_ADDR:MASTER_PORT) into OSP_CMD
    OSP_CMD=("$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --node_rank="$NODE_RANK"
             --nproc_per_node="$NPROC_PER_NODE" --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT")
    if [[ -n ${NUMA_BINDING:-} ]]; then OSP_CMD+=(--numa-binding="$NUMA_BINDING"); fi
}

# ------------------------------------------------------------------------------------------------ run
osp_forward_term() {   # SIGTERM to the launcher: to the training processes (they finish the step, save, exit 0)
    osp_say "SIGTERM: forwarded to the workers of torchrun (pid $OSP_CHILD)"
    # torchrun itself would SIGKILL its workers 30 s after forwarding: signal the workers, torchrun then sees
    # them exit 0.
    pkill -TERM -P "$OSP_CHILD" 2>/dev/null || kill -TERM "$OSP_CHILD" 2>/dev/null || true
}

osp_run() {   # print the environment and OSP_CMD; run it (output to the terminal and the node's log)
    local log=$LOG_DIR/node_${NODE_RANK}.log name
    osp_say "environment:"
    for name in "${OSP_ENV_SET[@]}"; do osp_quote export "$name=${!name}"; done
    osp_say "log: $log"
    osp_say "command:"
    osp_quote "${OSP_CMD[@]}"
    if [[ ${DRY_RUN:-0} == 1 ]]; then
        osp_say "DRY_RUN=1: nothing started"
        exit 0
    fi

    mkdir -p "$LOG_DIR"
    {
        printf '==== %s %s node %s of %s on %s\n' "$(date '+%F %T')" "$OSP_JOB_NAME" "$NODE_RANK" "$NNODES" \
            "$(hostname 2>/dev/null || echo '?')"
        osp_quote "${OSP_CMD[@]}"
    } >> "$log"
    # torchrun's output goes through a FIFO to tee (SIGINT/SIGTERM ignored, ends at EOF), so every line reaches
    # the log, and the launcher can forward SIGTERM while it waits.
    local tmp rc tee_pid
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/osp-launch.XXXXXX")
    mkfifo "$tmp/out"
    (trap '' INT TERM; exec tee -a "$log" < "$tmp/out") &
    tee_pid=$!
    "${OSP_CMD[@]}" > "$tmp/out" 2>&1 &
    OSP_CHILD=$!
    trap osp_forward_term TERM
    while :; do
        rc=0
        wait "$OSP_CHILD" || rc=$?
        # wait returns > 128 when a trapped signal interrupts it: the job is still running, wait again
        if (( rc > 128 )) && kill -0 "$OSP_CHILD" 2>/dev/null; then continue; fi
        break
    done
    trap - TERM
    wait "$tee_pid" || true
    rm -rf "$tmp"
    if (( rc == 0 )); then
        osp_say "node $NODE_RANK: done" | tee -a "$log"
    else
        osp_say "node $NODE_RANK: torchrun exited with $rc (relaunching the same command on every node resumes" \
            "a training run from its latest checkpoint)" | tee -a "$log" >&2
    fi
    exit "$rc"
}

# ------------------------------------------------------------------------------------------------ jobs
osp_config_summary() {   # data parallel size and global batch of CONFIG with the overrides among the args
    "$PYTHON" - "$CONFIG" "$WORLD_SIZE" "$@" <<'EOF' || osp_say "WARNING: could not read $CONFIG (osp train says why)"
import json, sys
path, world, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
with open(path, encoding="utf-8") as f:
    cfg = json.load(f)
for arg in args:   # section.key=value overrides, as osp train reads them (JSON when it parses, else a string)
    if arg.startswith("-") or "=" not in arg:
        continue
    key, raw = arg.split("=", 1)
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    *parents, last = key.strip().split(".")
    node = cfg
    for p in parents:
        node = node.setdefault(p, {}) if isinstance(node.get(p, {}), dict) else {}
    node[last] = value
par, data = cfg.get("parallel") or {}, cfg.get("data") or {}
tp, pp, cp = (int(par.get(k) or 1) for k in ("tensor", "pipeline", "context"))
gbs, mbs = int(data.get("global_batch_size") or 1), int(data.get("micro_batch_size") or 1)
mp = tp * pp * cp
head = f"[osp-launch] layout TP={tp} PP={pp} CP={cp}"
if world % mp:
    print(f"{head}: WARNING: TP x PP x CP = {mp} does not divide WORLD_SIZE={world}; osp train will refuse it")
    sys.exit(0)
dp = world // mp
line = f"{head} -> data parallel DP={dp}; global batch {gbs}"
if gbs % (mbs * dp):
    line += f": WARNING: not a multiple of micro batch {mbs} x DP {dp}; osp train will refuse it"
else:
    line += f" = micro batch {mbs} x DP {dp} x accumulation {gbs // (mbs * dp)}"
print(line)
EOF
}

osp_job_train() {   # osp_job_train DEFAULT_CONFIG_IN_REPO [osp train args and section.key=value overrides]
    local default=$1; shift
    CONFIG=${CONFIG:-$OSP_ROOT/$default}
    [[ -f $CONFIG ]] || osp_die "CONFIG=$CONFIG: no such file"
    OUTPUT=${OUTPUT:-runs/$(basename "$CONFIG" .json)}
    LOG_DIR=${LOG_DIR:-$OUTPUT/logs}
    osp_say "CONFIG=$CONFIG OUTPUT=$OUTPUT"
    osp_config_summary "$@"
    osp_torchrun
    OSP_CMD+=(-m mindspeed_mm.osp.cli train --config "$CONFIG" --output "$OUTPUT" "$@")
    osp_run
}

osp_job_sample() {   # osp_job_sample [osp sample args: --prompt ..., --steps ...]
    [[ -n ${MODEL:-}${PRESET:-} ]] || osp_die "set MODEL=/path/to/pipeline (a pipeline folder) or" \
        "PRESET=tiny-osp15-random"
    OUTPUT=${OUTPUT:-samples/video.mp4}
    TP=${TP:-1} CP=${CP:-1}
    osp_int TP 1; osp_int CP 1
    LOG_DIR=${LOG_DIR:-logs/$OSP_JOB_NAME}
    if (( WORLD_SIZE % (TP * CP) )); then
        osp_say "WARNING: TP=$TP x CP=$CP does not divide WORLD_SIZE=$WORLD_SIZE; osp sample will refuse it"
    else
        osp_say "TP=$TP CP=$CP -> $(( WORLD_SIZE / (TP * CP) )) group(s) sampling different prompts; OUTPUT=$OUTPUT"
    fi
    osp_torchrun
    OSP_CMD+=(-m mindspeed_mm.osp.cli sample)
    if [[ -n ${MODEL:-} ]]; then OSP_CMD+=(--model "$MODEL"); else OSP_CMD+=(--preset "$PRESET"); fi
    OSP_CMD+=(--output "$OUTPUT" --tp "$TP" --cp "$CP" "$@")
    osp_run
}

osp_job_extract() {   # osp_job_extract [osp data extract args: --text-encoder ..., --dtype bf16 ...]
    : "${DATA:?set DATA to the dataset (data.txt, annotation .json/.jsonl or MindSpeed-MM data.json)}"
    : "${CONFIG:?set CONFIG to the training config (or a buckets JSON) the cache is for}"
    : "${VAE:?set VAE to the WF-VAE folder}"
    : "${CACHE:?set CACHE to the output cache folder}"
    LOG_DIR=${LOG_DIR:-logs/$OSP_JOB_NAME}
    osp_say "DATA=$DATA CONFIG=$CONFIG VAE=$VAE CACHE=$CACHE: each of the $WORLD_SIZE ranks writes its shards"
    osp_torchrun
    OSP_CMD+=(-m mindspeed_mm.osp.cli data extract "$DATA" --config "$CONFIG" --vae "$VAE" --output "$CACHE" "$@")
    osp_run
}
