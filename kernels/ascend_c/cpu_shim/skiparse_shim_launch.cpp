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

// MindSpore ops.Custom(func="lib.so:SkiparseAttentionAot", func_type="aot") entry points on CPU.
// Inputs: q, k, v (B, N, S, D), text_k, text_v (B, N, L, D; ignored when config[3] == 0), key_mask (B, S + L) uint8
// (ignored when config[4] == 0), config float32 [sparsity, group, scale, has_text, has_mask];
// forward outputs: out, softmax_max, softmax_sum; backward extra inputs: out, dout, softmax_max, softmax_sum and
// outputs dq, dk, dv, dtext_k, dtext_v.
namespace {
struct AotArgs {
    int dtype;
    uint32_t b, h, n, l, d, sparsity, group;
    float scale;
    bool hasText, hasMask;
};
bool ParseAot(void** params, int* ndims, int64_t** shapes, const char** dtypes, int configIndex, AotArgs& a) {
    if (ndims[0] != 4) return false;
    const float* config = static_cast<const float*>(params[configIndex]);
    a.dtype = std::strcmp(dtypes[0], "float16") == 0 ? 0 : (std::strcmp(dtypes[0], "bfloat16") == 0 ? 1 : -1);
    a.b = shapes[0][0]; a.h = shapes[0][1]; a.n = shapes[0][2]; a.d = shapes[0][3];
    a.sparsity = static_cast<uint32_t>(config[0]);
    a.group = static_cast<uint32_t>(config[1]);
    a.scale = config[2];
    a.hasText = config[3] != 0.0f;
    a.hasMask = config[4] != 0.0f;
    a.l = a.hasText ? static_cast<uint32_t>(shapes[3][2]) : 0;
    return a.dtype >= 0;
}
}  // namespace

extern "C" int SkiparseAttentionAot(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                                    void*, void*) {
    AotArgs a;
    if (nparam != 10 || !ParseAot(params, ndims, shapes, dtypes, 6, a)) return 1;
    return skiparse_shim_forward(a.dtype, params[0], params[1], params[2], a.hasText ? params[3] : nullptr,
                                 a.hasText ? params[4] : nullptr, a.hasMask ? params[5] : nullptr, params[7],
                                 params[8], params[9], a.b, a.h, a.n, a.l, a.d, a.sparsity, a.group, a.scale, 0, 0, 4);
}

extern "C" int SkiparseAttentionGradAot(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                                        void*, void*) {
    AotArgs a;
    if (nparam != 16 || !ParseAot(params, ndims, shapes, dtypes, 10, a)) return 1;
    return skiparse_shim_backward(a.dtype, params[0], params[1], params[2], a.hasText ? params[3] : nullptr,
                                  a.hasText ? params[4] : nullptr, a.hasMask ? params[5] : nullptr, params[6],
                                  params[7], params[8], params[9], params[11], params[12], params[13],
                                  a.hasText ? params[14] : nullptr, a.hasText ? params[15] : nullptr, a.b, a.h, a.n,
                                  a.l, a.d, a.sparsity, a.group, a.scale, 0, 0, 4);
}
