#!/usr/bin/env bash
# Create ./.venv and install this package (editable) into it, printing each stage as it goes.
#   bash tools/bootstrap_env.sh             # everything the tests and the CPU jobs need: torch (CPU), megatron-core
#                                          # (+ 0.12.1 in .venv-megatron012), video I/O, MindSpore, sampling deps,
#                                          # triton (its interpreter runs the Triton kernels on CPU in the tests),
#                                          # test tools, curation (PySceneDetect)
#   bash tools/bootstrap_env.sh quickstart  # only what the README's main job needs: torch (CPU), PyAV, transformers
#   OSP_EXTRAS=test,video bash tools/bootstrap_env.sh   # another set of extras
# torch is pinned first so pip never pulls a CUDA build of several GB onto a CPU machine; on a GPU or Ascend
# machine install your platform's torch (and torch_npu with CANN) before `pip install -e .[...]` instead.
# torch_npu is never installed here: without the CANN toolkit it breaks `import torch` itself.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
case "${1:-all}" in
  all) EXTRAS=${OSP_EXTRAS:-test,video,mindspore,megatron,sample,triton,curate}; ALT=${OSP_MEGATRON_ALT:-0.12.1} ;;
  quickstart) EXTRAS=${OSP_EXTRAS:-quickstart}; ALT=none ;;
  *) echo "usage: bash tools/bootstrap_env.sh [all|quickstart]" >&2; exit 2 ;;
esac
START=$SECONDS

stage() { echo "[bootstrap $(( SECONDS - START ))s] $*"; }

# pip's whole output goes to .venv/pip.log; the terminal sees what is fetched (name, size) and installed, so a fresh
# machine shows its progress and a prepared one almost nothing. On failure, the log's end.
pip_install() {
  if ! python -m pip install --progress-bar off "$@" 2>&1 | tee .venv/pip.log \
      | { grep --line-buffered -E '^(Collecting|  Downloading|Installing collected|Successfully installed)' \
          | sed -u 's/ (from .*)$//' || true; }; then
    echo "pip install $* failed; the end of its output (all of it: .venv/pip.log):" >&2
    tail -n 30 .venv/pip.log >&2
    return 1
  fi
}

if [ ! -x .venv/bin/python ]; then
  stage "creating .venv with $("$PY" --version)"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
stage "torch ${OSP_TORCH_VERSION:-2.13.0} (CPU build) and numpy"
pip_install "torch==${OSP_TORCH_VERSION:-2.13.0}" "numpy<2"
stage "this package (editable) with the extras: $EXTRAS"
pip_install -e ".[${EXTRAS}]"
if [ "${1:-all}" = all ]; then
  # The reference LPIPS that tests/test_vae_train.py compares ours with. --no-deps: its torchvision requirement would
  # pull PyPI's CUDA build, which cannot load next to CPU torch; the test stubs the one call it makes.
  stage "lpips 0.1.4 (test reference, without its dependencies)"
  pip_install --no-deps "lpips==0.1.4"
fi
# A second megatron-core (0.12.1, what MindSpeed pins) layered over .venv, so the parallel suite also runs
# against it (tests/test_parallel_layouts.py picks up .venv-megatron012). OSP_MEGATRON_ALT=none skips it.
if [ "$ALT" != none ]; then
  stage "megatron-core $ALT in .venv-megatron012 (layered over .venv)"
  [ -x .venv-megatron012/bin/python ] || "$PY" -m venv .venv-megatron012
  base_site=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  alt_site=$(.venv-megatron012/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  echo "$base_site" > "$alt_site/osp_base_venv.pth"
  .venv-megatron012/bin/python -m pip install -q --no-deps "megatron-core==$ALT"
fi
python -c "import torch, numpy; print(f'osp env ready: torch {torch.__version__}, numpy {numpy.__version__}')"
stage "done"
