// Skiparse flash attention (forward and backward) in Ascend C.
//
// Work split: a work item is a query tile (Br rows of one lane of one sub-sequence of one (batch, head)) for the
// forward and the dQ pass, or a key tile (Bc rows of a lane, or of the text keys) for the dK/dV pass. Items are dealt
// round-robin to blocks. Per (query tile, key tile) pair the cube computes S = Q K^T into a per-block GM workspace
// (Q and K rows are strided in GM: SetOrgShape gives the Matmul the full row stride), the vector unit applies scale,
// key mask and the online softmax in fp32, writes P (input dtype) back to the workspace, and the cube computes P V.
// Softmax statistics are saved like FlashAttentionScore does: max and sum per query row, broadcast to 8 fp32 so a
// row is one 32-byte block (B, heads, seqLen, 8).
// The backward is deterministic and atomic-free across blocks: one pass owns dK/dV of a key tile (it loops over every
// query tile that sees it, accumulating in its own workspace), another owns dQ of a query tile.
// Requirements (checked by the host tiling): headDim % 16 == 0, Br % 8 == 0, Bc % 16 == 0.
#pragma once
#include "kernel_operator.h"
#include "lib/matmul_intf.h"
#include "skiparse_layout.h"
#include "skiparse_tiling_data.h"

namespace skiparse {

using namespace AscendC;

constexpr float kNegInf = -__builtin_huge_valf();
constexpr float kRunningMaxFloor = -3.0e38f;  // finite start of the running max: exp(floor - floor) = 1, never NaN
constexpr uint32_t kStatWidth = 8;            // fp32 per saved statistic row (one 32-byte block)
constexpr uint32_t kBlock = 32;

// Make results of one pipe visible to another (e.g. vector results read by scalar GetValue).
template <HardEvent E>
__aicore__ inline void WaitPipe() {
    event_t id = static_cast<event_t>(GetTPipePtr()->FetchEventID(E));
    SetFlag<E>(id);
    WaitFlag<E>(id);
}

// A tile of rows taken from one lane (or from the text tokens): GM rows first, first + rowStride, ...
struct RowTile {
    uint64_t elemOffset;  // offset of the first row in the (B, heads, S, D) tensor, elements
    uint32_t rowStride;   // elements between consecutive rows
    uint32_t rows;        // valid rows (<= tile size)
    uint32_t maskIndex;   // index of the first row in a key-mask row of length seqLen + textLen
    uint32_t maskStride;
    uint64_t statOffset;  // offset of the first row in the (B, heads, seqLen, 8) statistics, elements
    bool text;            // rows come from the text key/value tensors
};

template <typename T>
class SkiparseBase {
protected:
    using ScoreMM = matmul::Matmul<matmul::MatmulType<TPosition::GM, CubeFormat::ND, T>,
                                   matmul::MatmulType<TPosition::GM, CubeFormat::ND, T, true>,
                                   matmul::MatmulType<TPosition::GM, CubeFormat::ND, float>>;
    using OutMM = matmul::Matmul<matmul::MatmulType<TPosition::GM, CubeFormat::ND, T>,
                                 matmul::MatmulType<TPosition::GM, CubeFormat::ND, T>,
                                 matmul::MatmulType<TPosition::GM, CubeFormat::ND, float>>;
    using GradKVMM = matmul::Matmul<matmul::MatmulType<TPosition::GM, CubeFormat::ND, T, true>,
                                    matmul::MatmulType<TPosition::GM, CubeFormat::ND, T>,
                                    matmul::MatmulType<TPosition::GM, CubeFormat::ND, float>>;

    // The global tensors the forward writes and the backward reads again.
    __aicore__ inline void BindForwardTensors(GM_ADDR q, GM_ADDR k, GM_ADDR v, GM_ADDR textK, GM_ADDR textV,
                                              GM_ADDR keyMask, GM_ADDR out, GM_ADDR softmaxMax, GM_ADDR softmaxSum) {
        qGm_.SetGlobalBuffer((__gm__ T*)q);
        kGm_.SetGlobalBuffer((__gm__ T*)k);
        vGm_.SetGlobalBuffer((__gm__ T*)v);
        textKGm_.SetGlobalBuffer((__gm__ T*)textK);
        textVGm_.SetGlobalBuffer((__gm__ T*)textV);
        maskGm_.SetGlobalBuffer((__gm__ uint8_t*)keyMask);
        outGm_.SetGlobalBuffer((__gm__ T*)out);
        maxGm_.SetGlobalBuffer((__gm__ float*)softmaxMax);
        sumGm_.SetGlobalBuffer((__gm__ float*)softmaxSum);
    }

    __aicore__ inline void InitShape(const SkiparseTilingData& t) {
        tiling_ = t;
        n_ = t.seqLen; l_ = t.textLen; d_ = t.headDim; k_ = t.sparsity; group_ = t.group;
        br_ = t.blockRows; bc_ = t.blockCols;
        lanes_ = SkiparseLanesPerSubseq(k_, group_);
        qTilesPerLane_ = SkiparseCeilDiv(SkiparseMaxLaneCount(n_, k_, group_), br_);
        qItems_ = t.batch * t.heads * k_ * lanes_ * qTilesPerLane_;
        rowBlocks_ = static_cast<uint16_t>(d_ * sizeof(T) / kBlock);
    }

    // Query tile `item` of the forward / dQ pass; rows == 0 when the tile is beyond its lane.
    __aicore__ inline RowTile QueryTile(uint32_t item, uint32_t& bh, uint32_t& r) {
        uint32_t qt = item % qTilesPerLane_;
        uint32_t rest = item / qTilesPerLane_;
        uint32_t c = rest % lanes_;
        rest /= lanes_;
        r = rest % k_;
        bh = rest / k_;
        return VideoTile(bh, SkiparseMakeLane(n_, k_, group_, r, c), qt, br_);
    }

    __aicore__ inline RowTile VideoTile(uint32_t bh, const SkiparseLane& lane, uint32_t tile, uint32_t size) {
        RowTile t;
        uint32_t first = tile * size;
        t.rows = lane.count > first ? (lane.count - first < size ? lane.count - first : size) : 0;
        uint32_t token = lane.base + first * lane.stride;
        t.elemOffset = (static_cast<uint64_t>(bh) * n_ + token) * d_;
        t.rowStride = lane.stride * d_;
        t.maskIndex = token;
        t.maskStride = lane.stride;
        t.statOffset = (static_cast<uint64_t>(bh) * n_ + token) * kStatWidth;
        t.text = false;
        return t;
    }

    __aicore__ inline RowTile TextTile(uint32_t bh, uint32_t tile) {
        RowTile t;
        uint32_t first = tile * bc_;
        t.rows = l_ - first < bc_ ? l_ - first : bc_;
        t.elemOffset = (static_cast<uint64_t>(bh) * l_ + first) * d_;
        t.rowStride = d_;
        t.maskIndex = n_ + first;
        t.maskStride = 1;
        t.statOffset = 0;
        t.text = true;
        return t;
    }

    __aicore__ inline DataCopyParams RowCopy(const RowTile& t) {
        DataCopyParams p;
        p.blockCount = static_cast<uint16_t>(t.rows);
        p.blockLen = rowBlocks_;
        p.srcStride = static_cast<uint16_t>((t.rowStride - d_) * sizeof(T) / kBlock);
        p.dstStride = 0;
        return p;
    }
    __aicore__ inline DataCopyParams RowStore(const RowTile& t) {
        DataCopyParams p = RowCopy(t);
        p.dstStride = p.srcStride;
        p.srcStride = 0;
        return p;
    }
    __aicore__ inline DataCopyParams StatCopy(const RowTile& t) {  // one 32-byte block per row, rows maskStride apart
        DataCopyParams p;
        p.blockCount = static_cast<uint16_t>(t.rows);
        p.blockLen = 1;
        p.srcStride = static_cast<uint16_t>(t.maskStride - 1);
        p.dstStride = 0;
        return p;
    }

    // bias[j] = -inf for masked keys of the tile, 0 otherwise (scalar reads: the mask rows are strided bytes).
    __aicore__ inline void BuildKeyBias(uint32_t batch, const RowTile& kt, const LocalTensor<float>& bias) {
        const uint64_t rowBase = static_cast<uint64_t>(batch) * (n_ + l_);
        for (uint32_t j = 0; j < kt.rows; ++j) {
            uint8_t masked = maskGm_.GetValue(rowBase + kt.maskIndex + static_cast<uint64_t>(j) * kt.maskStride);
            bias.SetValue(j, masked ? kNegInf : 0.0f);
        }
        WaitPipe<HardEvent::S_V>();
    }

    __aicore__ inline uint32_t KeyTilesOfLane(const SkiparseLane& lane) { return SkiparseCeilDiv(lane.count, bc_); }
    __aicore__ inline uint32_t TextTiles() { return SkiparseCeilDiv(l_, bc_); }

    // S = Q K^T (or dP = dO V^T) for a query tile and a key tile into `dst` (Br x Bc fp32, row stride Bc).
    __aicore__ inline void ScoreMatmul(const GlobalTensor<T>& a, const RowTile& qt, const GlobalTensor<T>& b,
                                       const RowTile& kt, const GlobalTensor<float>& dst) {
        mmScore_.SetOrgShape(br_, bc_, qt.rowStride, kt.rowStride, bc_);
        mmScore_.SetTensorA(a[qt.elemOffset]);
        mmScore_.SetTensorB(b[kt.elemOffset], true);
        mmScore_.SetTail(qt.rows, kt.rows, d_);
        mmScore_.IterateAll(dst);
        mmScore_.End();
    }

    SkiparseTilingData tiling_;
    TPipe pipe_;
    ScoreMM mmScore_;
    OutMM mmOut_;
    GradKVMM mmGradKV_;
    GlobalTensor<T> qGm_, kGm_, vGm_, textKGm_, textVGm_, outGm_;
    GlobalTensor<uint8_t> maskGm_;
    GlobalTensor<float> maxGm_, sumGm_;
    uint32_t n_ = 0, l_ = 0, d_ = 0, k_ = 0, group_ = 0, br_ = 0, bc_ = 0, lanes_ = 0, qTilesPerLane_ = 0, qItems_ = 0;
    uint16_t rowBlocks_ = 0;
};

// ------------------------------------------------------------------------------------------------------- forward
template <typename T>
class SkiparseAttentionFwd : public SkiparseBase<T> {
    using B = SkiparseBase<T>;
public:
    __aicore__ inline void Init(GM_ADDR q, GM_ADDR k, GM_ADDR v, GM_ADDR textK, GM_ADDR textV, GM_ADDR keyMask,
                                GM_ADDR out, GM_ADDR softmaxMax, GM_ADDR softmaxSum, GM_ADDR workspace,
                                const SkiparseTilingData& t) {
        B::InitShape(t);
        B::BindForwardTensors(q, k, v, textK, textV, keyMask, out, softmaxMax, softmaxSum);
        const uint32_t br = B::br_, bc = B::bc_, d = B::d_;
        GM_ADDR ws = GetUserWorkspace(workspace) + static_cast<uint64_t>(GetBlockIdx()) * t.workspacePerCore;
        sWs_.SetGlobalBuffer((__gm__ float*)ws);
        pvWs_.SetGlobalBuffer((__gm__ float*)(ws + br * bc * sizeof(float)));
        pWs_.SetGlobalBuffer((__gm__ T*)(ws + br * bc * sizeof(float) + br * d * sizeof(float)));
        REGIST_MATMUL_OBJ(&B::pipe_, GetSysWorkSpacePtr(), B::mmScore_, &t.mmScore, B::mmOut_, &t.mmOut);

        B::pipe_.InitBuffer(inS_, 1, br * bc * sizeof(float));
        B::pipe_.InitBuffer(outP_, 1, br * bc * sizeof(T));
        B::pipe_.InitBuffer(inPV_, 1, br * d * sizeof(float));
        B::pipe_.InitBuffer(outO_, 1, br * d * sizeof(T));
        B::pipe_.InitBuffer(outStat_, 2, br * kStatWidth * sizeof(float));
        B::pipe_.InitBuffer(accBuf_, br * d * sizeof(float));
        B::pipe_.InitBuffer(maxBuf_, br * sizeof(float));
        B::pipe_.InitBuffer(newMaxBuf_, br * sizeof(float));
        B::pipe_.InitBuffer(sumBuf_, br * sizeof(float));
        B::pipe_.InitBuffer(tileSumBuf_, br * sizeof(float));
        B::pipe_.InitBuffer(alphaBuf_, br * sizeof(float));
        B::pipe_.InitBuffer(biasBuf_, bc * sizeof(float));
        B::pipe_.InitBuffer(workBuf_, 2 * kBlock * sizeof(float));
    }

    __aicore__ inline void Process() {
        for (uint32_t item = GetBlockIdx(); item < B::qItems_; item += B::tiling_.usedCoreNum) {
            uint32_t bh, r;
            RowTile qt = B::QueryTile(item, bh, r);
            if (qt.rows == 0) continue;
            ProcessQueryTile(bh, r, qt);
        }
    }

private:
    __aicore__ inline void ProcessQueryTile(uint32_t bh, uint32_t r, const RowTile& qt) {
        const uint32_t br = B::br_, d = B::d_;
        LocalTensor<float> acc = accBuf_.template Get<float>();
        LocalTensor<float> runMax = maxBuf_.template Get<float>();
        LocalTensor<float> runSum = sumBuf_.template Get<float>();
        Duplicate(acc, 0.0f, br * d);
        Duplicate(runMax, kRunningMaxFloor, br);
        Duplicate(runSum, 0.0f, br);
        for (uint32_t c = 0; c < B::lanes_; ++c) {
            SkiparseLane lane = SkiparseMakeLane(B::n_, B::k_, B::group_, r, c);
            for (uint32_t kt = 0; kt < B::KeyTilesOfLane(lane); ++kt) {
                ProcessKeyTile(bh, qt, B::VideoTile(bh, lane, kt, B::bc_), B::kGm_, B::vGm_);
            }
        }
        for (uint32_t kt = 0; kt < B::TextTiles(); ++kt) {
            ProcessKeyTile(bh, qt, B::TextTile(bh, kt), B::textKGm_, B::textVGm_);
        }
        Finish(qt);
    }

    __aicore__ inline void ProcessKeyTile(uint32_t bh, const RowTile& qt, const RowTile& kt, const GlobalTensor<T>& kSrc,
                                          const GlobalTensor<T>& vSrc) {
        const uint32_t bc = B::bc_, d = B::d_, rows = qt.rows, cols = kt.rows;
        B::ScoreMatmul(B::qGm_, qt, kSrc, kt, sWs_);
        PipeBarrier<PIPE_ALL>();  // cube result in GM before the vector unit reads it

        LocalTensor<float> bias = biasBuf_.template Get<float>();
        if (B::tiling_.hasMask) B::BuildKeyBias(bh / B::tiling_.heads, kt, bias);
        LocalTensor<float> s = inS_.template AllocTensor<float>();
        DataCopy(s, sWs_, rows * bc);
        inS_.EnQue(s);
        s = inS_.template DeQue<float>();

        LocalTensor<float> runMax = maxBuf_.template Get<float>();
        LocalTensor<float> newMax = newMaxBuf_.template Get<float>();
        LocalTensor<float> runSum = sumBuf_.template Get<float>();
        LocalTensor<float> tileSum = tileSumBuf_.template Get<float>();
        LocalTensor<float> alpha = alphaBuf_.template Get<float>();
        LocalTensor<float> work = workBuf_.template Get<float>();
        LocalTensor<T> p = outP_.template AllocTensor<T>();
        for (uint32_t i = 0; i < rows; ++i) {
            LocalTensor<float> row = s[i * bc];
            Muls(row, row, B::tiling_.scale, cols);
            if (B::tiling_.hasMask) Add(row, row, bias, cols);
            ReduceMax(work, row, work[kBlock], cols);
            WaitPipe<HardEvent::V_S>();
            float tileMax = work.GetValue(0);
            float prevMax = runMax.GetValue(i);
            float m = tileMax > prevMax ? tileMax : prevMax;
            newMax.SetValue(i, m);
            Adds(row, row, -m, cols);
            Exp(row, row, cols);
            ReduceSum(work, row, work[kBlock], cols);
            WaitPipe<HardEvent::V_S>();
            tileSum.SetValue(i, work.GetValue(0));
            Cast(p[i * bc], row, RoundMode::CAST_RINT, cols);
        }
        // alpha = exp(old max - new max); running sum = alpha * sum + tile sum; running max = new max
        WaitPipe<HardEvent::S_V>();
        Sub(alpha, runMax, newMax, rows);
        Exp(alpha, alpha, rows);
        Mul(runSum, runSum, alpha, rows);
        Add(runSum, runSum, tileSum, rows);
        DataCopy(runMax, newMax, B::br_);
        inS_.FreeTensor(s);
        outP_.EnQue(p);
        p = outP_.template DeQue<T>();
        DataCopy(pWs_, p, rows * bc);
        outP_.FreeTensor(p);
        PipeBarrier<PIPE_ALL>();  // P in GM before the cube reads it

        // PV = P V (P: rows x cols, row stride Bc; V rows strided in GM)
        B::mmOut_.SetOrgShape(B::br_, kt.rowStride, bc, bc, d);
        B::mmOut_.SetTensorA(pWs_);
        B::mmOut_.SetTensorB(vSrc[kt.elemOffset]);
        B::mmOut_.SetTail(rows, d, cols);
        B::mmOut_.IterateAll(pvWs_);
        B::mmOut_.End();
        PipeBarrier<PIPE_ALL>();

        LocalTensor<float> pv = inPV_.template AllocTensor<float>();
        DataCopy(pv, pvWs_, rows * d);
        inPV_.EnQue(pv);
        pv = inPV_.template DeQue<float>();
        LocalTensor<float> acc = accBuf_.template Get<float>();
        WaitPipe<HardEvent::V_S>();
        for (uint32_t i = 0; i < rows; ++i) {
            Muls(acc[i * d], acc[i * d], alpha.GetValue(i), d);
            Add(acc[i * d], acc[i * d], pv[i * d], d);
        }
        inPV_.FreeTensor(pv);
    }

    __aicore__ inline void Finish(const RowTile& qt) {
        const uint32_t d = B::d_, rows = qt.rows;
        LocalTensor<float> acc = accBuf_.template Get<float>();
        LocalTensor<float> runMax = maxBuf_.template Get<float>();
        LocalTensor<float> runSum = sumBuf_.template Get<float>();
        LocalTensor<T> o = outO_.template AllocTensor<T>();
        WaitPipe<HardEvent::V_S>();
        for (uint32_t i = 0; i < rows; ++i) {
            float sum = runSum.GetValue(i);
            Muls(acc[i * d], acc[i * d], sum > 0.0f ? 1.0f / sum : 0.0f, d);  // fully masked rows give 0
            Cast(o[i * d], acc[i * d], RoundMode::CAST_RINT, d);
        }
        outO_.EnQue(o);
        o = outO_.template DeQue<T>();
        DataCopy(B::outGm_[qt.elemOffset], o, B::RowStore(qt));
        outO_.FreeTensor(o);

        LocalTensor<float> mx = outStat_.template AllocTensor<float>();
        LocalTensor<float> sm = outStat_.template AllocTensor<float>();
        for (uint32_t i = 0; i < rows; ++i) {
            Duplicate(mx[i * kStatWidth], runMax.GetValue(i), kStatWidth);
            Duplicate(sm[i * kStatWidth], runSum.GetValue(i), kStatWidth);
        }
        outStat_.EnQue(mx);
        outStat_.EnQue(sm);
        mx = outStat_.template DeQue<float>();
        sm = outStat_.template DeQue<float>();
        DataCopyParams st = B::StatCopy(qt);
        st.dstStride = st.srcStride;
        st.srcStride = 0;
        DataCopy(B::maxGm_[qt.statOffset], mx, st);
        DataCopy(B::sumGm_[qt.statOffset], sm, st);
        outStat_.FreeTensor(mx);
        outStat_.FreeTensor(sm);
    }

    TQue<TPosition::VECIN, 1> inS_, inPV_;
    TQue<TPosition::VECOUT, 1> outP_, outO_;
    TQue<TPosition::VECOUT, 2> outStat_;
    TBuf<TPosition::VECCALC> accBuf_, maxBuf_, newMaxBuf_, sumBuf_, tileSumBuf_, alphaBuf_, biasBuf_, workBuf_;
    GlobalTensor<float> sWs_, pvWs_;
    GlobalTensor<T> pWs_;
};

// ------------------------------------------------------------------------------------------------------ backward
template <typename T>
class SkiparseAttentionGrad : public SkiparseBase<T> {
    using B = SkiparseBase<T>;
public:
    __aicore__ inline void Init(GM_ADDR q, GM_ADDR k, GM_ADDR v, GM_ADDR textK, GM_ADDR textV, GM_ADDR keyMask,
                                GM_ADDR out, GM_ADDR dout, GM_ADDR softmaxMax, GM_ADDR softmaxSum, GM_ADDR dq,
                                GM_ADDR dk, GM_ADDR dv, GM_ADDR dTextK, GM_ADDR dTextV, GM_ADDR workspace,
                                const SkiparseTilingData& t) {
        B::InitShape(t);
        B::BindForwardTensors(q, k, v, textK, textV, keyMask, out, softmaxMax, softmaxSum);
        doutGm_.SetGlobalBuffer((__gm__ T*)dout);
        dqGm_.SetGlobalBuffer((__gm__ T*)dq);
        dkGm_.SetGlobalBuffer((__gm__ T*)dk);
        dvGm_.SetGlobalBuffer((__gm__ T*)dv);
        dTextKGm_.SetGlobalBuffer((__gm__ T*)dTextK);
        dTextVGm_.SetGlobalBuffer((__gm__ T*)dTextV);
        const uint32_t br = B::br_, bc = B::bc_, d = B::d_;
        const uint32_t accRows = br > bc ? br : bc;
        GM_ADDR ws = GetUserWorkspace(workspace) + static_cast<uint64_t>(GetBlockIdx()) * t.workspacePerCore;
        uint64_t off = 0;
        sWs_.SetGlobalBuffer((__gm__ float*)(ws + off)); off += br * bc * sizeof(float);
        dpWs_.SetGlobalBuffer((__gm__ float*)(ws + off)); off += br * bc * sizeof(float);
        accAWs_.SetGlobalBuffer((__gm__ float*)(ws + off)); off += accRows * d * sizeof(float);
        accBWs_.SetGlobalBuffer((__gm__ float*)(ws + off)); off += accRows * d * sizeof(float);
        pWs_.SetGlobalBuffer((__gm__ T*)(ws + off)); off += br * bc * sizeof(T);
        dsWs_.SetGlobalBuffer((__gm__ T*)(ws + off));
        REGIST_MATMUL_OBJ(&B::pipe_, GetSysWorkSpacePtr(), B::mmScore_, &t.mmScore, B::mmOut_, &t.mmOut,
                          B::mmGradKV_, &t.mmGradKV);

        B::pipe_.InitBuffer(inS_, 2, br * bc * sizeof(float));     // S and dP
        B::pipe_.InitBuffer(outP_, 2, br * bc * sizeof(T));        // P and dS
        B::pipe_.InitBuffer(inRows_, 2, br * d * sizeof(T));       // O and dO of the query tile
        B::pipe_.InitBuffer(inStat_, 2, br * kStatWidth * sizeof(float));
        B::pipe_.InitBuffer(inAcc_, 1, br * d * sizeof(float));
        B::pipe_.InitBuffer(outGrad_, 1, br * d * sizeof(T));
        B::pipe_.InitBuffer(rowABuf_, d * sizeof(float));
        B::pipe_.InitBuffer(rowBBuf_, d * sizeof(float));
        B::pipe_.InitBuffer(maxBuf_, br * sizeof(float));
        B::pipe_.InitBuffer(invSumBuf_, br * sizeof(float));
        B::pipe_.InitBuffer(deltaBuf_, br * sizeof(float));
        B::pipe_.InitBuffer(biasBuf_, bc * sizeof(float));
        B::pipe_.InitBuffer(workBuf_, 2 * kBlock * sizeof(float));
    }

    // Items: [0, qItems) dQ of a query tile; then dK/dV of a video key tile (same numbering as query tiles, with Bc);
    // then dK/dV of a text key tile per (batch, head).
    __aicore__ inline void Process() {
        const uint32_t bhCount = B::tiling_.batch * B::tiling_.heads;
        kTilesPerLane_ = SkiparseCeilDiv(SkiparseMaxLaneCount(B::n_, B::k_, B::group_), B::bc_);
        const uint32_t kItems = bhCount * B::k_ * B::lanes_ * kTilesPerLane_;
        const uint32_t textItems = bhCount * B::TextTiles();
        const uint32_t total = B::qItems_ + kItems + textItems;
        for (uint32_t item = GetBlockIdx(); item < total; item += B::tiling_.usedCoreNum) {
            if (item < B::qItems_) {
                uint32_t bh, r;
                RowTile qt = B::QueryTile(item, bh, r);
                if (qt.rows) GradQuery(bh, r, qt);
            } else if (item < B::qItems_ + kItems) {
                uint32_t it = item - B::qItems_;
                uint32_t kt = it % kTilesPerLane_;
                uint32_t rest = it / kTilesPerLane_;
                uint32_t c = rest % B::lanes_;
                rest /= B::lanes_;
                uint32_t r = rest % B::k_, bh = rest / B::k_;
                RowTile keys = B::VideoTile(bh, SkiparseMakeLane(B::n_, B::k_, B::group_, r, c), kt, B::bc_);
                if (keys.rows) GradKeys(bh, r, r + 1, keys, B::kGm_, B::vGm_, dkGm_, dvGm_);
            } else {
                uint32_t it = item - B::qItems_ - kItems;
                uint32_t tiles = B::TextTiles();
                uint32_t bh = it / tiles;
                // text keys belong to every sub-sequence: sum their gradients over r = 0..k-1
                GradKeys(bh, 0, B::k_, B::TextTile(bh, it % tiles), B::textKGm_, B::textVGm_, dTextKGm_, dTextVGm_);
            }
        }
    }

private:
    // Row statistics of a query tile: running max, 1/sum, and delta = rowsum(dO * O).
    __aicore__ inline void LoadRowStats(const RowTile& qt) {
        const uint32_t d = B::d_, rows = qt.rows;
        LocalTensor<float> mx = inStat_.template AllocTensor<float>();
        LocalTensor<float> sm = inStat_.template AllocTensor<float>();
        DataCopy(mx, B::maxGm_[qt.statOffset], B::StatCopy(qt));
        DataCopy(sm, B::sumGm_[qt.statOffset], B::StatCopy(qt));
        inStat_.EnQue(mx);
        inStat_.EnQue(sm);
        mx = inStat_.template DeQue<float>();
        sm = inStat_.template DeQue<float>();
        LocalTensor<T> o = inRows_.template AllocTensor<T>();
        LocalTensor<T> go = inRows_.template AllocTensor<T>();
        DataCopy(o, B::outGm_[qt.elemOffset], B::RowCopy(qt));
        DataCopy(go, doutGm_[qt.elemOffset], B::RowCopy(qt));
        inRows_.EnQue(o);
        inRows_.EnQue(go);
        o = inRows_.template DeQue<T>();
        go = inRows_.template DeQue<T>();

        LocalTensor<float> runMax = maxBuf_.template Get<float>();
        LocalTensor<float> invSum = invSumBuf_.template Get<float>();
        LocalTensor<float> delta = deltaBuf_.template Get<float>();
        LocalTensor<float> a = rowABuf_.template Get<float>();
        LocalTensor<float> b = rowBBuf_.template Get<float>();
        LocalTensor<float> work = workBuf_.template Get<float>();
        WaitPipe<HardEvent::MTE2_S>();
        for (uint32_t i = 0; i < rows; ++i) {
            runMax.SetValue(i, mx.GetValue(i * kStatWidth));
            float sum = sm.GetValue(i * kStatWidth);
            invSum.SetValue(i, sum > 0.0f ? 1.0f / sum : 0.0f);
            Cast(a, o[i * d], RoundMode::CAST_NONE, d);
            Cast(b, go[i * d], RoundMode::CAST_NONE, d);
            Mul(a, a, b, d);
            ReduceSum(work, a, work[kBlock], d);
            WaitPipe<HardEvent::V_S>();
            delta.SetValue(i, work.GetValue(0));
        }
        inStat_.FreeTensor(mx);
        inStat_.FreeTensor(sm);
        inRows_.FreeTensor(o);
        inRows_.FreeTensor(go);
    }

    // P = exp(scale*S + bias - max) / sum and dS = P * (dP - delta) for one tile pair, written to pWs_/dsWs_.
    __aicore__ inline void ProbsAndGrads(uint32_t bh, const RowTile& qt, const RowTile& kt, const GlobalTensor<T>& kSrc,
                                         const GlobalTensor<T>& vSrc) {
        const uint32_t bc = B::bc_, rows = qt.rows, cols = kt.rows;
        B::ScoreMatmul(B::qGm_, qt, kSrc, kt, sWs_);
        B::ScoreMatmul(doutGm_, qt, vSrc, kt, dpWs_);
        PipeBarrier<PIPE_ALL>();
        LocalTensor<float> bias = biasBuf_.template Get<float>();
        if (B::tiling_.hasMask) B::BuildKeyBias(bh / B::tiling_.heads, kt, bias);
        LocalTensor<float> s = inS_.template AllocTensor<float>();
        LocalTensor<float> dp = inS_.template AllocTensor<float>();
        DataCopy(s, sWs_, rows * bc);
        DataCopy(dp, dpWs_, rows * bc);
        inS_.EnQue(s);
        inS_.EnQue(dp);
        s = inS_.template DeQue<float>();
        dp = inS_.template DeQue<float>();
        LocalTensor<float> runMax = maxBuf_.template Get<float>();
        LocalTensor<float> invSum = invSumBuf_.template Get<float>();
        LocalTensor<float> delta = deltaBuf_.template Get<float>();
        LocalTensor<T> p = outP_.template AllocTensor<T>();
        LocalTensor<T> ds = outP_.template AllocTensor<T>();
        for (uint32_t i = 0; i < rows; ++i) {
            LocalTensor<float> row = s[i * bc];
            LocalTensor<float> grow = dp[i * bc];
            Muls(row, row, B::tiling_.scale, cols);
            if (B::tiling_.hasMask) Add(row, row, bias, cols);
            Adds(row, row, -runMax.GetValue(i), cols);
            Exp(row, row, cols);
            Muls(row, row, invSum.GetValue(i), cols);
            Cast(p[i * bc], row, RoundMode::CAST_RINT, cols);
            Adds(grow, grow, -delta.GetValue(i), cols);
            Mul(grow, grow, row, cols);
            Cast(ds[i * bc], grow, RoundMode::CAST_RINT, cols);
        }
        inS_.FreeTensor(s);
        inS_.FreeTensor(dp);
        outP_.EnQue(p);
        outP_.EnQue(ds);
        p = outP_.template DeQue<T>();
        ds = outP_.template DeQue<T>();
        DataCopy(pWs_, p, rows * bc);
        DataCopy(dsWs_, ds, rows * bc);
        outP_.FreeTensor(p);
        outP_.FreeTensor(ds);
        PipeBarrier<PIPE_ALL>();
    }

    __aicore__ inline void GradQuery(uint32_t bh, uint32_t r, const RowTile& qt) {
        LoadRowStats(qt);
        bool first = true;
        for (uint32_t c = 0; c < B::lanes_; ++c) {
            SkiparseLane lane = SkiparseMakeLane(B::n_, B::k_, B::group_, r, c);
            for (uint32_t t = 0; t < B::KeyTilesOfLane(lane); ++t) {
                AccumulateGradQuery(bh, qt, B::VideoTile(bh, lane, t, B::bc_), B::kGm_, B::vGm_, first);
            }
        }
        for (uint32_t t = 0; t < B::TextTiles(); ++t) {
            AccumulateGradQuery(bh, qt, B::TextTile(bh, t), B::textKGm_, B::textVGm_, first);
        }
        StoreGrad(accAWs_, qt, dqGm_, B::tiling_.scale, first);
    }

    __aicore__ inline void AccumulateGradQuery(uint32_t bh, const RowTile& qt, const RowTile& kt,
                                               const GlobalTensor<T>& kSrc, const GlobalTensor<T>& vSrc, bool& first) {
        ProbsAndGrads(bh, qt, kt, kSrc, vSrc);
        // dQ += dS K  (dS: rows x cols, row stride Bc; K rows strided)
        B::mmOut_.SetOrgShape(B::br_, kt.rowStride, B::bc_, B::bc_, B::d_);
        B::mmOut_.SetTensorA(dsWs_);
        B::mmOut_.SetTensorB(kSrc[kt.elemOffset]);
        B::mmOut_.SetTail(qt.rows, B::d_, kt.rows);
        B::mmOut_.IterateAll(accAWs_, first ? 0 : 1);
        B::mmOut_.End();
        PipeBarrier<PIPE_ALL>();
        first = false;
    }

    // dK, dV of a key tile: every query tile of sub-sequences [rBegin, rEnd) that sees these keys.
    __aicore__ inline void GradKeys(uint32_t bh, uint32_t rBegin, uint32_t rEnd, const RowTile& kt,
                                    const GlobalTensor<T>& kSrc, const GlobalTensor<T>& vSrc,
                                    const GlobalTensor<T>& dkDst, const GlobalTensor<T>& dvDst) {
        bool first = true;
        for (uint32_t r = rBegin; r < rEnd; ++r) {
            for (uint32_t c = 0; c < B::lanes_; ++c) {
                SkiparseLane lane = SkiparseMakeLane(B::n_, B::k_, B::group_, r, c);
                for (uint32_t t = 0; t * B::br_ < lane.count; ++t) {
                    RowTile qt = B::VideoTile(bh, lane, t, B::br_);
                    LoadRowStats(qt);
                    ProbsAndGrads(bh, qt, kt, kSrc, vSrc);
                    // dV += P^T dO ; dK += dS^T Q   (P, dS: qrows x krows with row stride Bc, used transposed)
                    B::mmGradKV_.SetOrgShape(B::bc_, qt.rowStride, B::br_, B::br_, B::d_);
                    B::mmGradKV_.SetTensorA(pWs_, true);
                    B::mmGradKV_.SetTensorB(doutGm_[qt.elemOffset]);
                    B::mmGradKV_.SetTail(kt.rows, B::d_, qt.rows);
                    B::mmGradKV_.IterateAll(accBWs_, first ? 0 : 1);
                    B::mmGradKV_.End();
                    B::mmGradKV_.SetTensorA(dsWs_, true);
                    B::mmGradKV_.SetTensorB(B::qGm_[qt.elemOffset]);
                    B::mmGradKV_.SetTail(kt.rows, B::d_, qt.rows);
                    B::mmGradKV_.IterateAll(accAWs_, first ? 0 : 1);
                    B::mmGradKV_.End();
                    PipeBarrier<PIPE_ALL>();
                    first = false;
                }
            }
        }
        StoreGrad(accAWs_, kt, dkDst, B::tiling_.scale, first);
        StoreGrad(accBWs_, kt, dvDst, 1.0f, first);
    }

    // dst rows of `tile` = cast(scale * acc) in chunks of Br rows; zeros when nothing was accumulated.
    __aicore__ inline void StoreGrad(const GlobalTensor<float>& acc, const RowTile& tile, const GlobalTensor<T>& dst,
                                     float scale, bool empty) {
        const uint32_t d = B::d_;
        for (uint32_t r0 = 0; r0 < tile.rows; r0 += B::br_) {
            RowTile part = tile;
            part.rows = tile.rows - r0 < B::br_ ? tile.rows - r0 : B::br_;
            part.elemOffset = tile.elemOffset + static_cast<uint64_t>(r0) * tile.rowStride;
            LocalTensor<float> a = inAcc_.template AllocTensor<float>();
            if (empty) {
                Duplicate(a, 0.0f, part.rows * d);
            } else {
                DataCopy(a, acc[static_cast<uint64_t>(r0) * d], part.rows * d);
            }
            inAcc_.EnQue(a);
            a = inAcc_.template DeQue<float>();
            LocalTensor<T> g = outGrad_.template AllocTensor<T>();
            Muls(a, a, scale, part.rows * d);
            Cast(g, a, RoundMode::CAST_RINT, part.rows * d);
            inAcc_.FreeTensor(a);
            outGrad_.EnQue(g);
            g = outGrad_.template DeQue<T>();
            DataCopy(dst[part.elemOffset], g, B::RowStore(part));
            outGrad_.FreeTensor(g);
        }
    }

    uint32_t kTilesPerLane_ = 0;
    TQue<TPosition::VECIN, 2> inS_, inRows_, inStat_;
    TQue<TPosition::VECIN, 1> inAcc_;
    TQue<TPosition::VECOUT, 2> outP_;
    TQue<TPosition::VECOUT, 1> outGrad_;
    TBuf<TPosition::VECCALC> rowABuf_, rowBBuf_, maxBuf_, invSumBuf_, deltaBuf_, biasBuf_, workBuf_;
    GlobalTensor<T> doutGm_, dqGm_, dkGm_, dvGm_, dTextKGm_, dTextVGm_, pWs_, dsWs_;
    GlobalTensor<float> sWs_, dpWs_, accAWs_, accBWs_;
};

}  // namespace skiparse
