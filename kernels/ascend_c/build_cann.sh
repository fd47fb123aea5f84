#!/usr/bin/env bash
# Build and install the SkiparseAttention / SkiparseAttentionGrad custom operator package (needs CANN >= 8.0 with
# msopgen; run after `source <cann>/set_env.sh`). Not run in this repository's CI: no CANN there.
#
#   bash kernels/ascend_c/build_cann.sh                  # build, then install into $ASCEND_OPP_PATH/vendors/osp
#   SOC=ai_core-ascend910_93 bash kernels/ascend_c/build_cann.sh
#   INSTALL_PATH=/opt/osp_ops bash kernels/ascend_c/build_cann.sh   # then add it to ASCEND_CUSTOM_OPP_PATH
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
: "${ASCEND_HOME_PATH:?CANN not found: source <cann>/set_env.sh first}"
SOC=${SOC:-ai_core-ascend910b}
OUT=${OUT:-$HERE/build/cann_project}

# 1. the standard custom-operator project scaffold (cmake/, scripts/, build.sh) for our op description
rm -rf "$OUT"
msopgen gen -i "$HERE/skiparse_attention_ops.json" -c "$SOC" -lan cpp -out "$OUT"
# 2. our host (op definition, shape inference, tiling) and kernel sources replace the generated stubs
cp "$HERE"/op_host/*.h "$HERE"/op_host/*.cpp "$OUT/op_host/"
cp "$HERE"/op_kernel/*.h "$HERE"/op_kernel/*.cpp "$OUT/op_kernel/"
python3 - "$HERE/CMakePresets.json" "$OUT/CMakePresets.json" "$ASCEND_HOME_PATH" <<'PY'
import json, sys
preset = json.load(open(sys.argv[1]))
preset["configurePresets"][0]["cacheVariables"]["ASCEND_CANN_PACKAGE_PATH"]["value"] = sys.argv[3]
json.dump(preset, open(sys.argv[2], "w"), indent=2)
PY
# 3. build the .run package and install it
(cd "$OUT" && bash build.sh)
RUN=$(ls "$OUT"/build_out/custom_opp_*.run)
if [ -n "${INSTALL_PATH:-}" ]; then "$RUN" --install-path="$INSTALL_PATH"; else "$RUN"; fi
echo "installed SkiparseAttention; aclnnSkiparseAttention / aclnnSkiparseAttentionGrad are in the vendor's op_api"
