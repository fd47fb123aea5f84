#!/usr/bin/env bash
# Open-Sora Plan v1.3 text-to-video pretraining on NVIDIA GPUs (torchrun, NCCL), one node or many. Run the same
# command on every node; only NODE_RANK changes:
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash examples/cuda/pretrain_osp13_t2v.sh data.source=/data/data.txt
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 bash examples/cuda/pretrain_osp13_t2v.sh data.source=/data/data.txt
# CONFIG (default examples/train/osp13_t2v.json: set its /path/to entries, in a copy or as arguments), OUTPUT
# (default runs/<config name>); the arguments go to `osp train` (section.key=value overrides, --resume). Relaunching
# the same command on every node resumes the run from its latest checkpoint; SIGTERM to one node's launcher makes
# every rank save and exit 0.
# GPUS_PER_NODE (default 8) processes per node; NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT (defaults 1, 0,
# 127.0.0.1, 6000). Sets CUDA_DEVICE_MAX_CONNECTIONS=1, TORCH_NCCL_ASYNC_ERROR_HANDLING=1,
# PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True; NUMA_BINDING=node pins each process to its GPU's NUMA node.
# Stops when nvidia-smi is missing. DRY_RUN=1 prints the environment and the exact commands; OSP_LAUNCH_DEVICE=cpu
# runs on CPU (gloo; tests). Log: LOG_DIR/node_<NODE_RANK>.log. All the variables: docs/launch.md.
set -euo pipefail
# shellcheck source=../launch_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../launch_common.sh"
osp_launch cuda examples/cuda/pretrain_osp13_t2v.sh
osp_job_train examples/train/osp13_t2v.json "$@"
