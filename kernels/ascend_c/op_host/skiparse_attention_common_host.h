// Host-side tiling shared by SkiparseAttention and SkiparseAttentionGrad (CANN op project; not built in this repo's CI).
#pragma once
#include "register/op_def_registry.h"
#include "tiling/platform/platform_ascendc.h"
#include "skiparse_attention_tiling.h"
#include "skiparse_tiling_calc.h"

namespace optiling {

// Fills a TCubeTiling for C(m x n, fp32) = A(m x k) * B(k x n) with A/B in GM, ND, of `dtype`.
inline bool SkiparseCubeTiling(const platform_ascendc::PlatformAscendC& platform, ge::DataType dtype, int32_t m,
                               int32_t n, int32_t k, bool transA, bool transB, TCubeTiling& out) {
    matmul_tiling::MultiCoreMatmulTiling mm(platform);
    auto dt = dtype == ge::DT_BF16 ? matmul_tiling::DataType::DT_BF16 : matmul_tiling::DataType::DT_FLOAT16;
    mm.SetDim(1);  // one core per Matmul object: every AIV drives its own tile products
    mm.SetAType(matmul_tiling::TPosition::GM, matmul_tiling::CubeFormat::ND, dt, transA);
    mm.SetBType(matmul_tiling::TPosition::GM, matmul_tiling::CubeFormat::ND, dt, transB);
    mm.SetCType(matmul_tiling::TPosition::GM, matmul_tiling::CubeFormat::ND, matmul_tiling::DataType::DT_FLOAT);
    mm.SetShape(m, n, k);
    mm.SetOrgShape(m, n, k);
    mm.SetBias(false);
    mm.SetBufferSpace(-1, -1, -1);
    return mm.GetTiling(out) != -1;
}

// Shapes: query/key/value (B, N, S, D) — index 0; text key (B, N, L, D) — textIndex (optional); key mask — maskIndex.
inline ge::graphStatus SkiparseTiling(gert::TilingContext* context, bool grad, uint32_t textIndex, uint32_t maskIndex) {
    const gert::Shape& q = context->GetInputShape(0)->GetStorageShape();
    if (q.GetDimNum() != 4) return ge::GRAPH_FAILED;
    const gert::StorageShape* text = context->GetOptionalInputShape(textIndex);
    const bool hasMask = context->GetOptionalInputShape(maskIndex) != nullptr;
    const auto* attrs = context->GetAttrs();
    const uint32_t sparsity = static_cast<uint32_t>(*attrs->GetAttrPointer<int64_t>(0));
    const bool group = *attrs->GetAttrPointer<bool>(1);
    const float scale = *attrs->GetAttrPointer<float>(2);
    const ge::DataType dtype = context->GetInputDesc(0)->GetDataType();
    const uint32_t b = q.GetDim(0), h = q.GetDim(1), n = q.GetDim(2), d = q.GetDim(3);
    const uint32_t l = text == nullptr ? 0 : text->GetStorageShape().GetDim(2);
    if (const char* err = SkiparseCheckShape(d, sparsity, ge::GetSizeByDataType(dtype), n)) {
        (void)err;  // reported by the python wrapper before launch; here the tiling just refuses
        return ge::GRAPH_FAILED;
    }

    auto platform = platform_ascendc::PlatformAscendC(context->GetPlatformInfo());
    uint64_t ubSize = 0;
    platform.GetCoreMemSize(platform_ascendc::CoreMemType::UB, ubSize);
    const uint32_t aicNum = platform.GetCoreNumAic();
    const uint32_t aivNum = platform.GetCoreNumAiv();
    SkiparseTiles tiles = SkiparseChooseTiles(grad, d, 2, static_cast<uint32_t>(ubSize));
    if (tiles.ubBytes > ubSize) return ge::GRAPH_FAILED;

    SkiparseTilingData tiling;
    tiling.set_batch(b);
    tiling.set_heads(h);
    tiling.set_seqLen(n);
    tiling.set_textLen(l);
    tiling.set_headDim(d);
    tiling.set_sparsity(sparsity);
    tiling.set_group(group ? 1 : 0);
    tiling.set_hasMask(hasMask ? 1 : 0);
    tiling.set_blockRows(tiles.blockRows);
    tiling.set_blockCols(tiles.blockCols);
    tiling.set_usedCoreNum(aivNum);
    tiling.set_workspacePerCore(static_cast<uint32_t>(tiles.workspacePerCore));
    tiling.set_scale(scale);
    const int32_t br = tiles.blockRows, bc = tiles.blockCols;
    if (!SkiparseCubeTiling(platform, dtype, br, bc, d, false, true, tiling.mmScore) ||
        !SkiparseCubeTiling(platform, dtype, br, d, bc, false, false, tiling.mmOut) ||
        !SkiparseCubeTiling(platform, dtype, bc, d, br, true, false, tiling.mmGradKV)) {
        return ge::GRAPH_FAILED;
    }

    context->SetBlockDim(aicNum);  // MIX_AIC_1_2: one AIC + two AIV per block
    context->SetTilingKey(dtype == ge::DT_BF16 ? 1 : 0);
    tiling.SaveToBuffer(context->GetRawTilingData()->GetData(), context->GetRawTilingData()->GetCapacity());
    context->GetRawTilingData()->SetDataSize(tiling.GetDataSize());
    size_t* workspace = context->GetWorkspaceSizes(1);
    workspace[0] = platform.GetLibApiWorkSpaceSize() + static_cast<size_t>(aivNum) * tiles.workspacePerCore;
    return ge::GRAPH_SUCCESS;
}

}  // namespace optiling
