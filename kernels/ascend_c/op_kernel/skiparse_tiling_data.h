// Tiling data of SkiparseAttention / SkiparseAttentionGrad as seen by the kernels.
//
// On a CANN build the struct is generated from op_host/skiparse_attention_tiling.h (BEGIN_TILING_DATA_DEF with the same
// field names) and read with GET_TILING_DATA; the CPU shim has no generator, so it gets this plain POD mirror.
#pragma once
#include <cstdint>

#ifdef ASCENDC_CPU_SHIM
#include "lib/matmul_intf.h"

struct SkiparseTilingData {
    uint32_t batch;        // B
    uint32_t heads;        // N (heads)
    uint32_t seqLen;       // video tokens, original order, not padded
    uint32_t textLen;      // text tokens appended as extra keys of every sub-sequence (0: none)
    uint32_t headDim;      // D
    uint32_t sparsity;     // k (1 = dense attention)
    uint32_t group;        // 0 single skip, 1 group skip
    uint32_t hasMask;      // key mask (B, seqLen + textLen) uint8, 1 = masked
    uint32_t blockRows;    // Br: query rows per tile
    uint32_t blockCols;    // Bc: key rows per tile
    uint32_t usedCoreNum;  // vector blocks sharing the work (AIV count: 2 x blockDim in MIX_AIC_1_2 mode)
    uint32_t workspacePerCore;  // bytes of user workspace per block
    float scale;
    TCubeTiling mmScore;   // Br x Bc x D, B transposed: S = Q K^T and dP = dO V^T
    TCubeTiling mmOut;     // Br x D x Bc: O += P V and dQ += dS K
    TCubeTiling mmGradKV;  // Bc x D x Br, A transposed: dV += P^T dO and dK += dS^T Q
};
#endif
