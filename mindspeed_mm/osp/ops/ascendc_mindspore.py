"""The Ascend C Skiparse kernels as MindSpore `ops.Custom(func_type="aot")` operators, forward + bprop.

* target "Ascend": the installed custom op package (`kernels/ascend_c/build_cann.sh`), attributes through the
  registration info. Not run here (no NPU).
* target "CPU": the same kernel sources compiled through the Ascend C shim (`ascendc_shim.build_library()`), whose
  aot entry points take the attributes as a float32 config tensor. This is what tests/test_kernels_mindspore.py runs.

Inputs are BNSD float16/bfloat16 with video tokens in original order; key_mask (B, N + L) uint8, 1 = masked.
"""
from __future__ import annotations

import numpy as np


def _stat_shape(q_shape):
    return list(q_shape[:3]) + [8]


def skiparse_attention_cpu_shim(q, k, v, *, sparsity: int, group: bool, scale: float, text_k=None, text_v=None,
                                key_mask=None):
    """MindSpore Tensors in, MindSpore Tensor out; differentiable (bprop = the shim's SkiparseAttentionGrad)."""
    import mindspore as ms
    from mindspore import ops

    from .ascendc_shim import build_library

    lib = str(build_library())
    has_text, has_mask = text_k is not None, key_mask is not None
    config = ms.Tensor(np.array([sparsity, int(group), scale, int(has_text), int(has_mask)], np.float32))
    dummy = ms.Tensor(np.zeros(1, np.float16)).astype(q.dtype)
    tk = text_k if has_text else dummy
    tv = text_v if has_text else dummy
    mask = key_mask.astype(ms.uint8) if has_mask else ms.Tensor(np.zeros(1, np.uint8))

    grad_op = ops.Custom(f"{lib}:SkiparseAttentionGradAot",
                         out_shape=lambda q_, k_, v_, tk_, tv_, *rest: (q_, k_, v_, tk_, tv_),
                         out_dtype=lambda q_, *rest: (q_, q_, q_, q_, q_), func_type="aot")

    def bprop(q_, k_, v_, tk_, tv_, mask_, config_, out, dout):
        o, smax, ssum = out
        dq, dk, dv, dtk, dtv = grad_op(q_, k_, v_, tk_, tv_, mask_, o, dout[0], smax, ssum, config_)
        return dq, dk, dv, dtk, dtv, ops.zeros_like(mask_), ops.zeros_like(config_)

    fwd_op = ops.Custom(f"{lib}:SkiparseAttentionAot",
                        out_shape=lambda q_, *rest: (q_, _stat_shape(q_), _stat_shape(q_)),
                        out_dtype=lambda q_, *rest: (q_, ms.float32, ms.float32), func_type="aot", bprop=bprop)
    return fwd_op(q, k, v, tk, tv, mask, config)[0]


def npu_custom_ops(sparsity: int, group: bool, scale: float):
    """(forward, backward) `ops.Custom` primitives bound to the installed Ascend op package.

    forward(q, k, v, text_k, text_v, key_mask) -> (out, softmax_max, softmax_sum); backward(q, k, v, text_k, text_v,
    key_mask, out, dout, softmax_max, softmax_sum) -> (dq, dk, dv, dtext_k, dtext_v).
    """
    import mindspore as ms
    from mindspore import ops
    from mindspore.ops import CustomRegOp, DataType

    def reg(name, inputs, outputs):
        info = CustomRegOp(name)
        for i, n in enumerate(inputs):
            info = info.input(i, n)
        for i, n in enumerate(outputs):
            info = info.output(i, n)
        info = info.attr("sparsity", "required", "int", default_value=str(int(sparsity)))
        info = info.attr("group", "required", "bool", default_value=str(bool(group)).lower())
        info = info.attr("scale", "required", "float", default_value=repr(float(scale)))
        fixed = {"key_mask": DataType.U8_Default, "softmax_max": DataType.F32_Default,
                 "softmax_sum": DataType.F32_Default}
        for io in (DataType.F16_Default, DataType.BF16_Default):
            info = info.dtype_format(*[fixed.get(n, io) for n in inputs + outputs])
        return info.target("Ascend").get_op_info()

    fwd_in = ["query", "key", "value", "text_key", "text_value", "key_mask"]
    fwd_out = ["attention_out", "softmax_max", "softmax_sum"]
    bwd_in = fwd_in + ["attention_out", "attention_out_grad", "softmax_max", "softmax_sum"]
    bwd_out = ["dq", "dk", "dv", "dtext_key", "dtext_value"]
    forward = ops.Custom("SkiparseAttention", out_shape=lambda q, *rest: (q, _stat_shape(q), _stat_shape(q)),
                         out_dtype=lambda q, *rest: (q, ms.float32, ms.float32), func_type="aot",
                         reg_info=reg("SkiparseAttention", fwd_in, fwd_out))
    backward = ops.Custom("SkiparseAttentionGrad", out_shape=lambda q, k, v, tk, tv, *rest: (q, k, v, tk, tv),
                          out_dtype=lambda q, *rest: (q, q, q, q, q), func_type="aot",
                          reg_info=reg("SkiparseAttentionGrad", bwd_in, bwd_out))
    return forward, backward
