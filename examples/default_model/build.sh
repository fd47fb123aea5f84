#!/usr/bin/env bash
# Rebuild the embedded default model from nothing: shapes data -> WF-VAE training -> latent normaliser -> tiny text
# encoders -> feature cache -> SUV DiT training -> pipeline folder -> evaluation. Every stage is an `osp` command.
#
#   bash examples/default_model/build.sh [RUNS_DIR]          # RUNS_DIR default: runs (writes RUNS_DIR/shapes*)
#   INSTALL=1 bash examples/default_model/build.sh           # then copy the pipeline into mindspeed_mm/osp/default_model
#
# Sizes (environment): VIDEOS, IMAGES, VAE_VIDEOS, VAE_STEPS, DIT_STEPS, EVAL_PROMPTS; the defaults are the shipped
# model's recipe (its model card says which run made each part), CI runs it with a few steps of each stage. A stage
# whose output exists is resumed (training) or kept (the rest).
# The VAE trains on its own VAE_VIDEOS clips (RUNS/shapes_vae_data: the same generator and seed, so the first
# VAE_VIDEOS clips of RUNS/shapes): 800 clips fit the loader's frame cache, so each is decoded once, and a VAE
# trained on them scored higher than one trained on all 8000 (30.70 against 30.31 dB).
# VAE=DIR: use that exported, normalised WF-VAE (e.g. a copy of mindspeed_mm/osp/default_model/vae) instead of
# training one; the DiT stages then start from it.
# The defaults (8000 clips + 2000 images, 800 VAE clips, 6000 VAE steps, 13000 DiT steps) take 1.7-2.3 h on 2 cores,
# evaluation included (VAE about 30-35 min, DiT 65-95 min, depending on the machine; the model card has the times).
# NPROC (default 2): the DiT trains as that many data-parallel processes of one thread each under torchrun (the
# same global batch, so the same training up to float rounding; on 2 cores its small matmuls step 1.4x faster
# than as one process with 2 threads; the VAE's convolutions gain nothing, so it stays one process), and the
# feature cache is extracted by that many processes, each writing its share of the shards (the same cache; 1.56x
# faster on 2 cores). NPROC=1: one process. NPROC must divide 8 (the DiT's global batch).
set -euo pipefail
cd "$(dirname "$0")/../.."
OSP=${OSP:-.venv/bin/osp}
TORCHRUN=${TORCHRUN:-.venv/bin/torchrun}
NPROC=${NPROC:-2}
if [ $(( 8 % NPROC )) -ne 0 ]; then echo "NPROC=$NPROC must divide 8 (the DiT's global batch)" >&2; exit 2; fi
if [ -n "${VAE:-}" ] && [ ! -f "$VAE/config.json" ]; then
  echo "VAE=$VAE holds no config.json: give an exported WF-VAE folder (osp train's export/vae, a pipeline's vae/)" >&2
  exit 2
fi

# `osp ARGS` as NPROC processes of one thread each under torchrun (data-parallel training; extraction shards split
# by rank), or as one process when NPROC=1.
osp_dp() {
  if [ "$NPROC" -gt 1 ]; then
    OMP_NUM_THREADS=1 $TORCHRUN --standalone --nproc_per_node "$NPROC" -m mindspeed_mm.osp.cli "$@"
  else
    $OSP "$@"
  fi
}
RUNS=${1:-runs}
VIDEOS=${VIDEOS:-8000}
IMAGES=${IMAGES:-2000}
VAE_VIDEOS=${VAE_VIDEOS:-800}
VAE_STEPS=${VAE_STEPS:-6000}
DIT_STEPS=${DIT_STEPS:-13000}
EVAL_PROMPTS=${EVAL_PROMPTS:-32}
CFG=examples/default_model
mkdir -p "$RUNS"

[ -f "$RUNS/shapes/data.txt" ] || $OSP data make-shapes "$RUNS/shapes" --videos "$VIDEOS" --images "$IMAGES" --seed 0

if [ -z "${VAE:-}" ]; then
  [ -f "$RUNS/shapes_vae_data/data.txt" ] ||
    $OSP data make-shapes "$RUNS/shapes_vae_data" --videos "$VAE_VIDEOS" --images 0 --seed 0
  $OSP train --config $CFG/train_vae.json --output "$RUNS/shapes_vae" "data.source=$RUNS/shapes_vae_data/data.txt" \
    "steps=$VAE_STEPS"
  if [ ! -f "$RUNS/shapes_vae/normalised" ]; then
    $OSP vae stats "$RUNS/shapes_vae/export/vae" --data "$RUNS/shapes_vae_data/data.txt" --clips 64 --write
    touch "$RUNS/shapes_vae/normalised"
  fi
  VAE=$RUNS/shapes_vae/export/vae
fi

[ -d "$RUNS/shapes_text" ] || $OSP text tiny "$RUNS/shapes_text" --captions "$RUNS/shapes/data.txt" --dim 32 --pooled-dim 32 \
  --max-length 24

TEXT=(--text-encoder "$RUNS/shapes_text/text_encoder" --tokenizer "$RUNS/shapes_text/tokenizer"
      --pooled-text-encoder "$RUNS/shapes_text/text_encoder_2" --pooled-tokenizer "$RUNS/shapes_text/tokenizer_2")
osp_dp data extract "$RUNS/shapes/data.txt" --config $CFG/train_dit.json --vae "$VAE" "${TEXT[@]}" \
  --max-length 24 --global-batch 8 --output "$RUNS/shapes_cache"

osp_dp train --config $CFG/train_dit.json --output "$RUNS/shapes_dit" "steps=$DIT_STEPS" "data.micro_batch_size=$(( 8 / NPROC ))" \
  "data.source=$RUNS/shapes/data.txt" "data.cache=$RUNS/shapes_cache" "model.vae=$VAE" \
  "model.text_encoder=$RUNS/shapes_text/text_encoder" "model.tokenizer=$RUNS/shapes_text/tokenizer" \
  "model.text_encoder_2=$RUNS/shapes_text/text_encoder_2" "model.tokenizer_2=$RUNS/shapes_text/tokenizer_2"

[ -d "$RUNS/shapes_pipeline" ] || $OSP convert dit --to pipeline "$RUNS/shapes_dit" "$RUNS/shapes_pipeline" --ema --sampling $CFG/sampling.json
$OSP eval shapes --model "$RUNS/shapes_pipeline" --prompts "$EVAL_PROMPTS" | tee "$RUNS/shapes_eval.txt"

if [ "${INSTALL:-0}" = 1 ]; then
  rm -rf mindspeed_mm/osp/default_model.new
  cp -r "$RUNS/shapes_pipeline" mindspeed_mm/osp/default_model.new
  [ -f mindspeed_mm/osp/default_model/MODEL_CARD.md ] && cp mindspeed_mm/osp/default_model/MODEL_CARD.md mindspeed_mm/osp/default_model.new/
  rm -rf mindspeed_mm/osp/default_model && mv mindspeed_mm/osp/default_model.new mindspeed_mm/osp/default_model
  echo "installed $RUNS/shapes_pipeline as mindspeed_mm/osp/default_model"
fi
