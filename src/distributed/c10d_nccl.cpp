// The NCCL process group (CUDA), in its own translation unit: it needs the CUDA and NCCL
// headers, which only a CUDA build of libtorch has beside it. build.rs compiles it, and
// defines EKPHRASIS_NCCL for the shim, only when those headers are found.

#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

c10::intrusive_ptr<c10d::Backend> ekphrasis_nccl_backend(
    const c10::intrusive_ptr<c10d::Store>& store, int rank, int world,
    std::chrono::milliseconds timeout) {
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, options);
}
