// Tile choice, shape checks and buffer budgets of the Skiparse kernels. Plain C++ (no CANN): used by the op_host
// tiling functions and by the CPU-shim launcher, so both pick the same tiles.
#pragma once
#include <cstdint>

struct SkiparseTiles {
    uint32_t blockRows = 0;
    uint32_t blockCols = 0;
    uint64_t workspacePerCore = 0;
    uint32_t ubBytes = 0;
};

inline uint32_t SkiparseRound32(uint64_t bytes) { return static_cast<uint32_t>((bytes + 31) / 32 * 32); }

// Mirrors the InitBuffer calls of SkiparseAttentionFwd::Init.
inline uint32_t SkiparseFwdUbBytes(uint32_t br, uint32_t bc, uint32_t d, uint32_t ts) {
    return SkiparseRound32(br * bc * 4) + SkiparseRound32(br * bc * ts) + SkiparseRound32(br * d * 4) +
           SkiparseRound32(br * d * ts) + 2 * SkiparseRound32(br * 8 * 4) + SkiparseRound32(br * d * 4) +
           5 * SkiparseRound32(br * 4) + SkiparseRound32(bc * 4) + 256;
}

// Mirrors the InitBuffer calls of SkiparseAttentionGrad::Init.
inline uint32_t SkiparseGradUbBytes(uint32_t br, uint32_t bc, uint32_t d, uint32_t ts) {
    return 2 * SkiparseRound32(br * bc * 4) + 2 * SkiparseRound32(br * bc * ts) + 2 * SkiparseRound32(br * d * ts) +
           2 * SkiparseRound32(br * 8 * 4) + SkiparseRound32(br * d * 4) + SkiparseRound32(br * d * ts) +
           2 * SkiparseRound32(d * 4) + 3 * SkiparseRound32(br * 4) + SkiparseRound32(bc * 4) + 256;
}

inline uint64_t SkiparseFwdWorkspace(uint32_t br, uint32_t bc, uint32_t d, uint32_t ts) {
    return static_cast<uint64_t>(br) * bc * 4 + static_cast<uint64_t>(br) * d * 4 + static_cast<uint64_t>(br) * bc * ts;
}

inline uint64_t SkiparseGradWorkspace(uint32_t br, uint32_t bc, uint32_t d, uint32_t ts) {
    uint64_t accRows = br > bc ? br : bc;
    return 2ull * br * bc * 4 + 2ull * accRows * d * 4 + 2ull * br * bc * ts;
}

// nullptr when the shape is supported, else a message naming the problem.
inline const char* SkiparseCheckShape(uint32_t headDim, uint32_t sparsity, uint32_t dtypeSize, uint32_t seqLen) {
    if (dtypeSize != 2) return "SkiparseAttention supports float16 and bfloat16 inputs only";
    if (headDim == 0 || headDim % 16 != 0 || headDim > 256)
        return "SkiparseAttention needs head_dim a multiple of 16 in [16, 256] (one row = whole 32-byte blocks)";
    if (sparsity == 0 || sparsity > 64) return "SkiparseAttention needs 1 <= sparsity <= 64";
    if (seqLen == 0) return "SkiparseAttention needs at least one video token";
    return nullptr;
}

// Largest tiles (Br <= 64, Bc <= 128 forward / 64 backward) whose buffers fit in `ubCapacity` bytes.
// requestedRows/Cols != 0 force a tile size (tests use small tiles to exercise multi-tile paths).
inline SkiparseTiles SkiparseChooseTiles(bool grad, uint32_t headDim, uint32_t dtypeSize, uint32_t ubCapacity,
                                         uint32_t requestedRows = 0, uint32_t requestedCols = 0) {
    SkiparseTiles t;
    uint32_t br = requestedRows ? requestedRows : 64;
    uint32_t bc = requestedCols ? requestedCols : (grad ? 64 : 128);
    auto ub = [&](uint32_t r, uint32_t c) {
        return grad ? SkiparseGradUbBytes(r, c, headDim, dtypeSize) : SkiparseFwdUbBytes(r, c, headDim, dtypeSize);
    };
    while (ub(br, bc) > ubCapacity && !requestedCols && bc > 16) bc /= 2;
    while (ub(br, bc) > ubCapacity && !requestedRows && br > 8) br /= 2;
    t.blockRows = br;
    t.blockCols = bc;
    t.ubBytes = ub(br, bc);
    t.workspacePerCore = grad ? SkiparseGradWorkspace(br, bc, headDim, dtypeSize)
                              : SkiparseFwdWorkspace(br, bc, headDim, dtypeSize);
    return t;
}
