#!/usr/bin/env bash
# Feature extraction with `osp data extract` (each rank writes its own shards) on NVIDIA GPUs (torchrun, NCCL), one
# node or many. Run the same command on every node; only NODE_RANK changes:
#   DATA=/data/data.txt CONFIG=my_train.json VAE=/path/to/wfvae CACHE=/data/cache \
#     bash examples/cuda/extract_latents.sh --text-encoder /path/to/t5 --tokenizer /path/to/t5 --dtype bf16
# DATA, CONFIG (training config or buckets JSON), VAE and CACHE are required; the arguments go to `osp data
# extract`. A rerun skips finished shards.
# GPUS_PER_NODE (default 8) processes per node; NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT (defaults 1, 0,
# 127.0.0.1, 6000). Sets CUDA_DEVICE_MAX_CONNECTIONS=1, TORCH_NCCL_ASYNC_ERROR_HANDLING=1,
# PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True; NUMA_BINDING=node pins each process to its GPU's NUMA node.
# Stops when nvidia-smi is missing. DRY_RUN=1 prints the environment and the exact commands; OSP_LAUNCH_DEVICE=cpu
# runs on CPU (gloo; tests). Log: LOG_DIR/node_<NODE_RANK>.log. All the variables: docs/launch.md.
set -euo pipefail
# shellcheck source=../launch_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../launch_common.sh"
osp_launch cuda examples/cuda/extract_latents.sh
osp_job_extract "$@"
