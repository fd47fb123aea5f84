#!/usr/bin/env bash
#SBATCH --job-name=osp13-t2v
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
#SBATCH --signal=B:TERM@600
#SBATCH --output=slurm-%x-%j.out
# Adapt to the cluster: --nodes, --partition, --time, --gres=gpu:8 (or the NPU gres), --cpus-per-task.
#
# Open-Sora Plan v1.3 text-to-video pretraining under Slurm, on NPUs or GPUs (OSP_LAUNCH_DEVICE=auto: npu when CANN
# is found, else cuda). Submit from the repository root:
#   sbatch examples/slurm/pretrain_osp13_t2v.sh data.source=/data/data.txt
# The batch step starts one srun task per node (this script again, with OSP_SLURM_STEP=1), which runs torchrun with
# NNODES=SLURM_JOB_NUM_NODES, NODE_RANK=SLURM_NODEID, MASTER_ADDR=the first host of SLURM_JOB_NODELIST,
# MASTER_PORT=20000 + SLURM_JOB_ID % 20000 (OSP_MASTER_PORT overrides). NPUS_PER_NODE or GPUS_PER_NODE (default 8);
# the other variables and the arguments as in examples/ascend/pretrain_osp13_t2v.sh. The batch step's SIGTERM
# (--signal above, or scancel --batch --signal=TERM) reaches the training processes, which save and exit 0;
# submitting again resumes. DRY_RUN=1 prints the commands. All the variables: docs/launch.md.
set -euo pipefail
OSP_ROOT=${OSP_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}   # sbatch runs a copy of this file: find the repository
# shellcheck source=../launch_common.sh
source "$OSP_ROOT/examples/launch_common.sh" || { echo "submit from the repo root or set OSP_ROOT" >&2; exit 1; }
osp_launch slurm examples/slurm/pretrain_osp13_t2v.sh "$@"
osp_job_train examples/train/osp13_t2v.json "$@"
