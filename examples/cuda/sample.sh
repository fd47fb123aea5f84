#!/usr/bin/env bash
# Video sampling with `osp sample` (TP x CP groups, prompts spread over the groups) on NVIDIA GPUs (torchrun, NCCL),
# one node or many. Run the same command on every node; only NODE_RANK changes:
#   MODEL=/path/to/pipeline OUTPUT=out/video.mp4 TP=2 bash examples/cuda/sample.sh --prompt-file p.txt
# MODEL (pipeline folder) or PRESET (tiny-osp15-random, ...), OUTPUT (default samples/video.mp4), TP and CP (default
# 1); the arguments go to `osp sample`.
# GPUS_PER_NODE (default 8) processes per node; NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT (defaults 1, 0,
# 127.0.0.1, 6000). Sets CUDA_DEVICE_MAX_CONNECTIONS=1, TORCH_NCCL_ASYNC_ERROR_HANDLING=1,
# PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True; NUMA_BINDING=node pins each process to its GPU's NUMA node.
# Stops when nvidia-smi is missing. DRY_RUN=1 prints the environment and the exact commands; OSP_LAUNCH_DEVICE=cpu
# runs on CPU (gloo; tests). Log: LOG_DIR/node_<NODE_RANK>.log. All the variables: docs/launch.md.
set -euo pipefail
# shellcheck source=../launch_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../launch_common.sh"
osp_launch cuda examples/cuda/sample.sh
osp_job_sample "$@"
