// Skiparse index arithmetic shared by the kernels, the host tiling and the CPU-shim launcher (no CANN dependency).
//
// Tokens are in their original order n = 0..N-1 (N video tokens, logically zero-padded to a multiple of k*k).
// Sub-sequence r in [0, k) is the set of tokens attending to each other:
//   single skip: n mod k == r                 -> one lane:  n = r + k*a
//   group skip:  (n div k) mod k == r         -> k lanes c: n = a*k*k + r*k + c
// A lane is an arithmetic progression of rows (base, stride), so a tile of a lane is a strided block of GM rows:
// the kernels read it with strided DataCopy / a Matmul with a larger original row length, never with copies.
// Padded tokens (n >= N) are simply not part of any lane: they are never loaded, so they cannot be attended to.
#pragma once
#include <cstdint>

#if defined(__aicore__)
#define SKIPARSE_INLINE __aicore__ inline
#else
#define SKIPARSE_INLINE inline
#endif

struct SkiparseLane {
    uint32_t base;    // first token index
    uint32_t stride;  // token index step between rows of the lane
    uint32_t count;   // rows with token index < N
};

SKIPARSE_INLINE uint32_t SkiparseLanesPerSubseq(uint32_t k, uint32_t group) { return group ? k : 1; }

SKIPARSE_INLINE SkiparseLane SkiparseMakeLane(uint32_t n, uint32_t k, uint32_t group, uint32_t r, uint32_t c) {
    SkiparseLane lane;
    lane.base = group ? r * k + c : r;
    lane.stride = group ? k * k : k;
    lane.count = lane.base < n ? (n - lane.base + lane.stride - 1) / lane.stride : 0;
    return lane;
}

SKIPARSE_INLINE uint32_t SkiparseCeilDiv(uint32_t a, uint32_t b) { return (a + b - 1) / b; }

// The longest lane is the one starting at token 0.
SKIPARSE_INLINE uint32_t SkiparseMaxLaneCount(uint32_t n, uint32_t k, uint32_t group) {
    return SkiparseMakeLane(n, k, group, 0, 0).count;
}
