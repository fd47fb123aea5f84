// SkiparseAttention custom operator (forward): definition, shape/dtype inference and tiling.
// Inputs are BNSD with video tokens in original order; see op_kernel/skiparse_layout.h for the index rules.
#include "skiparse_attention_common_host.h"

namespace optiling {
static ge::graphStatus TilingFunc(gert::TilingContext* context) {
    return SkiparseTiling(context, /*grad=*/false, /*textIndex=*/3, /*maskIndex=*/5);
}
}  // namespace optiling

namespace ge {
static graphStatus InferShape(gert::InferShapeContext* context) {
    const gert::Shape* q = context->GetInputShape(0);
    *context->GetOutputShape(0) = *q;
    gert::Shape stat;
    stat.SetDimNum(4);
    for (size_t i = 0; i < 3; ++i) stat.SetDim(i, q->GetDim(i));
    stat.SetDim(3, 8);  // max/sum broadcast to 8 fp32 (one 32-byte block per row), like FlashAttentionScore
    *context->GetOutputShape(1) = stat;
    *context->GetOutputShape(2) = stat;
    return GRAPH_SUCCESS;
}

static graphStatus InferDataType(gert::InferDataTypeContext* context) {
    context->SetOutputDataType(0, context->GetInputDataType(0));
    context->SetOutputDataType(1, DT_FLOAT);
    context->SetOutputDataType(2, DT_FLOAT);
    return GRAPH_SUCCESS;
}
}  // namespace ge

namespace ops {
class SkiparseAttention : public OpDef {
public:
    explicit SkiparseAttention(const char* name) : OpDef(name) {
        for (const char* in : {"query", "key", "value"}) {
            this->Input(in).ParamType(REQUIRED).DataType({ge::DT_FLOAT16, ge::DT_BF16}).Format({ge::FORMAT_ND, ge::FORMAT_ND});
        }
        for (const char* in : {"text_key", "text_value"}) {
            this->Input(in).ParamType(OPTIONAL).DataType({ge::DT_FLOAT16, ge::DT_BF16}).Format({ge::FORMAT_ND, ge::FORMAT_ND});
        }
        this->Input("key_mask").ParamType(OPTIONAL).DataType({ge::DT_UINT8, ge::DT_UINT8}).Format({ge::FORMAT_ND, ge::FORMAT_ND});
        this->Output("attention_out").ParamType(REQUIRED).DataType({ge::DT_FLOAT16, ge::DT_BF16}).Format({ge::FORMAT_ND, ge::FORMAT_ND});
        this->Output("softmax_max").ParamType(REQUIRED).DataType({ge::DT_FLOAT, ge::DT_FLOAT}).Format({ge::FORMAT_ND, ge::FORMAT_ND});
        this->Output("softmax_sum").ParamType(REQUIRED).DataType({ge::DT_FLOAT, ge::DT_FLOAT}).Format({ge::FORMAT_ND, ge::FORMAT_ND});
        this->Attr("sparsity").Int();
        this->Attr("group").Bool();
        this->Attr("scale").Float();
        this->SetInferShape(ge::InferShape).SetInferDataType(ge::InferDataType);
        this->AICore().SetTiling(optiling::TilingFunc);
        this->AICore().AddConfig("ascend910b");
        this->AICore().AddConfig("ascend910_93");
    }
};
OP_ADD(SkiparseAttention);
}  // namespace ops
