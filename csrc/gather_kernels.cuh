// CUDA kernels of the GPU-resident frame ring: gather the stacked windows of sampled
// records, and scatter each env step's new frames into their slots.
//
// No torch headers here (only the CUDA runtime), so that `nvcc -x cu -c` checks this file
// on a machine whose torch has no CUDA; gather_cuda.cu binds it to torch.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "ring_index.h"

namespace fastdqn {

// One block per (sample i, window position p): copies frame window_row(...) to out[i, p].
// Word is the copy unit (uint4 = 16 bytes when rows and pointers allow it); threads stride
// over the row_words words of one frame, so consecutive threads read consecutive words.
template <typename Word>
__global__ void gather_kernel(const int64_t* __restrict__ indices, const int64_t* __restrict__ horizon,
                              const Word* __restrict__ frames, const uint8_t* __restrict__ back,
                              int64_t lane, int64_t stack, int64_t width, int64_t row_words,
                              Word* __restrict__ out) {
    const int64_t job = blockIdx.x;  // = i * width + p, the row of out
    const int64_t i = job / width;
    const int64_t p = job - i * width;
    int64_t row = indices[i];
    if (horizon != nullptr) row = ahead_row(row, horizon[i], lane);
    const Word* src = frames + window_row(row, back, lane, stack, p) * row_words;
    Word* dst = out + job * row_words;
    for (int64_t c = threadIdx.x; c < row_words; c += blockDim.x) dst[c] = src[c];
}

// frames[rows[i]] = new_frames[i], one block per row.
template <typename Word>
__global__ void scatter_kernel(Word* __restrict__ frames, const int64_t* __restrict__ rows,
                               const Word* __restrict__ new_frames, int64_t row_words) {
    const int64_t i = blockIdx.x;
    Word* dst = frames + rows[i] * row_words;
    const Word* src = new_frames + i * row_words;
    for (int64_t c = threadIdx.x; c < row_words; c += blockDim.x) dst[c] = src[c];
}

// The widest copy unit (16, 4 or 1 bytes) that divides the row and aligns both pointers.
inline int word_bytes(int64_t row_bytes, const void* a, const void* b) {
    const auto aligned = [&](int64_t n) {
        return row_bytes % n == 0 && reinterpret_cast<uintptr_t>(a) % n == 0 &&
               reinterpret_cast<uintptr_t>(b) % n == 0;
    };
    return aligned(16) ? 16 : aligned(4) ? 4 : 1;
}

// Enough threads for one row (a whole number of warps, at most 256).
inline unsigned threads_for(int64_t row_words) {
    const int64_t warps = (row_words + 31) / 32;
    return static_cast<unsigned>(32 * (warps < 8 ? warps : 8));
}

// Calls launch(Word{}) with the copy unit of `bytes` (16, 4 or 1); returns the launch error.
template <typename Launch>
cudaError_t with_word(int bytes, Launch&& launch) {
    if (bytes == 16) {
        launch(uint4{});
    } else if (bytes == 4) {
        launch(uint32_t{});
    } else {
        launch(uint8_t{});
    }
    return cudaGetLastError();
}

// out (batch, width, row_bytes) = window of width positions of record indices[i], or of
// record indices[i] + horizon[i] when horizon is not null. Queued on `stream`.
inline cudaError_t launch_gather(const int64_t* indices, const int64_t* horizon, const void* frames,
                                 const uint8_t* back, int64_t lane, int64_t stack, int64_t batch,
                                 int64_t width, int64_t row_bytes, void* out, cudaStream_t stream) {
    if (batch == 0 || width == 0 || row_bytes == 0) return cudaSuccess;
    const int bytes = word_bytes(row_bytes, frames, out);
    const int64_t words = row_bytes / bytes;
    return with_word(bytes, [&](auto word) {
        using Word = decltype(word);
        gather_kernel<Word><<<static_cast<unsigned>(batch * width), threads_for(words), 0, stream>>>(
            indices, horizon, static_cast<const Word*>(frames), back, lane, stack, width, words,
            static_cast<Word*>(out));
    });
}

// frames[rows[i]] = new_frames[i] for i < batch (rows distinct). Queued on `stream`.
inline cudaError_t launch_scatter(void* frames, const int64_t* rows, const void* new_frames, int64_t batch,
                                  int64_t row_bytes, cudaStream_t stream) {
    if (batch == 0 || row_bytes == 0) return cudaSuccess;
    const int bytes = word_bytes(row_bytes, frames, new_frames);
    const int64_t words = row_bytes / bytes;
    return with_word(bytes, [&](auto word) {
        using Word = decltype(word);
        scatter_kernel<Word><<<static_cast<unsigned>(batch), threads_for(words), 0, stream>>>(
            static_cast<Word*>(frames), rows, static_cast<const Word*>(new_frames), words);
    });
}

}  // namespace fastdqn
