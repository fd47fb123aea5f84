// SkiparseAttentionGrad custom operator (backward): definition, shape/dtype inference and tiling.
#include "skiparse_attention_common_host.h"

namespace optiling {
static ge::graphStatus TilingFunc(gert::TilingContext* context) {
    return SkiparseTiling(context, /*grad=*/true, /*textIndex=*/3, /*maskIndex=*/5);
}
}  // namespace optiling

namespace ge {
static graphStatus InferShape(gert::InferShapeContext* context) {
    for (size_t i = 0; i < 3; ++i) *context->GetOutputShape(i) = *context->GetInputShape(i);
    // dtext_key / dtext_value: the text key shape, or (B, N, 0, D) without text keys
    const gert::Shape* text = context->GetOptionalInputShape(3);
    gert::Shape empty = *context->GetInputShape(0);
    empty.SetDim(2, 0);
    *context->GetOutputShape(3) = text ? *text : empty;
    *context->GetOutputShape(4) = text ? *text : empty;
    return GRAPH_SUCCESS;
}

static graphStatus InferDataType(gert::InferDataTypeContext* context) {
    for (size_t i = 0; i < 5; ++i) context->SetOutputDataType(i, context->GetInputDataType(0));
    return GRAPH_SUCCESS;
}
}  // namespace ge

namespace ops {
class SkiparseAttentionGrad : public OpDef {
public:
    explicit SkiparseAttentionGrad(const char* name) : OpDef(name) {
        const std::vector<ge::DataType> io = {ge::DT_FLOAT16, ge::DT_BF16};
        const std::vector<ge::Format> nd = {ge::FORMAT_ND, ge::FORMAT_ND};
        for (const char* in : {"query", "key", "value"}) this->Input(in).ParamType(REQUIRED).DataType(io).Format(nd);
        for (const char* in : {"text_key", "text_value"}) this->Input(in).ParamType(OPTIONAL).DataType(io).Format(nd);
        this->Input("key_mask").ParamType(OPTIONAL).DataType({ge::DT_UINT8, ge::DT_UINT8}).Format(nd);
        this->Input("attention_out").ParamType(REQUIRED).DataType(io).Format(nd);
        this->Input("attention_out_grad").ParamType(REQUIRED).DataType(io).Format(nd);
        this->Input("softmax_max").ParamType(REQUIRED).DataType({ge::DT_FLOAT, ge::DT_FLOAT}).Format(nd);
        this->Input("softmax_sum").ParamType(REQUIRED).DataType({ge::DT_FLOAT, ge::DT_FLOAT}).Format(nd);
        for (const char* out : {"dq", "dk", "dv", "dtext_key", "dtext_value"}) {
            this->Output(out).ParamType(REQUIRED).DataType(io).Format(nd);
        }
        this->Attr("sparsity").Int();
        this->Attr("group").Bool();
        this->Attr("scale").Float();
        this->SetInferShape(ge::InferShape).SetInferDataType(ge::InferDataType);
        this->AICore().SetTiling(optiling::TilingFunc);
        this->AICore().AddConfig("ascend910b");
        this->AICore().AddConfig("ascend910_93");
    }
};
OP_ADD(SkiparseAttentionGrad);
}  // namespace ops
