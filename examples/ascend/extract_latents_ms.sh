#!/usr/bin/env bash
# Data-parallel WF-VAE latent extraction with MindSpore (msrun, one worker per NPU).
# Usage: MODEL=/path/wfvae VIDEOS=list.txt OUT=latents/ bash examples/ascend/extract_latents_ms.sh [extra args]
# Extra args go to `python -m mindspeed_mm.osp.vae_ms.extract` (--num-frames, --resolution, --chunk-frames, --dtype ...).
# Reruns skip finished videos. msrun launches `python` from PATH (activate the env). CPU smoke run:
# DEVICE_TARGET=CPU NPUS_PER_NODE=2 ... --pynative (see docs/vae_mindspore.md).
set -euo pipefail

NPUS_PER_NODE=${NPUS_PER_NODE:-8}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-8118}
DEVICE_TARGET=${DEVICE_TARGET:-Ascend}
LOG_DIR=${LOG_DIR:-./msrun_log_extract}
: "${MODEL:?set MODEL to a WF-VAE folder (config.json + model.safetensors)}"
: "${VIDEOS:?set VIDEOS to a text file with one video path per line}"
: "${OUT:?set OUT to the output folder}"

msrun --worker_num=$((NPUS_PER_NODE * NNODES)) --local_worker_num="${NPUS_PER_NODE}" \
      --master_addr="${MASTER_ADDR}" --master_port="${MASTER_PORT}" --node_rank="${NODE_RANK}" \
      --log_dir="${LOG_DIR}" --join=True \
      python -m mindspeed_mm.osp.vae_ms.extract --model "${MODEL}" --videos "${VIDEOS}" --out "${OUT}" \
      --device-target "${DEVICE_TARGET}" "$@"
