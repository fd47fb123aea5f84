// Kernel entry of the SkiparseAttentionGrad custom operator (backward). Tiling key 0: float16, 1: bfloat16.
#include "skiparse_attention_common.h"

extern "C" __global__ __aicore__ void skiparse_attention_grad(GM_ADDR q, GM_ADDR k, GM_ADDR v, GM_ADDR textK,
                                                              GM_ADDR textV, GM_ADDR keyMask, GM_ADDR out, GM_ADDR dout,
                                                              GM_ADDR softmaxMax, GM_ADDR softmaxSum, GM_ADDR dq,
                                                              GM_ADDR dk, GM_ADDR dv, GM_ADDR dTextK, GM_ADDR dTextV,
                                                              GM_ADDR workspace, GM_ADDR tiling) {
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_MIX_AIC_1_2);
    GET_TILING_DATA(tilingData, tiling);
    if (TILING_KEY_IS(0)) {
        skiparse::SkiparseAttentionGrad<half> op;
        op.Init(q, k, v, textK, textV, keyMask, out, dout, softmaxMax, softmaxSum, dq, dk, dv, dTextK, dTextV,
                workspace, tilingData);
        op.Process();
    } else if (TILING_KEY_IS(1)) {
        skiparse::SkiparseAttentionGrad<bfloat16_t> op;
        op.Init(q, k, v, textK, textV, keyMask, out, dout, softmaxMax, softmaxSum, dq, dk, dv, dTextK, dTextV,
                workspace, tilingData);
        op.Process();
    }
}
