// The C++ CPU twin of the frame-ring gathers (fastdqn/replay/ring.py) and of the scatter
// that stores new frames; built by fastdqn/replay/native.py and tested byte for byte
// against the Numba kernels. Single-threaded like them: on a machine whose cores are busy
// with the envs and the learner, a parallel gather is slower, not faster.
#include <torch/extension.h>

#include <cstring>

#include "ring_index.h"

namespace {

// Elements per row: the product of the sizes after the first `lead` dimensions.
int64_t row_numel(const torch::Tensor& t, int64_t lead) {
    return c10::multiply_integers(t.sizes().slice(lead));
}

void check_ring(const torch::Tensor& frames, const torch::Tensor& back, int64_t lane, int64_t stack) {
    TORCH_CHECK(frames.device().is_cpu() && frames.dim() >= 1 && frames.is_contiguous(),
                "frames must be a contiguous (N, *frame_shape) CPU tensor");
    TORCH_CHECK(back.device().is_cpu() && back.scalar_type() == torch::kUInt8 && back.dim() == 1 &&
                    back.is_contiguous() && back.size(0) == frames.size(0),
                "back must be a contiguous (N,) uint8 CPU tensor, N = frames.size(0)");
    TORCH_CHECK(lane >= 1 && frames.size(0) % lane == 0, "lane must divide the number of frames");
    TORCH_CHECK(stack >= 1 && stack <= lane, "stack must be in [1, lane]");
}

void check_rows(const torch::Tensor& rows, int64_t num_rows, const char* name) {
    TORCH_CHECK(rows.device().is_cpu() && rows.scalar_type() == torch::kInt64 && rows.dim() == 1 &&
                    rows.is_contiguous(),
                name, " must be a contiguous 1-D int64 CPU tensor");
    const int64_t* r = rows.data_ptr<int64_t>();
    for (int64_t i = 0; i < rows.size(0); ++i) {
        TORCH_CHECK(r[i] >= 0 && r[i] < num_rows, name, "[", i, "] = ", r[i], " is out of range [0, ",
                    num_rows, ")");
    }
}

void check_out(const torch::Tensor& out, const torch::Tensor& frames, int64_t batch) {
    TORCH_CHECK(out.device().is_cpu() && out.dim() >= 2 && out.is_contiguous(),
                "out must be a contiguous (B, W, *frame_shape) CPU tensor");
    TORCH_CHECK(out.size(0) == batch && row_numel(out, 2) == row_numel(frames, 1) &&
                    out.scalar_type() == frames.scalar_type(),
                "out must be (B, W, *frame_shape) with B = len(indices) and the dtype and frame size of "
                "frames");
}

// out[i, p] = frame at position p of the window of record indices[i] (+ horizon[i] when
// horizon is given), for p < out.size(1); see window_row.
void gather(const torch::Tensor& indices, const int64_t* horizon, const torch::Tensor& frames,
            const torch::Tensor& back, int64_t lane, int64_t stack, torch::Tensor& out) {
    const int64_t batch = indices.size(0);
    const int64_t width = out.size(1);
    const size_t row_bytes = row_numel(frames, 1) * frames.element_size();
    const int64_t* idx = indices.data_ptr<int64_t>();
    const uint8_t* b = back.data_ptr<uint8_t>();
    const char* src = static_cast<const char*>(frames.data_ptr());
    char* dst = static_cast<char*>(out.data_ptr());
    for (int64_t i = 0; i < batch; ++i) {
        const int64_t row = horizon ? fastdqn::ahead_row(idx[i], horizon[i], lane) : idx[i];
        // Copy runs of consecutive rows with one memcpy each (as _copy_frames does): a run
        // ends at a padded position (those repeat one row) and at the end of the lane.
        for (int64_t p = 0; p < width;) {
            const int64_t from = fastdqn::window_row(row, b, lane, stack, p);
            int64_t run = 1;
            while (p + run < width && fastdqn::window_row(row, b, lane, stack, p + run) == from + run) ++run;
            std::memcpy(dst + (i * width + p) * row_bytes, src + from * row_bytes, run * row_bytes);
            p += run;
        }
    }
}

void gather_window(const torch::Tensor& indices, const torch::Tensor& frames, const torch::Tensor& back,
                   int64_t lane, int64_t stack, torch::Tensor& out) {
    check_ring(frames, back, lane, stack);
    check_rows(indices, frames.size(0), "indices");
    check_out(out, frames, indices.size(0));
    gather(indices, nullptr, frames, back, lane, stack, out);
}

void gather_next(const torch::Tensor& indices, const torch::Tensor& horizon, const torch::Tensor& frames,
                 const torch::Tensor& back, int64_t lane, int64_t stack, torch::Tensor& out) {
    check_ring(frames, back, lane, stack);
    check_rows(indices, frames.size(0), "indices");
    check_out(out, frames, indices.size(0));
    TORCH_CHECK(horizon.device().is_cpu() && horizon.scalar_type() == torch::kInt64 &&
                    horizon.is_contiguous() && horizon.dim() == 1 && horizon.size(0) == indices.size(0),
                "horizon must be a contiguous int64 CPU tensor of the length of indices");
    const int64_t* h = horizon.data_ptr<int64_t>();
    for (int64_t i = 0; i < horizon.size(0); ++i) {
        TORCH_CHECK(h[i] >= 0, "horizon[", i, "] = ", h[i], " is negative");
    }
    gather(indices, h, frames, back, lane, stack, out);
}

// frames[rows[i]] = new_frames[i]: the newest frame of each env step into its slot.
void scatter_frames(torch::Tensor& frames, const torch::Tensor& rows, const torch::Tensor& new_frames) {
    TORCH_CHECK(frames.device().is_cpu() && frames.dim() >= 1 && frames.is_contiguous(),
                "frames must be a contiguous (N, *frame_shape) CPU tensor");
    check_rows(rows, frames.size(0), "rows");
    TORCH_CHECK(new_frames.device().is_cpu() && new_frames.is_contiguous() && new_frames.dim() >= 1 &&
                    new_frames.size(0) == rows.size(0) && row_numel(new_frames, 1) == row_numel(frames, 1) &&
                    new_frames.scalar_type() == frames.scalar_type(),
                "new_frames must be a contiguous (B, *frame_shape) CPU tensor with the dtype and frame "
                "size of frames");
    const size_t row_bytes = row_numel(frames, 1) * frames.element_size();
    const int64_t* r = rows.data_ptr<int64_t>();
    const char* src = static_cast<const char*>(new_frames.data_ptr());
    char* dst = static_cast<char*>(frames.data_ptr());
    for (int64_t i = 0; i < rows.size(0); ++i) {
        std::memcpy(dst + r[i] * row_bytes, src + i * row_bytes, row_bytes);
    }
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    // The GIL is released while copying, as the Numba kernels (nogil=True) do.
    using release = py::call_guard<py::gil_scoped_release>;
    m.def("gather_window", &gather_window, "out[i, p] = window position p of record indices[i]", release());
    m.def("gather_next", &gather_next, "out[i, p] = stack position p of record indices[i] + horizon[i]",
          release());
    m.def("scatter_frames", &scatter_frames, "frames[rows[i]] = new_frames[i]", release());
}
