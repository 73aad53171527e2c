// torch binding of the CUDA frame-ring kernels (gather_kernels.cuh), built by
// fastdqn/replay/native.py when CUDA is available. Same functions and arguments as the CPU
// twin (gather_cpu.cpp); the work is queued on the current stream. Indices are NOT range
// checked here (that would need a host sync): they must come from the sum tree.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include "gather_kernels.cuh"

namespace {

// Elements per row: the product of the sizes after the first `lead` dimensions.
int64_t row_numel(const torch::Tensor& t, int64_t lead) {
    return c10::multiply_integers(t.sizes().slice(lead));
}

void check_cuda(const torch::Tensor& t, const torch::Tensor& frames, const char* name) {
    TORCH_CHECK(t.is_cuda() && t.device() == frames.device() && t.is_contiguous(), name,
                " must be a contiguous tensor on the device of frames (", frames.device(), ")");
}

void check_index(const torch::Tensor& t, const torch::Tensor& frames, int64_t length, const char* name) {
    check_cuda(t, frames, name);
    TORCH_CHECK(t.scalar_type() == torch::kInt64 && t.dim() == 1 && t.size(0) == length, name,
                " must be a 1-D int64 tensor of length ", length);
}

void check_ring(const torch::Tensor& frames, const torch::Tensor& back, int64_t lane, int64_t stack) {
    TORCH_CHECK(frames.is_cuda() && frames.dim() >= 1 && frames.is_contiguous(),
                "frames must be a contiguous (N, *frame_shape) CUDA tensor");
    check_cuda(back, frames, "back");
    TORCH_CHECK(back.scalar_type() == torch::kUInt8 && back.dim() == 1 && back.size(0) == frames.size(0),
                "back must be a (N,) uint8 tensor, N = frames.size(0)");
    TORCH_CHECK(lane >= 1 && frames.size(0) % lane == 0, "lane must divide the number of frames");
    TORCH_CHECK(stack >= 1 && stack <= lane, "stack must be in [1, lane]");
}

void check_out(const torch::Tensor& out, const torch::Tensor& frames, int64_t batch) {
    check_cuda(out, frames, "out");
    TORCH_CHECK(out.dim() >= 2 && out.size(0) == batch && row_numel(out, 2) == row_numel(frames, 1) &&
                    out.scalar_type() == frames.scalar_type(),
                "out must be (B, W, *frame_shape) with B = len(indices) and the dtype and frame size of "
                "frames");
}

void gather(const torch::Tensor& indices, const int64_t* horizon, const torch::Tensor& frames,
            const torch::Tensor& back, int64_t lane, int64_t stack, torch::Tensor& out) {
    const c10::cuda::CUDAGuard guard(frames.device());
    C10_CUDA_CHECK(fastdqn::launch_gather(indices.data_ptr<int64_t>(), horizon, frames.data_ptr(),
                                          back.data_ptr<uint8_t>(), lane, stack, out.size(0), out.size(1),
                                          row_numel(frames, 1) * frames.element_size(), out.data_ptr(),
                                          c10::cuda::getCurrentCUDAStream()));
}

void gather_window(const torch::Tensor& indices, const torch::Tensor& frames, const torch::Tensor& back,
                   int64_t lane, int64_t stack, torch::Tensor& out) {
    check_ring(frames, back, lane, stack);
    check_index(indices, frames, indices.numel(), "indices");
    check_out(out, frames, indices.size(0));
    gather(indices, nullptr, frames, back, lane, stack, out);
}

void gather_next(const torch::Tensor& indices, const torch::Tensor& horizon, const torch::Tensor& frames,
                 const torch::Tensor& back, int64_t lane, int64_t stack, torch::Tensor& out) {
    check_ring(frames, back, lane, stack);
    check_index(indices, frames, indices.numel(), "indices");
    check_index(horizon, frames, indices.size(0), "horizon");
    check_out(out, frames, indices.size(0));
    gather(indices, horizon.data_ptr<int64_t>(), frames, back, lane, stack, out);
}

void scatter_frames(torch::Tensor& frames, const torch::Tensor& rows, const torch::Tensor& new_frames) {
    TORCH_CHECK(frames.is_cuda() && frames.dim() >= 1 && frames.is_contiguous(),
                "frames must be a contiguous (N, *frame_shape) CUDA tensor");
    check_index(rows, frames, rows.numel(), "rows");
    check_cuda(new_frames, frames, "new_frames");
    TORCH_CHECK(new_frames.dim() >= 1 && new_frames.size(0) == rows.size(0) &&
                    row_numel(new_frames, 1) == row_numel(frames, 1) &&
                    new_frames.scalar_type() == frames.scalar_type(),
                "new_frames must be (B, *frame_shape) with the dtype and frame size of frames");
    const c10::cuda::CUDAGuard guard(frames.device());
    C10_CUDA_CHECK(fastdqn::launch_scatter(frames.data_ptr(), rows.data_ptr<int64_t>(), new_frames.data_ptr(),
                                           rows.size(0), row_numel(frames, 1) * frames.element_size(),
                                           c10::cuda::getCurrentCUDAStream()));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("gather_window", &gather_window, "out[i, p] = window position p of record indices[i]");
    m.def("gather_next", &gather_next, "out[i, p] = stack position p of record indices[i] + horizon[i]");
    m.def("scatter_frames", &scatter_frames, "frames[rows[i]] = new_frames[i]");
}
