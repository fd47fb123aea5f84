#!/usr/bin/env bash
#SBATCH --job-name=osp-extract-latents
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
#SBATCH --signal=B:TERM@600
#SBATCH --output=slurm-%x-%j.out
# Adapt to the cluster: --nodes, --partition, --time, --gres=gpu:8 (or the NPU gres), --cpus-per-task.
#
# Feature extraction with `osp data extract` (each rank writes its own shards) under Slurm, on NPUs or GPUs
# (OSP_LAUNCH_DEVICE=auto: npu when CANN is found, else cuda). Submit from the repository root:
#   DATA=... CONFIG=... VAE=... CACHE=... sbatch examples/slurm/extract_latents.sh --dtype bf16
# The batch step starts one srun task per node (this script again, with OSP_SLURM_STEP=1), which runs torchrun with
# NNODES=SLURM_JOB_NUM_NODES, NODE_RANK=SLURM_NODEID, MASTER_ADDR=the first host of SLURM_JOB_NODELIST,
# MASTER_PORT=20000 + SLURM_JOB_ID % 20000 (OSP_MASTER_PORT overrides). NPUS_PER_NODE or GPUS_PER_NODE (default 8);
# the other variables and the arguments as in examples/ascend/extract_latents.sh. DRY_RUN=1 prints the commands. All
# the variables: docs/launch.md.
set -euo pipefail
OSP_ROOT=${OSP_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}   # sbatch runs a copy of this file: find the repository
# shellcheck source=../launch_common.sh
source "$OSP_ROOT/examples/launch_common.sh" || { echo "submit from the repo root or set OSP_ROOT" >&2; exit 1; }
osp_launch slurm examples/slurm/extract_latents.sh "$@"
osp_job_extract "$@"
