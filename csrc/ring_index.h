// Index arithmetic of the frame ring, shared by the C++ CPU twin and the CUDA kernels.
//
// The layout is the one of fastdqn/replay/ring.py: `frames` is (N, F) with env e owning
// the lane of slots e * lane ... e * lane + lane - 1 (a ring); back[r] is how many earlier
// frames of the same game the stack of the record in row r may use (0 on a new game,
// capped at stack - 1). This header includes nothing from torch or CUDA, so that both
// g++ and a bare `nvcc -c` compile it.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define FASTDQN_HOST_DEVICE __host__ __device__
#else
#define FASTDQN_HOST_DEVICE
#endif

namespace fastdqn {

// Row of `frames` that holds position p of the window of the record in row `row`.
//
// Position p sits at offset p - (stack - 1) from the record: p = stack - 1 is the record
// itself, smaller p are older frames, larger p the records after it (a window of
// stack + n positions holds obs at p < stack and the next stack at p >= n). An offset
// further back than back[row] is before the start of the game: it repeats the game's
// first frame, exactly as EnvPool pads a fresh stack. The same rule as _copy_frames.
FASTDQN_HOST_DEVICE inline int64_t window_row(int64_t row, const uint8_t* back, int64_t lane,
                                              int64_t stack, int64_t p) {
    const int64_t base = row / lane * lane;  // first row of the lane
    const int64_t slot = row - base;
    int64_t offset = p - (stack - 1);
    const int64_t b = back[row];
    if (offset < -b) offset = -b;
    // offset >= -(stack - 1) > -lane, so slot + offset + lane is never negative.
    return base + (slot + offset + lane) % lane;
}

// Row of the record `horizon` records after the one in row `row`, in the same lane.
FASTDQN_HOST_DEVICE inline int64_t ahead_row(int64_t row, int64_t horizon, int64_t lane) {
    const int64_t base = row / lane * lane;
    return base + (row - base + horizon) % lane;
}

}  // namespace fastdqn
