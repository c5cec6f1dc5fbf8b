// The C ABI between ekphrasis and libtorch's c10d (the engine behind
// torch.distributed): a TCPStore rendezvous, a Gloo (CPU) or NCCL (CUDA) process group,
// and the four collectives training needs. Every entry point catches C++ exceptions and
// returns the message, so a dead peer or a timeout reaches Rust as an error, never as an
// abort. Tensors cross as `at::Tensor*`, the handle tch's `Tensor` wraps.

#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>

#ifdef EKPHRASIS_NCCL
c10::intrusive_ptr<c10d::Backend> ekphrasis_nccl_backend(
    const c10::intrusive_ptr<c10d::Store>& store, int rank, int world,
    std::chrono::milliseconds timeout);
#endif

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
};

char* copy_message(const std::string& text) {
  char* out = static_cast<char*>(std::malloc(text.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, text.c_str(), text.size() + 1);
  }
  return out;
}

// Runs `body`, turning any exception into a message in `*err`; returns false on error.
template <typename F>
bool guarded(char** err, F body) {
  try {
    body();
    return true;
  } catch (const c10::Error& e) {
    *err = copy_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    *err = copy_message(e.what());
  } catch (...) {
    *err = copy_message("unknown C++ exception in c10d");
  }
  return false;
}

void wait(const Group& g, c10::intrusive_ptr<c10d::Work> work) {
  work->wait(g.timeout);
}

void all_reduce_in_place(const Group& g, at::Tensor& t, c10d::ReduceOp::RedOpType op) {
  std::vector<at::Tensor> tensors{t};
  c10d::AllreduceOptions options;
  options.reduceOp = c10d::ReduceOp(op);
  options.timeout = g.timeout;
  wait(g, g.backend->allreduce(tensors, options));
}

// A sum over ranks that autograd sees through: every rank's output depends on every
// rank's input, so the gradient of each input is the sum of the output gradients over
// ranks. SyncBatchNorm's statistics and the global contrastive batch are built on it.
struct AllReduceSum : public torch::autograd::Function<AllReduceSum> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            int64_t group) {
    ctx->saved_data["group"] = group;
    at::Tensor y = x.detach().clone().contiguous();
    all_reduce_in_place(*reinterpret_cast<Group*>(group), y, c10d::ReduceOp::SUM);
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto* g = reinterpret_cast<Group*>(ctx->saved_data["group"].toInt());
    at::Tensor grad = grads[0].detach().clone().contiguous();
    all_reduce_in_place(*g, grad, c10d::ReduceOp::SUM);
    return {grad, at::Tensor()};
  }
};

}  // namespace

extern "C" {

void ekphrasis_c10d_free_message(char* message) { std::free(message); }

// Connects to the rendezvous store at addr:port (hosting it when `host_store`), then
// forms the process group. `prefix` separates restarts of the same job in one store.
void* ekphrasis_c10d_new(const char* backend, const char* addr, int port, int rank,
                         int world, int host_store, const char* prefix, int64_t timeout_ms,
                         char** err) {
  Group* out = nullptr;
  guarded(err, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(port);
    so.isServer = host_store != 0;
    so.numWorkers = world;
    so.waitWorkers = false;
    so.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(addr), so);
    c10::intrusive_ptr<c10d::Store> store =
        c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);
    auto group = std::make_unique<Group>();
    group->store = store;
    group->timeout = timeout;
    std::string name(backend);
    if (name == "gloo") {
      auto options = c10d::ProcessGroupGloo::Options::create();
      options->timeout = timeout;
      const char* iface = std::getenv("GLOO_SOCKET_IFNAME");
      if (iface != nullptr && *iface != '\0') {
        options->devices.push_back(
            c10d::ProcessGroupGloo::createDeviceForInterface(std::string(iface)));
      } else {
        options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      group->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(
          store, rank, world, options);
    } else if (name == "nccl") {
#ifdef EKPHRASIS_NCCL
      group->backend = ekphrasis_nccl_backend(store, rank, world, timeout);
#else
      throw std::runtime_error(
          "this build has no NCCL (it was compiled without CUDA headers); use gloo");
#endif
    } else {
      throw std::runtime_error("unknown c10d backend '" + name + "' (gloo or nccl)");
    }
    out = group.release();
  });
  return out;
}

void ekphrasis_c10d_free(void* group) { delete static_cast<Group*>(group); }

// op: 0 sum, 1 max, 2 min.
int ekphrasis_c10d_all_reduce(void* group, at::Tensor* t, int op, char** err) {
  return guarded(err, [&] {
    auto kind = op == 1 ? c10d::ReduceOp::MAX
                        : (op == 2 ? c10d::ReduceOp::MIN : c10d::ReduceOp::SUM);
    if (!t->is_contiguous()) {
      throw std::runtime_error("all_reduce needs a contiguous tensor");
    }
    all_reduce_in_place(*static_cast<Group*>(group), *t, kind);
  }) ? 0 : -1;
}

int ekphrasis_c10d_broadcast(void* group, at::Tensor* t, int root, char** err) {
  return guarded(err, [&] {
    auto& g = *static_cast<Group*>(group);
    if (!t->is_contiguous()) {
      throw std::runtime_error("broadcast needs a contiguous tensor");
    }
    std::vector<at::Tensor> tensors{*t};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    options.timeout = g.timeout;
    wait(g, g.backend->broadcast(tensors, options));
  }) ? 0 : -1;
}

// Returns a new tensor (the sum over ranks of `t`) that autograd differentiates.
at::Tensor* ekphrasis_c10d_all_reduce_grad(void* group, at::Tensor* t, char** err) {
  at::Tensor* out = nullptr;
  guarded(err, [&] {
    out = new at::Tensor(AllReduceSum::apply(*t, reinterpret_cast<int64_t>(group)));
  });
  return out;
}

}  // extern "C"
