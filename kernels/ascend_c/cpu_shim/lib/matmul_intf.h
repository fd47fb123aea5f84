// Host-memory model of the Ascend C high-level Matmul API (GM, ND format only), for the CPU shim.
//
// C = op(A) * op(B) with fp32 accumulation. Row strides come from SetOrgShape (as on the device, a larger original
// shape than the single-core shape is how a kernel reads a strided sub-matrix of GM):
//   A (M x K):  row stride orgKa, or orgM when A is transposed (stored K x M);
//   B (K x N):  row stride orgN,  or orgKb when B is transposed (stored N x K);
//   C (M x N):  row stride orgKc when non-zero, else orgN.
// IterateAll(c, enAtomic=1) accumulates into C (the device's atomic add on GM).
#pragma once
#include <algorithm>
#include <vector>

#include "../ascendc_cpu_shim.h"

enum class CubeFormat { ND, NZ };

struct TCubeTiling {  // the fields the shim uses; the device struct has many more, filled by matmul_tiling on the host
    int32_t M, N, Ka, Kb;
    int32_t singleCoreM, singleCoreN, singleCoreK;
};

namespace matmul {
struct MatmulConfig { int32_t unused; };
inline constexpr MatmulConfig CFG_NORM{0};

template <AscendC::TPosition POS, CubeFormat FMT, typename T, bool ISTRANS = false> struct MatmulType {
    using Type = T;
    static constexpr bool isTrans = ISTRANS;
};

template <class A_TYPE, class B_TYPE, class C_TYPE, class BIAS_TYPE = C_TYPE, const MatmulConfig& CFG = CFG_NORM>
class Matmul {
    using A = typename A_TYPE::Type;
    using B = typename B_TYPE::Type;
    using C = typename C_TYPE::Type;
public:
    void Init(const TCubeTiling* t) {
        if (t == nullptr) ascendc_shim::fatal("Matmul used without tiling (REGIST_MATMUL_OBJ missing)");
        m_ = t->singleCoreM; n_ = t->singleCoreN; k_ = t->singleCoreK;
        orgM_ = t->M; orgN_ = t->N; orgKa_ = t->Ka; orgKb_ = t->Kb; orgKc_ = 0;
        ready_ = true;
    }
    void SetOrgShape(int32_t orgM, int32_t orgN, int32_t orgKa, int32_t orgKb = 0, int32_t orgKc = 0) {
        orgM_ = orgM; orgN_ = orgN; orgKa_ = orgKa; orgKb_ = orgKb ? orgKb : orgKa; orgKc_ = orgKc;
    }
    void SetTensorA(const AscendC::GlobalTensor<A>& a, bool isTransposeA = false) {
        if (isTransposeA && !A_TYPE::isTrans) ascendc_shim::fatal("SetTensorA(transposed) needs MatmulType<..., isTrans=true>");
        a_ = a.GetPhyAddr(); ta_ = isTransposeA;
    }
    void SetTensorB(const AscendC::GlobalTensor<B>& b, bool isTransposeB = false) {
        if (isTransposeB && !B_TYPE::isTrans) ascendc_shim::fatal("SetTensorB(transposed) needs MatmulType<..., isTrans=true>");
        b_ = b.GetPhyAddr(); tb_ = isTransposeB;
    }
    void SetTail(int32_t tailM = -1, int32_t tailN = -1, int32_t tailK = -1) {
        if (tailM > 0) m_ = tailM;
        if (tailN > 0) n_ = tailN;
        if (tailK > 0) k_ = tailK;
    }
    void IterateAll(const AscendC::GlobalTensor<C>& c, uint8_t enAtomic = 0) {
        if (!ready_) ascendc_shim::fatal("Matmul::IterateAll before Init/REGIST_MATMUL_OBJ");
        if (a_ == nullptr || b_ == nullptr) ascendc_shim::fatal("Matmul::IterateAll before SetTensorA/SetTensorB");
        const int64_t lda = ta_ ? orgM_ : orgKa_, ldb = tb_ ? orgKb_ : orgN_, ldc = orgKc_ ? orgKc_ : orgN_;
        std::vector<float> bt(static_cast<size_t>(k_) * n_), row(n_);
        for (int32_t kk = 0; kk < k_; ++kk)
            for (int32_t j = 0; j < n_; ++j)
                bt[static_cast<size_t>(kk) * n_ + j] = static_cast<float>(tb_ ? b_[j * ldb + kk] : b_[kk * ldb + j]);
        C* out = c.GetPhyAddr();
        for (int32_t i = 0; i < m_; ++i) {
            std::fill(row.begin(), row.end(), 0.0f);
            for (int32_t kk = 0; kk < k_; ++kk) {
                const float x = static_cast<float>(ta_ ? a_[kk * lda + i] : a_[i * lda + kk]);
                const float* br = &bt[static_cast<size_t>(kk) * n_];
                for (int32_t j = 0; j < n_; ++j) row[j] += x * br[j];
            }
            for (int32_t j = 0; j < n_; ++j) {
                float v = row[j] + (enAtomic ? static_cast<float>(out[i * ldc + j]) : 0.0f);
                out[i * ldc + j] = static_cast<C>(v);
            }
        }
    }
    void End() { a_ = nullptr; b_ = nullptr; }
private:
    bool ready_ = false, ta_ = false, tb_ = false;
    const A* a_ = nullptr;
    const B* b_ = nullptr;
    int32_t m_ = 0, n_ = 0, k_ = 0, orgM_ = 0, orgN_ = 0, orgKa_ = 0, orgKb_ = 0, orgKc_ = 0;
};
}  // namespace matmul

namespace ascendc_shim {
inline void registMatmul() {}
template <class MM, class... Rest> inline void registMatmul(MM& mm, const TCubeTiling* t, Rest&&... rest) {
    mm.Init(t);
    registMatmul(rest...);
}
}  // namespace ascendc_shim
#define REGIST_MATMUL_OBJ(pipe, workspace, ...) ascendc_shim::registMatmul(__VA_ARGS__)
