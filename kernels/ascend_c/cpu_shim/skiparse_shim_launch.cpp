// CPU-shim build of the Skiparse kernels: the unchanged op_kernel sources compiled with g++ against the shim,
// plus C entry points for Python (ctypes). Blocks run sequentially; each gets its own workspace slice.
#include <vector>

#include "../op_host/skiparse_tiling_calc.h"
#include "../op_kernel/skiparse_attention.cpp"
#include "../op_kernel/skiparse_attention_grad.cpp"

namespace {

TCubeTiling CubeTiling(int32_t m, int32_t n, int32_t k) {
    TCubeTiling t{};
    t.M = m; t.N = n; t.Ka = k; t.Kb = k;
    t.singleCoreM = m; t.singleCoreN = n; t.singleCoreK = k;
    return t;
}

int MakeTiling(bool grad, uint32_t b, uint32_t h, uint32_t n, uint32_t l, uint32_t d, uint32_t k, uint32_t group,
               uint32_t hasMask, float scale, uint32_t br, uint32_t bc, uint32_t blockDim, SkiparseTilingData& t) {
    if (const char* err = SkiparseCheckShape(d, k, 2, n)) {
        std::fprintf(stderr, "skiparse shim: %s\n", err);
        return 1;
    }
    if ((br && br % 8) || (bc && bc % 16)) {
        std::fprintf(stderr, "skiparse shim: block rows must be a multiple of 8 and block cols of 16\n");
        return 1;
    }
    SkiparseTiles tiles = SkiparseChooseTiles(grad, d, 2, ascendc_shim::kUbBytes, br, bc);
    t = SkiparseTilingData{};
    t.batch = b; t.heads = h; t.seqLen = n; t.textLen = l; t.headDim = d; t.sparsity = k; t.group = group;
    t.hasMask = hasMask; t.blockRows = tiles.blockRows; t.blockCols = tiles.blockCols; t.usedCoreNum = blockDim;
    t.workspacePerCore = static_cast<uint32_t>(tiles.workspacePerCore);
    t.scale = scale;
    t.mmScore = CubeTiling(tiles.blockRows, tiles.blockCols, d);
    t.mmOut = CubeTiling(tiles.blockRows, d, tiles.blockCols);
    t.mmGradKV = CubeTiling(tiles.blockCols, d, tiles.blockRows);
    return 0;
}

}  // namespace

extern "C" {

int skiparse_shim_forward(int dtype, void* q, void* k, void* v, void* textK, void* textV, void* keyMask, void* out,
                          void* softmaxMax, void* softmaxSum, uint32_t b, uint32_t h, uint32_t n, uint32_t l,
                          uint32_t d, uint32_t sparsity, uint32_t group, float scale, uint32_t br, uint32_t bc,
                          uint32_t blockDim) {
    SkiparseTilingData t;
    if (MakeTiling(false, b, h, n, l, d, sparsity, group, keyMask != nullptr, scale, br, bc, blockDim, t)) return 1;
    std::vector<uint8_t> workspace(static_cast<size_t>(t.workspacePerCore) * blockDim);
    ascendc_shim::RunKernel(skiparse_attention, blockDim, dtype, (GM_ADDR)q, (GM_ADDR)k, (GM_ADDR)v, (GM_ADDR)textK,
                            (GM_ADDR)textV, (GM_ADDR)keyMask, (GM_ADDR)out, (GM_ADDR)softmaxMax, (GM_ADDR)softmaxSum,
                            workspace.data(), reinterpret_cast<GM_ADDR>(&t));
    return 0;
}

int skiparse_shim_backward(int dtype, void* q, void* k, void* v, void* textK, void* textV, void* keyMask, void* out,
                           void* dout, void* softmaxMax, void* softmaxSum, void* dq, void* dk, void* dv, void* dTextK,
                           void* dTextV, uint32_t b, uint32_t h, uint32_t n, uint32_t l, uint32_t d, uint32_t sparsity,
                           uint32_t group, float scale, uint32_t br, uint32_t bc, uint32_t blockDim) {
    SkiparseTilingData t;
    if (MakeTiling(true, b, h, n, l, d, sparsity, group, keyMask != nullptr, scale, br, bc, blockDim, t)) return 1;
    std::vector<uint8_t> workspace(static_cast<size_t>(t.workspacePerCore) * blockDim);
    ascendc_shim::RunKernel(skiparse_attention_grad, blockDim, dtype, (GM_ADDR)q, (GM_ADDR)k, (GM_ADDR)v,
                            (GM_ADDR)textK, (GM_ADDR)textV, (GM_ADDR)keyMask, (GM_ADDR)out, (GM_ADDR)dout,
                            (GM_ADDR)softmaxMax, (GM_ADDR)softmaxSum, (GM_ADDR)dq, (GM_ADDR)dk, (GM_ADDR)dv,
                            (GM_ADDR)dTextK, (GM_ADDR)dTextV, workspace.data(), reinterpret_cast<GM_ADDR>(&t));
    return 0;
}

long skiparse_shim_violations() { return ascendc_shim::state().violations; }
long skiparse_shim_truncated_copies() { return ascendc_shim::state().truncatedCopies; }

}  // extern "C"
