// Kernel entry of the SkiparseAttention custom operator (forward). Tiling key 0: float16, 1: bfloat16.
#include "skiparse_attention_common.h"

extern "C" __global__ __aicore__ void skiparse_attention(GM_ADDR q, GM_ADDR k, GM_ADDR v, GM_ADDR textK, GM_ADDR textV,
                                                         GM_ADDR keyMask, GM_ADDR out, GM_ADDR softmaxMax,
                                                         GM_ADDR softmaxSum, GM_ADDR workspace, GM_ADDR tiling) {
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_MIX_AIC_1_2);
    GET_TILING_DATA(tilingData, tiling);
    if (TILING_KEY_IS(0)) {
        skiparse::SkiparseAttentionFwd<half> op;
        op.Init(q, k, v, textK, textV, keyMask, out, softmaxMax, softmaxSum, workspace, tilingData);
        op.Process();
    } else if (TILING_KEY_IS(1)) {
        skiparse::SkiparseAttentionFwd<bfloat16_t> op;
        op.Init(q, k, v, textK, textV, keyMask, out, softmaxMax, softmaxSum, workspace, tilingData);
        op.Process();
    }
}
