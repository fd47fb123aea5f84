// Tiling data of SkiparseAttention and SkiparseAttentionGrad (CANN op project). The kernels read it with
// GET_TILING_DATA; op_kernel/skiparse_tiling_data.h is the POD mirror used by the CPU shim (same fields, same order).
#pragma once
#include "register/tilingdata_base.h"
#include "tiling/tiling_api.h"

namespace optiling {
BEGIN_TILING_DATA_DEF(SkiparseTilingData)
TILING_DATA_FIELD_DEF(uint32_t, batch);
TILING_DATA_FIELD_DEF(uint32_t, heads);
TILING_DATA_FIELD_DEF(uint32_t, seqLen);
TILING_DATA_FIELD_DEF(uint32_t, textLen);
TILING_DATA_FIELD_DEF(uint32_t, headDim);
TILING_DATA_FIELD_DEF(uint32_t, sparsity);
TILING_DATA_FIELD_DEF(uint32_t, group);
TILING_DATA_FIELD_DEF(uint32_t, hasMask);
TILING_DATA_FIELD_DEF(uint32_t, blockRows);
TILING_DATA_FIELD_DEF(uint32_t, blockCols);
TILING_DATA_FIELD_DEF(uint32_t, usedCoreNum);
TILING_DATA_FIELD_DEF(uint32_t, workspacePerCore);
TILING_DATA_FIELD_DEF(float, scale);
TILING_DATA_FIELD_DEF_STRUCT(TCubeTiling, mmScore);
TILING_DATA_FIELD_DEF_STRUCT(TCubeTiling, mmOut);
TILING_DATA_FIELD_DEF_STRUCT(TCubeTiling, mmGradKV);
END_TILING_DATA_DEF;

REGISTER_TILING_DATA_CLASS(SkiparseAttention, SkiparseTilingData)
REGISTER_TILING_DATA_CLASS(SkiparseAttentionGrad, SkiparseTilingData)
}  // namespace optiling
