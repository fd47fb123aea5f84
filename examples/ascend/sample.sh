#!/usr/bin/env bash
# Video sampling with `osp sample` (TP x CP groups, prompts spread over the groups) on Ascend NPUs (torchrun, HCCL),
# one node or many. Run the same command on every node; only NODE_RANK changes:
#   MODEL=/path/to/pipeline OUTPUT=out/video.mp4 TP=2 bash examples/ascend/sample.sh --prompt-file p.txt
# MODEL (pipeline folder) or PRESET (tiny-osp15-random, ...), OUTPUT (default samples/video.mp4), TP and CP (default
# 1); the arguments go to `osp sample`.
# NPUS_PER_NODE (default 8) processes per node; NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT (defaults 1, 0,
# 127.0.0.1, 6000). Sets MindSpeed-MM's environment (TASK_QUEUE_ENABLE=2, CPU_AFFINITY_CONF=1,
# HCCL_CONNECT_TIMEOUT=1800, ...). CANN: ASCEND_HOME_PATH/ASCEND_TOOLKIT_HOME already set, or ASCEND_SET_ENV
# (default /usr/local/Ascend/ascend-toolkit/set_env.sh) is sourced; otherwise the script stops. DRY_RUN=1 prints the
# environment and the exact commands; OSP_LAUNCH_DEVICE=cpu runs on CPU (gloo; tests). Log:
# LOG_DIR/node_<NODE_RANK>.log. All the variables: docs/launch.md.
set -euo pipefail
# shellcheck source=../launch_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../launch_common.sh"
osp_launch ascend examples/ascend/sample.sh
osp_job_sample "$@"
