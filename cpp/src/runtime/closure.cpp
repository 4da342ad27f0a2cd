#include "closure.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>

#include "../frame.hpp"
#include "../realizability.hpp"
#include "errors.hpp"
#include "residual.hpp"

namespace dodo::runtime {

// Scratch for one chunk: the lab inputs gathered from the caller's strides and the rest-frame
// pieces of each cell (Box3D's, reused by the head), and the network's buffers. Sized once for
// chunk_size cells.
struct Closure::Workspace {
  explicit Workspace(std::size_t chunk_size, const OnnxModel* model)
      : F_init(chunk_size * kCellValues), cells(chunk_size), network_row(chunk_size) {
    if (model) network = std::make_unique<EvaluationBuffers>(model->api(), chunk_size, model->output_size());
  }
  std::vector<double> F_init;
  std::vector<RestFrameCell> cells;
  std::vector<std::uint32_t> network_row;  // row of the cell in the network's input (cells that need it)
  std::unique_ptr<EvaluationBuffers> network;
};

// One apply() call as seen by the chunks.
struct Closure::Batch {
  const Closure* closure;
  std::size_t n;
  ConstCellArray F_init;
  ConstVelocityArray u;
  CellArray F_pred;
  std::uint32_t* status;
  double* growth;
  double* ntot;
  // First failure of any chunk (an ORT error); reported after the batch.
  std::mutex error_mutex;
  std::exception_ptr error;
};

namespace {

ClosureOptions checked(const ClosureOptions& options) {
  if (options.threads < 0 || options.threads > 1024)
    throw Error(DODO_ERROR_INVALID_ARGUMENT, "threads must lie in [0, 1024]; got " + std::to_string(options.threads));
  if (options.chunk_size < 1 || options.chunk_size > (1 << 20))
    throw Error(DODO_ERROR_INVALID_ARGUMENT, "chunk_size must lie in [1, 1048576]; got " + std::to_string(options.chunk_size));
  if (options.box3d.max_flux_factor < 0 || options.box3d.max_flux_factor >= 1)
    throw Error(DODO_ERROR_INVALID_ARGUMENT, "max_flux_factor must lie in (0, 1), or 0 for the model's");
  if (options.box3d.lebedev_order < 0)
    throw Error(DODO_ERROR_INVALID_ARGUMENT, "lebedev_order must be positive, or 0 for the model's");
  return options;
}

std::unique_ptr<const Box3D> make_box3d(const Box3DSettings& settings) {
  try {
    return std::make_unique<const Box3D>(settings);
  } catch (const std::invalid_argument& error) {
    throw Error(DODO_ERROR_INVALID_ARGUMENT, std::string("Box3D settings: ") + error.what());
  }
}

bool all_finite(const double* values, int count) {
  for (int i = 0; i < count; ++i)
    if (!std::isfinite(values[i])) return false;
  return true;
}

}  // namespace

Closure::Closure(const std::string& model_path, const ClosureOptions& raw_options)
    : chunk_size_(checked(raw_options).chunk_size), pool_(raw_options.threads) {
  const ClosureOptions& options = raw_options;
  if (model_path.empty()) {
    box3d_ = make_box3d(box3d_settings_without_model(options.box3d));
  } else {
    const OrtLibrary& library = load_onnxruntime(options.onnxruntime_library);
    onnxruntime_path_ = library.path;
    onnxruntime_version_ = library.version;
    model_ = std::make_unique<OnnxModel>(library, model_path, options.device);
    metadata_ = model_->metadata();
    description_ = describe_model(metadata_, model_->output_size(), options.box3d);
    box3d_ = make_box3d(description_.box3d);
  }
  // Warm-up: one workspace per thread, and one network call each so ORT sizes its arena now.
  for (int slot = 0; slot < pool_.threads(); ++slot) {
    workspaces_.push_back(std::make_unique<Workspace>(static_cast<std::size_t>(chunk_size_), model_.get()));
    free_workspaces_.push_back(workspaces_.back().get());
    if (model_) model_->run(*workspaces_.back()->network, static_cast<std::size_t>(chunk_size_));
  }
  // At load time a package without test vectors is accepted; an explicit self_test() refuses it.
  if (options.run_self_test && model_ && description_.test_vectors.cells > 0) {
    self_test();
    reset_counters();  // counters describe the caller's cells only
  }
}

Closure::~Closure() = default;

Closure::Workspace* Closure::acquire_workspace() const {
  std::lock_guard<std::mutex> lock(workspace_mutex_);
  if (free_workspaces_.empty()) {
    // More concurrent callers than ever before (a host's threads sharing the handle): grow once.
    workspaces_.push_back(std::make_unique<Workspace>(static_cast<std::size_t>(chunk_size_), model_.get()));
    free_workspaces_.reserve(workspaces_.size());
    return workspaces_.back().get();
  }
  Workspace* workspace = free_workspaces_.back();
  free_workspaces_.pop_back();
  return workspace;
}

void Closure::release_workspace(Workspace* workspace) const {
  std::lock_guard<std::mutex> lock(workspace_mutex_);
  free_workspaces_.push_back(workspace);  // capacity reserved when the workspace was made
}

void Closure::run_chunk(void* context, std::size_t chunk, int /*slot*/) {
  Batch& batch = *static_cast<Batch*>(context);
  const Closure& self = *batch.closure;
  const std::size_t begin = chunk * static_cast<std::size_t>(self.chunk_size_);
  const std::size_t end = std::min(batch.n, begin + static_cast<std::size_t>(self.chunk_size_));
  Workspace* workspace = nullptr;
  try {
    workspace = self.acquire_workspace();
    self.process_chunk(batch, begin, end, *workspace);
  } catch (...) {
    std::lock_guard<std::mutex> lock(batch.error_mutex);
    if (!batch.error) batch.error = std::current_exception();
  }
  if (workspace) self.release_workspace(workspace);
}

void Closure::apply(std::size_t n, ConstCellArray F_init, ConstVelocityArray u, CellArray F_pred,
                    std::uint32_t* status, double* growth_over_ntot, double* ntot) const {
  if (n == 0) return;
  if (!F_init.data || !F_pred.data) throw Error(DODO_ERROR_INVALID_ARGUMENT, "F_init and F_pred must not be null");
  Batch batch{this, n, F_init, u, F_pred, status, growth_over_ntot, ntot, {}, {}};
  const std::size_t chunks = (n + static_cast<std::size_t>(chunk_size_) - 1) / static_cast<std::size_t>(chunk_size_);
  if (!pool_.try_run(chunks, &Closure::run_chunk, &batch)) {
    // The pool serves another caller's batch: this thread does its own chunks.
    for (std::size_t chunk = 0; chunk < chunks; ++chunk) run_chunk(&batch, chunk, 0);
  }
  if (batch.error) std::rethrow_exception(batch.error);
}

void Closure::process_chunk(const Batch& batch, std::size_t begin, std::size_t end, Workspace& w) const {
  const std::size_t count = end - begin;
  ClosureCounters events;
  std::size_t network_rows = 0;  // cells that need the network, packed at the front of its input

  // 1. Gather, Box3D in the rest frame, invariants of the cells that need the network: not
  //    rejected and not stable (a NO_CROSSING cell is returned unchanged, network skipped).
  for (std::size_t i = 0; i < count; ++i) {
    const std::size_t cell = begin + i;
    double* F = &w.F_init[i * kCellValues];
    const double* source = batch.F_init.data + static_cast<std::ptrdiff_t>(cell) * batch.F_init.cell_stride;
    for (int a = 0; a < kSpecies; ++a)
      for (int m = 0; m < kComponents; ++m)
        F[value_index(a, m)] = source[a * batch.F_init.species_stride + m * batch.F_init.component_stride];
    const double* velocity = nullptr;
    double u[4];
    if (batch.u.data) {
      const double* source_u = batch.u.data + static_cast<std::ptrdiff_t>(cell) * batch.u.cell_stride;
      for (int m = 0; m < 4; ++m) u[m] = source_u[m * batch.u.component_stride];
      velocity = u;
    }
    RestFrameCell& rest = w.cells[i];
    box3d_->rest_frame_cell(F, velocity, rest);
    if (!model_ || (rest.status & (kCellRejectedMask | kCell_NO_CROSSING))) continue;
    w.network_row[i] = static_cast<std::uint32_t>(network_rows);
    double invariants27[kInvariants];
    rest_frame_invariants(rest.F, invariants27);
    float* row = w.network->input_row(network_rows++);
    for (int k = 0; k < kInvariants; ++k) row[k] = static_cast<float>(invariants27[k]);
  }
  if (network_rows > 0) model_->run(*w.network, network_rows);

  // 2. Head, projection, limiter, boost back (finalise_cell); scatter to the caller's strides.
  for (std::size_t i = 0; i < count; ++i) {
    const std::size_t cell = begin + i;
    const double* F = &w.F_init[i * kCellValues];
    const RestFrameCell& rest = w.cells[i];
    std::uint32_t flags = rest.status;
    double F_out[kCellValues];
    bool done = false;
    if (flags & (kCellRejectedMask | kCell_NO_CROSSING)) {
      if (flags & kCellRejectedMask) realizable_fallback(F, F_out);
      else std::copy(F, F + kCellValues, F_out);  // stable: returned unchanged
      done = true;
    } else if (model_) {
      double correction[kCellValues];
      assemble_correction(description_.head, w.network->output_row(w.network_row[i]), rest.F, rest.dF, correction);
      if (!all_finite(correction, kCellValues)) {
        flags |= kCell_NETWORK_NONFINITE;
      } else {
        project_conserving(correction);
        double F_box_rest[kCellValues];
        for (int v = 0; v < kCellValues; ++v) F_box_rest[v] = rest.F[v] + rest.dF[v];
        const double theta = realizable_step(F_box_rest, correction);
        if (theta < 1.0) flags |= kCell_CORRECTION_LIMITED;
        double change[kCellValues];
        for (int v = 0; v < kCellValues; ++v) change[v] = rest.dF[v] + theta * correction[v];
        done = finalise_cell(F, rest.boost, rest.ntot, change, F_out);
        if (!done) flags |= kCell_NETWORK_NONFINITE;  // overflow near DBL_MAX: Box3D's result instead
      }
    }
    if (!done && !finalise_cell(F, rest.boost, rest.ntot, rest.dF, F_out)) {
      flags = kCell_NONFINITE;  // Box3D's own result is not representable: rejected
      realizable_fallback(F, F_out);
    }
    double* target = batch.F_pred.data + static_cast<std::ptrdiff_t>(cell) * batch.F_pred.cell_stride;
    for (int a = 0; a < kSpecies; ++a)
      for (int m = 0; m < kComponents; ++m)
        target[a * batch.F_pred.species_stride + m * batch.F_pred.component_stride] = F_out[value_index(a, m)];
    if (batch.status) batch.status[cell] = flags;
    if (batch.growth) batch.growth[cell] = rest.growth_over_ntot;
    if (batch.ntot) batch.ntot[cell] = (flags & kCellRejectedMask) ? 0.0 : rest.ntot;
    events.rejected += (flags & kCellRejectedMask) != 0;
    events.no_crossing += (flags & kCell_NO_CROSSING) != 0;
    events.box3d_limited += (flags & kCell_BOX3D_LIMITED) != 0;
    events.network_nonfinite += (flags & kCell_NETWORK_NONFINITE) != 0;
    events.correction_limited += (flags & kCell_CORRECTION_LIMITED) != 0;
  }
  cells_.fetch_add(count, std::memory_order_relaxed);
  rejected_.fetch_add(events.rejected, std::memory_order_relaxed);
  no_crossing_.fetch_add(events.no_crossing, std::memory_order_relaxed);
  box3d_limited_.fetch_add(events.box3d_limited, std::memory_order_relaxed);
  network_nonfinite_.fetch_add(events.network_nonfinite, std::memory_order_relaxed);
  correction_limited_.fetch_add(events.correction_limited, std::memory_order_relaxed);
}

double Closure::self_test() const {
  const TestVectors& vectors = description_.test_vectors;
  if (!model_) throw Error(DODO_ERROR_NO_MODEL, "self-test needs a model; this closure is Box3D-only");
  if (vectors.cells == 0) throw Error(DODO_ERROR_SELF_TEST, "model package has no \"dodo.test_vectors\"");
  std::vector<double> predicted(vectors.cells * kCellValues);
  ConstVelocityArray velocity;
  velocity.data = vectors.u.empty() ? nullptr : vectors.u.data();
  apply(vectors.cells, ConstCellArray{vectors.F_init.data()}, velocity, CellArray{predicted.data()}, nullptr);
  double worst = 0.0;
  std::size_t worst_cell = 0;
  for (std::size_t c = 0; c < vectors.cells; ++c) {
    const double* F = &vectors.F_init[c * kCellValues];
    double ntot = comoving_total_density(F, velocity.data ? &vectors.u[c * 4] : nullptr);
    if (!(ntot > 0)) ntot = 1.0;
    for (int v = 0; v < kCellValues; ++v) {
      const double error = std::fabs(predicted[c * kCellValues + v] - vectors.F_pred[c * kCellValues + v]) / ntot;
      if (!(error <= worst)) {  // also catches NaN
        worst = std::isnan(error) ? INFINITY : error;
        worst_cell = c;
      }
    }
  }
  if (!(worst <= vectors.atol_over_ntot)) {
    char text[160];
    std::snprintf(text, sizeof text, "self-test failed: test vector %zu differs by %.3g N_tot (tolerance %.3g N_tot)",
                  worst_cell, worst, vectors.atol_over_ntot);
    throw Error(DODO_ERROR_SELF_TEST, text);
  }
  return worst;
}

ClosureCounters Closure::counters() const {
  ClosureCounters out;
  out.cells = cells_.load();
  out.rejected = rejected_.load();
  out.no_crossing = no_crossing_.load();
  out.box3d_limited = box3d_limited_.load();
  out.network_nonfinite = network_nonfinite_.load();
  out.correction_limited = correction_limited_.load();
  return out;
}

void Closure::reset_counters() const {
  cells_ = 0;
  rejected_ = 0;
  no_crossing_ = 0;
  box3d_limited_ = 0;
  network_nonfinite_ = 0;
  correction_limited_ = 0;
}

}  // namespace dodo::runtime
