// Tiny kernels that exercise the shim's rule checks (used by tests; not part of the operator).
#include "kernel_operator.h"

using namespace AscendC;

// Copies `count` halves GM -> UB -> GM through a VECIN/VECOUT queue pair in one DataCopy each way. With a count whose
// byte size is not a multiple of 32 the hardware (and the shim) drop the tail; strict mode aborts instead.
extern "C" __global__ __aicore__ void shim_selftest_copy_kernel(GM_ADDR src, GM_ADDR dst, uint32_t count) {
    TPipe pipe;
    TQue<TPosition::VECIN, 1> in;
    TQue<TPosition::VECOUT, 1> out;
    pipe.InitBuffer(in, 1, count * sizeof(half));
    pipe.InitBuffer(out, 1, count * sizeof(half));
    GlobalTensor<half> srcGm, dstGm;
    srcGm.SetGlobalBuffer((__gm__ half*)src, count);
    dstGm.SetGlobalBuffer((__gm__ half*)dst, count);
    LocalTensor<half> a = in.AllocTensor<half>();
    DataCopy(a, srcGm, count);
    in.EnQue(a);
    a = in.DeQue<half>();
    LocalTensor<half> b = out.AllocTensor<half>();
    DataCopy(b, a, (count * sizeof(half) + 31) / 32 * 32 / sizeof(half));
    in.FreeTensor(a);
    out.EnQue(b);
    b = out.DeQue<half>();
    DataCopy(dstGm, b, count);
    out.FreeTensor(b);
}

// Frees a tensor that is still enqueued (DeQue forgotten): a queue-protocol violation.
extern "C" __global__ __aicore__ void shim_selftest_queue_kernel() {
    TPipe pipe;
    TQue<TPosition::VECIN, 1> in;
    pipe.InitBuffer(in, 1, 256);
    LocalTensor<float> a = in.AllocTensor<float>();
    in.EnQue(a);
    in.FreeTensor(a);
}

extern "C" int shim_selftest_copy(void* src, void* dst, uint32_t count) {
    ascendc_shim::RunKernel(shim_selftest_copy_kernel, 1, 0, (GM_ADDR)src, (GM_ADDR)dst, count);
    return 0;
}

extern "C" int shim_selftest_queue() {
    ascendc_shim::RunKernel(shim_selftest_queue_kernel, 1, 0);
    return 0;
}
