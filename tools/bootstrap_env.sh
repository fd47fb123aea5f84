#!/usr/bin/env bash
# Create ./.venv with everything the tests and the CPU jobs need, then install this package (editable).
#   bash tools/bootstrap_env.sh   # torch (CPU), megatron-core, video I/O, MindSpore, sampling deps, triton (its
#                                  # interpreter runs the Triton kernels on CPU in the tests), test tools,
#                                  # curation (PySceneDetect)
#   OSP_EXTRAS=test,video bash tools/bootstrap_env.sh   # a smaller set
# torch is pinned first so pip never pulls a CUDA build of several GB onto a CPU machine; on a GPU or Ascend
# machine install your platform's torch (and torch_npu with CANN) before `pip install -e .[...]` instead.
# torch_npu is never installed here: without the CANN toolkit it breaks `import torch` itself.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${OSP_EXTRAS:-test,video,mindspore,megatron,sample,triton,curate}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip >/dev/null 2>&1 || true
pip install -q "torch==${OSP_TORCH_VERSION:-2.13.0}" "numpy<2"
pip install -q -e ".[${EXTRAS}]"
# A second megatron-core (0.12.1, what MindSpeed pins) layered over .venv, so the parallel suite also runs
# against it (tests/test_parallel_layouts.py picks up .venv-megatron012). OSP_MEGATRON_ALT=none skips it.
ALT=${OSP_MEGATRON_ALT:-0.12.1}
if [ "$ALT" != none ]; then
  [ -x .venv-megatron012/bin/python ] || "$PY" -m venv .venv-megatron012
  base_site=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  alt_site=$(.venv-megatron012/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  echo "$base_site" > "$alt_site/osp_base_venv.pth"
  .venv-megatron012/bin/python -m pip install -q --no-deps "megatron-core==$ALT"
fi
python -c "import torch, numpy; print(f'osp env ready: torch {torch.__version__}, numpy {numpy.__version__}')"
