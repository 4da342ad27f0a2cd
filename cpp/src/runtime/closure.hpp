// The in-loop closure: Box3D, then the learned correction, per grid cell (physics.md; issue 4).
//
// Per chunk of cells: Box3D in the rest frame (dodo::Box3D), the network's inputs, one network call
// (fp32) on each crossing cell's flavour images (flavour_symmetry.hpp), their mean head output,
// conservation projection, realizability limiter, scale by N_tot, boost back. Chunks are shared
// out over a pool of threads; each chunk uses a workspace taken from a free list, so nothing is
// allocated per call once warm.
//
// Immutable after construction apart from the event counters (atomics): apply() is const and
// may be called from several threads at once on one object.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "../box3d/box3d.hpp"
#include "chunk_pool.hpp"
#include "model_metadata.hpp"
#include "onnx_model.hpp"

namespace dodo::runtime {

struct ClosureOptions {
  int threads = 0;          // 0 or 1: caller's thread only
  int chunk_size = 1024;    // cells per network call
  RequestedBox3D box3d;     // unset fields: the model's settings
  std::string onnxruntime_library;  // empty: search (ort_library.hpp)
  std::string device = "cpu";       // "cpu", "cuda" or "cuda:N" (needs an onnxruntime-gpu library)
  // "auto": Dodo's own evaluator of the network where the package describes it and the device is
  // the CPU (native_network.hpp), else ONNX Runtime; "onnxruntime": ONNX Runtime always.
  std::string evaluator = "auto";
  bool run_self_test = false;
};

// Optional per-cell outputs of Closure::apply; any pointer may be null (docs/runtime.md,
// "Growth rate and uncertainty").
struct CellDiagnostics {
  // Growth rate: Box3D's proxy times exp(log_growth_ratio) where the model has that output and
  // corrected the cell, else the proxy; 0 for stable and rejected cells. In units of N_tot, and
  // in s^-1 for densities in cm^-3 (comoving frame).
  double* growth_over_ntot = nullptr;
  double* growth_rate = nullptr;
  double* growth_over_ntot_proxy = nullptr;  // Box3D's proxy alone, units of N_tot
  double* growth_rate_proxy = nullptr;       // and in s^-1
  // The model's estimate of the spread of its correction, units of N_tot; 0 where no correction
  // is applied (stable, rejected or network-nonfinite cells, Box3D-only closures, no such output).
  double* uncertainty = nullptr;
};

struct ClosureCounters {
  std::uint64_t cells = 0, rejected = 0, no_crossing = 0, box3d_limited = 0, network_nonfinite = 0,
                correction_limited = 0;
};

// A model package already in memory (e.g. received by MPI_Bcast): the same checks as a file.
struct ModelInMemory {
  std::string_view bytes;
};

class Closure {
 public:
  // model_path DODO_BOX3D_ONLY ("box3d"): Box3D only (no ONNX Runtime needed); empty: refused.
  Closure(const std::string& model_path, const ClosureOptions& options);
  // The bytes are read during construction only; the caller keeps ownership.
  Closure(ModelInMemory model, const ClosureOptions& options);
  ~Closure();
  Closure(const Closure&) = delete;
  Closure& operator=(const Closure&) = delete;

  // n cells of strided caller-owned arrays (see box3d.hpp); F_pred may alias F_init with equal
  // strides. status and growth_over_ntot (Box3D's growth proxy) may be null.
  void apply(std::size_t n, ConstCellArray F_init, ConstVelocityArray u, CellArray F_pred, std::uint32_t* status,
             double* growth_over_ntot = nullptr) const;
  // The same, with the learned growth rate and the uncertainty (null fields are not written).
  // The growth rates in s^-1 are computed here from the runtime's N_tot, so callers need no
  // N_tot of their own.
  void apply(std::size_t n, ConstCellArray F_init, ConstVelocityArray u, CellArray F_pred, std::uint32_t* status,
             const CellDiagnostics& diagnostics) const;

  // Runs the package's test vectors; returns the largest |F_pred - expected| / N_tot and throws
  // Error(DODO_ERROR_SELF_TEST) when it exceeds the stored tolerance.
  double self_test() const;

  ClosureCounters counters() const;
  void reset_counters() const;

  bool has_model() const { return model_ != nullptr; }
  OptionalOutputs optional_outputs() const { return model_ ? model_->optional_outputs() : OptionalOutputs{}; }
  Head head() const { return description_.head; }
  const Box3DSettings& box3d_settings() const { return box3d_->settings(); }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const TestVectors& test_vectors() const { return description_.test_vectors; }
  int threads() const { return pool_.threads(); }
  int chunk_size() const { return chunk_size_; }
  const std::string& onnxruntime_path() const { return onnxruntime_path_; }
  const std::string& onnxruntime_version() const { return onnxruntime_version_; }
  // "native", "onnxruntime", or "" without a model.
  std::string evaluator() const { return model_ ? model_->evaluator() : ""; }

 private:
  struct Workspace;
  struct Batch;
  // Loads the model in `bytes` (named `source` in messages); null bytes: Box3D only.
  void initialise(const std::string_view* bytes, const std::string& source, PackageOrigin origin,
                  const ClosureOptions& options);
  // apply(); flavour_images false: the network on each cell alone (the self-test's check of the
  // package's network as exported); counted false: the counters are left as they are (the self-test).
  void apply_batch(std::size_t n, ConstCellArray F_init, ConstVelocityArray u, CellArray F_pred, std::uint32_t* status,
                   const CellDiagnostics& diagnostics, bool flavour_images, bool counted) const;
  static void run_chunk(void* batch, std::size_t chunk, int slot);
  void process_chunk(const Batch& batch, std::size_t begin, std::size_t end, Workspace& workspace) const;
  Workspace* acquire_workspace() const;
  void release_workspace(Workspace* workspace) const;

  ModelDescription description_;
  std::map<std::string, std::string> metadata_;
  std::unique_ptr<OnnxModel> model_;
  std::string onnxruntime_path_, onnxruntime_version_;
  std::unique_ptr<const Box3D> box3d_;
  int chunk_size_;

  mutable ChunkPool pool_;
  // The workspaces, their free list and its lock, tagged with the process (as ChunkPool's
  // Crew): a child of fork() may inherit the lock held by a parent thread that does not exist
  // there (a fork while another thread was inside apply hung the child's first call, outside
  // probe round fifteen), so the child's first chunk abandons the parent's pool, never touching
  // it again, and makes its own.
  struct WorkspacePool;
  struct Workspaces {
    std::atomic<WorkspacePool*> pool{nullptr};
    WorkspacePool& for_this_process();
    ~Workspaces();  // deletes this process's pool; a parent's, inherited by fork(), is left alone
  };
  mutable Workspaces workspaces_;

  mutable std::atomic<std::uint64_t> cells_{0}, rejected_{0}, no_crossing_{0}, box3d_limited_{0},
      network_nonfinite_{0}, correction_limited_{0};
};

}  // namespace dodo::runtime
