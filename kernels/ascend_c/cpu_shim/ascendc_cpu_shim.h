// A host-memory implementation of the subset of the Ascend C API used by the Skiparse kernels.
//
// Written from the public Ascend C API descriptions (see docs/kernels.md), not from CANN sources. Its purpose is
// functional testing of unchanged kernel sources with g++: it runs blocks one after another, models the Unified
// Buffer (UB) as a 192 KiB arena and checks the rules that hardware silently punishes:
//   * DataCopy moves whole 32-byte blocks: a count whose byte size is not a multiple of 32 is rounded down;
//   * LocalTensor start addresses used by DataCopy / vector instructions must be 32-byte aligned;
//   * UB capacity (192 KiB) and at most 64 buffers per TPipe;
//   * queue protocol: AllocTensor -> EnQue -> DeQue -> FreeTensor, no more live tensors than slots, depth respected.
// Violations are reported on stderr and counted; with strict mode (env ASCENDC_SHIM_STRICT=1 or macro
// ASCENDC_SHIM_STRICT) the process aborts with the message. Capacity overflows always abort.
// Not modelled: pipeline concurrency (SetFlag/WaitFlag/PipeBarrier are no-ops), AIC/AIV split, cube fractal formats.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#define __global__
#define __aicore__
#define __gm__
#define GM_ADDR uint8_t*
#define KERNEL_TASK_TYPE_DEFAULT(x)

using half = _Float16;

// bfloat16 storage type with round-to-nearest-even conversion from float.
struct bfloat16_t {
    uint16_t bits = 0;
    bfloat16_t() = default;
    bfloat16_t(float f) {  // NOLINT: implicit like the device type
        uint32_t u;
        std::memcpy(&u, &f, 4);
        if ((u & 0x7fffffffu) > 0x7f800000u) { bits = 0x7fc0; return; }
        u += 0x7fffu + ((u >> 16) & 1u);
        bits = static_cast<uint16_t>(u >> 16);
    }
    operator float() const {
        uint32_t u = static_cast<uint32_t>(bits) << 16;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    }
};

namespace ascendc_shim {

constexpr uint32_t kUbBytes = 192 * 1024;
constexpr uint32_t kMaxBuffers = 64;
constexpr uint32_t kBlockBytes = 32;

struct State {
    uint32_t blockIdx = 0;
    uint32_t blockNum = 1;
    uint64_t tilingKey = 0;
    long violations = 0;
    long truncatedCopies = 0;
    alignas(64) uint8_t ub[kUbBytes];
};

inline State& state() {
    static State s;
    return s;
}

inline bool strict() {
#ifdef ASCENDC_SHIM_STRICT
    return true;
#else
    static const bool on = [] {
        const char* e = std::getenv("ASCENDC_SHIM_STRICT");
        return e != nullptr && e[0] != '\0' && e[0] != '0';
    }();
    return on;
#endif
}

[[noreturn]] inline void fatal(const char* what) {
    std::fprintf(stderr, "ascendc_shim: FATAL: %s\n", what);
    std::fflush(stderr);
    std::abort();
}

inline void violation(const char* what) {
    state().violations++;
    if (strict()) {
        std::fprintf(stderr, "ascendc_shim: strict mode violation: %s\n", what);
        std::fflush(stderr);
        std::abort();
    }
    if (state().violations <= 8) std::fprintf(stderr, "ascendc_shim: warning: %s\n", what);
}

inline bool inUb(const void* p) {
    auto* b = reinterpret_cast<const uint8_t*>(p);
    return b >= state().ub && b < state().ub + kUbBytes;
}

inline void checkAligned(const void* p, const char* api) {
    if (inUb(p) && (reinterpret_cast<uintptr_t>(p) - reinterpret_cast<uintptr_t>(state().ub)) % kBlockBytes) {
        char msg[160];
        std::snprintf(msg, sizeof(msg), "%s: local tensor address (UB offset %ld) is not 32-byte aligned", api,
                      static_cast<long>(reinterpret_cast<const uint8_t*>(p) - state().ub));
        violation(msg);
    }
}

template <typename T> inline float toF(T x) { return static_cast<float>(x); }
template <typename T> inline T fromF(float x) { return static_cast<T>(x); }

}  // namespace ascendc_shim

namespace AscendC {

enum class TPosition { GM, VECIN, VECOUT, VECCALC, A1, B1, A2, B2, CO1, CO2 };
enum class HardEvent { MTE2_V, V_MTE3, MTE3_V, MTE3_MTE2, MTE2_MTE3, V_MTE2, MTE2_S, V_S, S_V };
using event_t = int32_t;
enum pipe_t { PIPE_S, PIPE_V, PIPE_MTE2, PIPE_MTE3, PIPE_M, PIPE_ALL };
enum class RoundMode { CAST_NONE, CAST_RINT, CAST_ROUND, CAST_FLOOR, CAST_CEIL, CAST_TRUNC };

inline int64_t GetBlockIdx() { return ascendc_shim::state().blockIdx; }
inline int64_t GetBlockNum() { return ascendc_shim::state().blockNum; }
template <HardEvent E> inline void SetFlag(int32_t) {}
template <HardEvent E> inline void WaitFlag(int32_t) {}
template <pipe_t P> inline void PipeBarrier() {}

template <typename T> class GlobalTensor {
public:
    void SetGlobalBuffer(__gm__ T* p, uint64_t len = 0) { ptr_ = p; len_ = len; }
    GlobalTensor operator[](uint64_t off) const { GlobalTensor g; g.ptr_ = ptr_ + off; g.len_ = len_ > off ? len_ - off : 0; return g; }
    T GetValue(uint64_t i) const { return ptr_[i]; }
    void SetValue(uint64_t i, T v) { ptr_[i] = v; }
    __gm__ T* GetPhyAddr() const { return ptr_; }
private:
    T* ptr_ = nullptr;
    uint64_t len_ = 0;
};

template <typename T> class LocalTensor {
public:
    LocalTensor() = default;
    LocalTensor(T* p, uint32_t n, int32_t slot = -1, void* owner = nullptr) : ptr_(p), size_(n), slot_(slot), owner_(owner) {}
    LocalTensor operator[](uint32_t off) const {
        if (off > size_) ascendc_shim::fatal("LocalTensor offset beyond the tensor");
        return LocalTensor(ptr_ + off, size_ - off, -1, nullptr);
    }
    T GetValue(uint32_t i) const { bound(i); return ptr_[i]; }
    void SetValue(uint32_t i, T v) const { bound(i); ptr_[i] = v; }
    uint32_t GetSize() const { return size_; }
    T* GetPhyAddr() const { return ptr_; }
    template <typename U> LocalTensor<U> ReinterpretCast() const {
        return LocalTensor<U>(reinterpret_cast<U*>(ptr_), size_ * sizeof(T) / sizeof(U), slot_, owner_);
    }
    int32_t slot() const { return slot_; }
    void* owner() const { return owner_; }
private:
    void bound(uint32_t i) const { if (i >= size_) ascendc_shim::fatal("LocalTensor element access out of range"); }
    T* ptr_ = nullptr;
    uint32_t size_ = 0;
    int32_t slot_ = -1;
    void* owner_ = nullptr;
};

class TPipe;

// Common part of TQue/TBuf: a set of equally sized slots carved from the UB arena by TPipe::InitBuffer.
class TQueBase {
public:
    enum class SlotState { Free, Allocated, Queued, Dequeued };
protected:
    friend class TPipe;
    uint8_t* base_ = nullptr;
    uint32_t slotBytes_ = 0;
    std::vector<SlotState> slots_;
};

template <TPosition POS, int32_t DEPTH> class TQue : public TQueBase {
public:
    ~TQue() {
        for (auto s : slots_) if (s != SlotState::Free) { ascendc_shim::violation("TQue destroyed with a tensor not freed (missing FreeTensor)"); break; }
    }
    template <typename T> LocalTensor<T> AllocTensor() {
        for (size_t i = 0; i < slots_.size(); ++i) {
            if (slots_[i] == SlotState::Free) {
                slots_[i] = SlotState::Allocated;
                return LocalTensor<T>(reinterpret_cast<T*>(base_ + i * slotBytes_), slotBytes_ / sizeof(T), static_cast<int32_t>(i), this);
            }
        }
        ascendc_shim::fatal("AllocTensor: every buffer of this queue is in use (missing FreeTensor or too few buffers)");
    }
    template <typename T> bool EnQue(const LocalTensor<T>& t) {
        int32_t i = own(t, "EnQue");
        if (slots_[i] != SlotState::Allocated) ascendc_shim::violation("EnQue of a tensor that is not freshly allocated");
        if (static_cast<int32_t>(fifo_.size()) >= DEPTH) ascendc_shim::violation("EnQue beyond the queue depth");
        slots_[i] = SlotState::Queued;
        fifo_.push_back(i);
        return true;
    }
    template <typename T> LocalTensor<T> DeQue() {
        if (fifo_.empty()) ascendc_shim::fatal("DeQue on an empty queue (EnQue missing)");
        int32_t i = fifo_.front();
        fifo_.erase(fifo_.begin());
        slots_[i] = SlotState::Dequeued;
        return LocalTensor<T>(reinterpret_cast<T*>(base_ + i * slotBytes_), slotBytes_ / sizeof(T), i, this);
    }
    template <typename T> void FreeTensor(const LocalTensor<T>& t) {
        int32_t i = own(t, "FreeTensor");
        if (slots_[i] == SlotState::Queued) ascendc_shim::violation("FreeTensor of a tensor still in the queue (DeQue missing)");
        if (slots_[i] == SlotState::Free) ascendc_shim::violation("FreeTensor called twice");
        slots_[i] = SlotState::Free;
    }
private:
    template <typename T> int32_t own(const LocalTensor<T>& t, const char* api) {
        if (t.owner() != this || t.slot() < 0) {
            char msg[128];
            std::snprintf(msg, sizeof(msg), "%s: tensor does not come from this queue's AllocTensor/DeQue", api);
            ascendc_shim::fatal(msg);
        }
        return t.slot();
    }
    std::vector<int32_t> fifo_;
};

template <TPosition POS> class TBuf : public TQueBase {
public:
    template <typename T> LocalTensor<T> Get() { return LocalTensor<T>(reinterpret_cast<T*>(base_), slotBytes_ / sizeof(T)); }
    template <typename T> LocalTensor<T> Get(uint32_t n) {
        if (n * sizeof(T) > slotBytes_) ascendc_shim::fatal("TBuf::Get beyond the buffer size");
        return LocalTensor<T>(reinterpret_cast<T*>(base_), n);
    }
};

class TPipe;
inline TPipe*& CurrentPipe() {
    static TPipe* pipe = nullptr;
    return pipe;
}

class TPipe {
public:
    TPipe() { used_ = 0; buffers_ = 0; CurrentPipe() = this; }
    ~TPipe() { if (CurrentPipe() == this) CurrentPipe() = nullptr; }
    int32_t FetchEventID(HardEvent) { return 0; }
    template <class Q> void InitBuffer(Q& q, uint32_t num, uint32_t len) { carve(q, num, len); }
    template <TPosition POS> void InitBuffer(TBuf<POS>& b, uint32_t len) { carve(b, 1, len); }
    void Destroy() {}
    uint32_t UsedBytes() const { return used_; }
private:
    void carve(TQueBase& q, uint32_t num, uint32_t len) {
        uint32_t bytes = (len + ascendc_shim::kBlockBytes - 1) / ascendc_shim::kBlockBytes * ascendc_shim::kBlockBytes;
        if (buffers_ + num > ascendc_shim::kMaxBuffers) {
            char msg[128];
            std::snprintf(msg, sizeof(msg), "TPipe: more than %u buffers", ascendc_shim::kMaxBuffers);
            ascendc_shim::fatal(msg);
        }
        if (used_ + static_cast<uint64_t>(bytes) * num > ascendc_shim::kUbBytes) {
            char msg[160];
            std::snprintf(msg, sizeof(msg), "UB overflow: %u + %u x %u > %u bytes", used_, num, bytes, ascendc_shim::kUbBytes);
            ascendc_shim::fatal(msg);
        }
        q.base_ = ascendc_shim::state().ub + used_;
        q.slotBytes_ = bytes;
        q.slots_.assign(num, TQueBase::SlotState::Free);
        used_ += bytes * num;
        buffers_ += num;
    }
    uint32_t used_;
    uint32_t buffers_;
};

inline TPipe* GetTPipePtr() {
    if (CurrentPipe() == nullptr) ascendc_shim::fatal("GetTPipePtr: no TPipe constructed");
    return CurrentPipe();
}

// ------------------------------------------------------------------------------------------------ data movement
struct DataCopyParams {
    uint16_t blockCount = 1;
    uint16_t blockLen = 0;   // in 32-byte blocks
    uint16_t srcStride = 0;  // gap between blocks, in 32-byte blocks
    uint16_t dstStride = 0;
};

namespace detail {
template <typename T> inline uint32_t copyBytes(uint32_t count) {
    uint64_t bytes = static_cast<uint64_t>(count) * sizeof(T);
    if (bytes % ascendc_shim::kBlockBytes) {
        ascendc_shim::state().truncatedCopies++;
        char msg[160];
        std::snprintf(msg, sizeof(msg), "DataCopy of %u elements (%llu bytes) is not a multiple of 32 bytes; hardware rounds it down",
                      count, static_cast<unsigned long long>(bytes));
        ascendc_shim::violation(msg);
    }
    return static_cast<uint32_t>(bytes / ascendc_shim::kBlockBytes * ascendc_shim::kBlockBytes);
}
template <typename T> inline void strided(T* dst, const T* src, const DataCopyParams& p) {
    const uint64_t blk = ascendc_shim::kBlockBytes;
    if (p.blockCount > 4095) ascendc_shim::violation("strided DataCopy: blockCount above 4095");
    if (p.blockLen == 0) ascendc_shim::violation("strided DataCopy: blockLen 0 (units are 32-byte blocks)");
    auto* d = reinterpret_cast<uint8_t*>(dst);
    auto* s = reinterpret_cast<const uint8_t*>(src);
    for (uint32_t i = 0; i < p.blockCount; ++i) {
        std::memmove(d + i * (p.blockLen + p.dstStride) * blk, s + i * (p.blockLen + p.srcStride) * blk, p.blockLen * blk);
    }
}
}  // namespace detail

template <typename T> inline void DataCopy(const LocalTensor<T>& dst, const GlobalTensor<T>& src, uint32_t count) {
    ascendc_shim::checkAligned(dst.GetPhyAddr(), "DataCopy GM->UB");
    uint32_t bytes = detail::copyBytes<T>(count);
    if (bytes > dst.GetSize() * sizeof(T)) ascendc_shim::fatal("DataCopy GM->UB beyond the local tensor");
    std::memcpy(dst.GetPhyAddr(), src.GetPhyAddr(), bytes);
}
template <typename T> inline void DataCopy(const GlobalTensor<T>& dst, const LocalTensor<T>& src, uint32_t count) {
    ascendc_shim::checkAligned(src.GetPhyAddr(), "DataCopy UB->GM");
    uint32_t bytes = detail::copyBytes<T>(count);
    if (bytes > src.GetSize() * sizeof(T)) ascendc_shim::fatal("DataCopy UB->GM beyond the local tensor");
    std::memcpy(dst.GetPhyAddr(), src.GetPhyAddr(), bytes);
}
template <typename T> inline void DataCopy(const LocalTensor<T>& dst, const LocalTensor<T>& src, uint32_t count) {
    ascendc_shim::checkAligned(dst.GetPhyAddr(), "DataCopy UB->UB");
    ascendc_shim::checkAligned(src.GetPhyAddr(), "DataCopy UB->UB");
    std::memmove(dst.GetPhyAddr(), src.GetPhyAddr(), detail::copyBytes<T>(count));
}
template <typename T> inline void DataCopy(const LocalTensor<T>& dst, const GlobalTensor<T>& src, const DataCopyParams& p) {
    ascendc_shim::checkAligned(dst.GetPhyAddr(), "DataCopy GM->UB (strided)");
    uint64_t span = (static_cast<uint64_t>(p.blockCount) * (p.blockLen + p.dstStride) - p.dstStride) * ascendc_shim::kBlockBytes;
    if (p.blockCount && span > dst.GetSize() * sizeof(T)) ascendc_shim::fatal("strided DataCopy GM->UB beyond the local tensor");
    detail::strided(dst.GetPhyAddr(), src.GetPhyAddr(), p);
}
template <typename T> inline void DataCopy(const GlobalTensor<T>& dst, const LocalTensor<T>& src, const DataCopyParams& p) {
    ascendc_shim::checkAligned(src.GetPhyAddr(), "DataCopy UB->GM (strided)");
    uint64_t span = (static_cast<uint64_t>(p.blockCount) * (p.blockLen + p.srcStride) - p.srcStride) * ascendc_shim::kBlockBytes;
    if (p.blockCount && span > src.GetSize() * sizeof(T)) ascendc_shim::fatal("strided DataCopy UB->GM beyond the local tensor");
    detail::strided(dst.GetPhyAddr(), src.GetPhyAddr(), p);
}

// ------------------------------------------------------------------------------------- vector instructions (count form)
namespace detail {
template <typename T> inline void vcheck(const LocalTensor<T>& t, uint32_t n, const char* api) {
    ascendc_shim::checkAligned(t.GetPhyAddr(), api);
    if (!ascendc_shim::inUb(t.GetPhyAddr())) ascendc_shim::fatal("vector instruction on a tensor outside the Unified Buffer");
    if (n > t.GetSize()) ascendc_shim::fatal("vector instruction count exceeds the local tensor");
}
}  // namespace detail

#define ASCENDC_SHIM_BINARY(NAME, EXPR)                                                                         \
    template <typename T> inline void NAME(const LocalTensor<T>& dst, const LocalTensor<T>& a, const LocalTensor<T>& b, \
                                           int32_t n) {                                                         \
        detail::vcheck(dst, n, #NAME); detail::vcheck(a, n, #NAME); detail::vcheck(b, n, #NAME);                 \
        T* d = dst.GetPhyAddr(); const T* x = a.GetPhyAddr(); const T* y = b.GetPhyAddr();                      \
        for (int32_t i = 0; i < n; ++i) { float u = static_cast<float>(x[i]), v = static_cast<float>(y[i]); d[i] = static_cast<T>(EXPR); } \
    }
ASCENDC_SHIM_BINARY(Add, u + v)
ASCENDC_SHIM_BINARY(Sub, u - v)
ASCENDC_SHIM_BINARY(Mul, u * v)
ASCENDC_SHIM_BINARY(Div, u / v)
ASCENDC_SHIM_BINARY(Max, (u > v ? u : v))
#undef ASCENDC_SHIM_BINARY

#define ASCENDC_SHIM_SCALAR(NAME, EXPR)                                                                         \
    template <typename T> inline void NAME(const LocalTensor<T>& dst, const LocalTensor<T>& a, T s, int32_t n) { \
        detail::vcheck(dst, n, #NAME); detail::vcheck(a, n, #NAME);                                              \
        T* d = dst.GetPhyAddr(); const T* x = a.GetPhyAddr(); float v = static_cast<float>(s);                  \
        for (int32_t i = 0; i < n; ++i) { float u = static_cast<float>(x[i]); d[i] = static_cast<T>(EXPR); }    \
    }
ASCENDC_SHIM_SCALAR(Adds, u + v)
ASCENDC_SHIM_SCALAR(Muls, u * v)
ASCENDC_SHIM_SCALAR(Maxs, (u > v ? u : v))
#undef ASCENDC_SHIM_SCALAR

template <typename T> inline void Exp(const LocalTensor<T>& dst, const LocalTensor<T>& a, int32_t n) {
    detail::vcheck(dst, n, "Exp"); detail::vcheck(a, n, "Exp");
    for (int32_t i = 0; i < n; ++i) dst.GetPhyAddr()[i] = static_cast<T>(std::exp(static_cast<float>(a.GetPhyAddr()[i])));
}
template <typename T> inline void Duplicate(const LocalTensor<T>& dst, T v, int32_t n) {
    detail::vcheck(dst, n, "Duplicate");
    for (int32_t i = 0; i < n; ++i) dst.GetPhyAddr()[i] = v;
}
template <typename D, typename S> inline void Cast(const LocalTensor<D>& dst, const LocalTensor<S>& src, RoundMode, int32_t n) {
    detail::vcheck(dst, n, "Cast"); detail::vcheck(src, n, "Cast");
    for (int32_t i = 0; i < n; ++i) dst.GetPhyAddr()[i] = static_cast<D>(static_cast<float>(src.GetPhyAddr()[i]));
}

// Reductions: result in dst[0]. Like the hardware, partial results are formed per 256-byte repeat and then combined.
namespace detail {
template <typename T, typename F> inline void reduce(const LocalTensor<T>& dst, const LocalTensor<T>& src,
                                                     const LocalTensor<T>& work, int32_t n, float init, F op, const char* api) {
    vcheck(dst, 1, api); vcheck(src, n, api); vcheck(work, 1, api);
    const int32_t perRepeat = 256 / sizeof(T);
    float acc = init;
    for (int32_t r = 0; r < n; r += perRepeat) {
        float part = init;
        for (int32_t i = r; i < n && i < r + perRepeat; ++i) part = op(part, static_cast<float>(src.GetPhyAddr()[i]));
        acc = op(acc, part);
    }
    dst.GetPhyAddr()[0] = static_cast<T>(acc);
}
}  // namespace detail
template <typename T> inline void ReduceMax(const LocalTensor<T>& dst, const LocalTensor<T>& src, const LocalTensor<T>& work,
                                            int32_t n, bool calIndex = false) {
    (void)calIndex;
    detail::reduce(dst, src, work, n, -std::numeric_limits<float>::infinity(), [](float a, float b) { return a > b ? a : b; }, "ReduceMax");
}
template <typename T> inline void ReduceSum(const LocalTensor<T>& dst, const LocalTensor<T>& src, const LocalTensor<T>& work, int32_t n) {
    detail::reduce(dst, src, work, n, 0.0f, [](float a, float b) { return a + b; }, "ReduceSum");
}

}  // namespace AscendC

// ------------------------------------------------------------------------------------------------ kernel plumbing
#define GET_TILING_DATA(var, ptr) \
    SkiparseTilingData var;       \
    std::memcpy(&var, (ptr), sizeof(SkiparseTilingData))
#define TILING_KEY_IS(k) (ascendc_shim::state().tilingKey == static_cast<uint64_t>(k))

namespace AscendC {
inline GM_ADDR GetUserWorkspace(GM_ADDR workspace) { return workspace; }
inline GM_ADDR GetSysWorkSpacePtr() { return nullptr; }
}  // namespace AscendC

namespace ascendc_shim {
// Runs `kernel(args...)` once per block, sequentially, like ICPU_RUN_KF in CANN's CPU debug mode.
template <typename K, typename... Args> inline void RunKernel(K kernel, uint32_t blockDim, uint64_t tilingKey, Args... args) {
    state().blockNum = blockDim;
    state().tilingKey = tilingKey;
    for (uint32_t b = 0; b < blockDim; ++b) {
        state().blockIdx = b;
        kernel(args...);
    }
}
}  // namespace ascendc_shim
