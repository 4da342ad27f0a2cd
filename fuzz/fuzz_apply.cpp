// libFuzzer target: the C API's apply path (dodo_apply) on handles created once.
//
// Bytes -> a batch of cells (fuzz_input.hpp) in one of several memory layouts (contiguous,
// structure of arrays, negative cell stride, in place, u = NULL), applied through a model handle
// or a Box3D-only handle. Checks, per cell: the call succeeds; every output is finite; a rejected
// cell's output is its input (zeros when the input was not finite); any other cell conserves the
// flavour-summed four-fluxes of neutrinos and antineutrinos and the lepton number of each flavour,
// and every species stays realizable (n >= |F|); the threaded handle (2 workers) gives bitwise the
// same outputs and flags as the single-threaded one; the batch relabelled (mu <-> tau, nu <-> nubar
// or both) gives the relabelled outputs and the same flags (the flavour images of
// runtime/flavour_symmetry.hpp; fuzz_input.hpp's modes 16 and 32 put cells inside their blend
// band). A failed check aborts (a libFuzzer crash).
//
// Evaluator: a package with "dodo.native_network" (the default model) runs Dodo's own evaluator
// unless DODO_NETWORK_EVALUATOR=onnxruntime is set, which the closure reads at creation.
//
// Model: $DODO_FUZZ_MODEL or the compiled-in path of synthetic-test-equivariant.onnx.
#include <dodo/dodo.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "fuzz_input.hpp"

#ifndef DODO_FUZZ_MODEL_PATH
#define DODO_FUZZ_MODEL_PATH ""
#endif

namespace {

// [0], [1]: model with 0 and 2 worker threads; [2], [3]: Box3D only, 0 and 2 workers.
dodo_closure* handles[4] = {nullptr, nullptr, nullptr, nullptr};

// The cell being checked, printed when a check fails.
struct {
  const double *F = nullptr, *u = nullptr, *G = nullptr;
  std::uint32_t flags = 0;
} current;

[[noreturn]] void fail(const char* what, std::size_t cell, int index, double value) {
  std::fprintf(stderr, "fuzz_apply: %s (cell %zu, index %d, value %.17g)\n", what, cell, index, value);
  if (current.F) {
    std::fprintf(stderr, "flags %u\n", current.flags);
    for (int a = 0; a < 6; ++a)
      std::fprintf(stderr, "F[%d] = % .17g % .17g % .17g % .17g -> % .17g % .17g % .17g % .17g\n", a, current.F[4 * a],
                   current.F[4 * a + 1], current.F[4 * a + 2], current.F[4 * a + 3], current.G[4 * a], current.G[4 * a + 1],
                   current.G[4 * a + 2], current.G[4 * a + 3]);
    if (current.u) std::fprintf(stderr, "u = % .17g % .17g % .17g % .17g\n", current.u[0], current.u[1], current.u[2], current.u[3]);
  }
  std::abort();
}

dodo_closure* create(const char* model, int threads) {
  dodo_options options;
  dodo_options_init(&options);
  options.threads = threads;
  options.chunk_size = 4;  // several chunks per batch, so the workers share them
  dodo_closure* handle = nullptr;
  char message[1024];
  if (dodo_closure_create(model, &options, &handle, message, sizeof message) != DODO_OK) {
    std::fprintf(stderr, "fuzz_apply: cannot create a closure: %s\n", message);
    std::exit(2);
  }
  return handle;
}

// Species relabellings (an involution each): identity, mu <-> tau, nu <-> nubar, both.
constexpr int kRelabel[4][6] = {{0, 1, 2, 3, 4, 5}, {0, 2, 1, 3, 5, 4}, {3, 4, 5, 0, 1, 2}, {3, 5, 4, 0, 2, 1}};

double minkowski(const double* a, const double* b) { return -a[0] * b[0] + a[1] * b[1] + a[2] * b[2] + a[3] * b[3]; }

// Checks one cell's output against its input and flags (canonical layout, 24 + 4 values).
void check_cell(std::size_t c, const double* F, const double* u_or_null, const double* G, std::uint32_t flags) {
  current.F = F;
  current.u = u_or_null;
  current.G = G;
  current.flags = flags;
  for (int v = 0; v < 24; ++v)
    if (!std::isfinite(G[v])) fail("output not finite", c, v, G[v]);
  if (flags & DODO_CELL_REJECTED_MASK) {
    // Contract (dodo.h): zeros when the input is not finite; otherwise the input with negative
    // densities set to 0 and fluxes scaled into the cone; the input itself where it is realizable.
    bool finite = true;
    for (int v = 0; v < 24; ++v) finite = finite && std::isfinite(F[v]);
    if (u_or_null)
      for (int m = 0; m < 4; ++m) finite = finite && std::isfinite(u_or_null[m]);
    bool F_finite = true;
    for (int v = 0; v < 24; ++v) F_finite = F_finite && std::isfinite(F[v]);
    if (!F_finite) {
      for (int v = 0; v < 24; ++v)
        if (G[v] != 0.0) fail("rejected cell with non-finite F: output is not zero", c, v, G[v]);
      return;
    }
    if (!finite && !(flags & DODO_CELL_NONFINITE)) fail("non-finite u not flagged NONFINITE", c, 0, 0.0);
    for (int a = 0; a < 6; ++a) {
      const double* in = F + 4 * a;
      const double* out = G + 4 * a;
      const double in_flux = std::hypot(in[1], std::hypot(in[2], in[3]));
      const double out_flux = std::hypot(out[1], std::hypot(out[2], out[3]));
      if (!(out[0] >= 0.0) || !(out_flux <= out[0] * (1.0 + 1e-15) + 1e-322))
        fail("rejected cell output species not realizable", c, a, out[0] - out_flux);
      // Clearly inside the cone (not within rounding of its edge, nor subnormal): unchanged.
      if (in[0] > 1e-300 && in_flux <= in[0] * (1.0 - 1e-14)) {
        for (int m = 0; m < 4; ++m)
          if (!(out[m] == in[m])) fail("rejected realizable species: output differs from input", c, 4 * a + m, out[m]);
      } else if (!(out[0] == std::fmax(in[0], 0.0)) && in_flux > in[0]) {
        fail("rejected species: density not max(n, 0)", c, 4 * a, out[0]);
      }
    }
    return;
  }
  static const double at_rest[4] = {1.0, 0.0, 0.0, 0.0};
  const double* u = u_or_null ? u_or_null : at_rest;
  // Scale of the cell's numbers in the lab frame; rounding in the boosts grows like W^2.
  double scale = 0.0;
  for (int v = 0; v < 24; ++v) scale = std::fmax(scale, std::fmax(std::fabs(F[v]), std::fabs(G[v])));
  const double W = u[0];
  const double tolerance = 1e-10 * W * W * scale * 24.0;
  // Flavour sums of each four-flux component, neutrinos and antineutrinos.
  for (int s = 0; s < 2; ++s)
    for (int m = 0; m < 4; ++m) {
      double change = 0.0;
      for (int f = 0; f < 3; ++f) change += G[4 * (3 * s + f) + m] - F[4 * (3 * s + f) + m];
      if (!(std::fabs(change) <= tolerance)) fail("flavour sum not conserved", c, 4 * s + m, change);
    }
  // Lepton number per flavour: comoving n_nu_f - n_nubar_f.
  for (int f = 0; f < 3; ++f) {
    double dnu[4], dnubar[4];
    for (int m = 0; m < 4; ++m) {
      dnu[m] = G[4 * f + m] - F[4 * f + m];
      dnubar[m] = G[4 * (3 + f) + m] - F[4 * (3 + f) + m];
    }
    const double change = -minkowski(dnu, u) + minkowski(dnubar, u);
    if (!(std::fabs(change) <= tolerance)) fail("lepton number not conserved", c, f, change);
  }
  // Realizability in the lab frame (the future light cone is frame independent).
  for (int a = 0; a < 6; ++a) {
    const double* species = G + 4 * a;
    const double flux = std::hypot(species[1], std::hypot(species[2], species[3]));
    if (!(species[0] - flux >= -tolerance)) fail("output species not realizable", c, a, species[0] - flux);
  }
}

struct Layout {
  std::vector<double> F_buffer, u_buffer, out_buffer;
  ptrdiff_t F_strides[3], u_strides[2], out_strides[3];
  const double* F_base;
  const double* u_base;
  double* out_base;
};

// Lays the canonical cells out as the flags say; returns pointers to cell 0 and strides.
void lay_out(std::size_t n, const std::vector<double>& F, const std::vector<double>& u, std::uint8_t flags, Layout& L) {
  const bool soa = flags & 1, reversed = flags & 2, in_place = flags & 4, no_u = flags & 8, u_soa = flags & 16;
  L.F_buffer.assign(n * 24, 0.0);
  ptrdiff_t cs = 24, ss = 4, ms = 1;
  if (soa) {
    cs = 1;
    ss = static_cast<ptrdiff_t>(4 * n);
    ms = static_cast<ptrdiff_t>(n);
  }
  for (std::size_t c = 0; c < n; ++c)
    for (int a = 0; a < 6; ++a)
      for (int m = 0; m < 4; ++m) L.F_buffer[c * cs + a * ss + m * ms] = F[c * 24 + 4 * a + m];
  // Reversed: the caller passes its last cell as cell 0 with a negative cell stride.
  L.F_strides[0] = reversed ? -cs : cs;
  L.F_strides[1] = ss;
  L.F_strides[2] = ms;
  L.F_base = L.F_buffer.data() + (reversed ? (n - 1) * cs : 0);
  if (reversed) {
    // The buffer holds cells in canonical order; reading with a negative stride from the last
    // cell visits them backwards. Swap so that the API sees canonical cell c at position c.
    std::vector<double> swapped(L.F_buffer.size());
    for (std::size_t c = 0; c < n; ++c)
      for (int a = 0; a < 6; ++a)
        for (int m = 0; m < 4; ++m) swapped[(n - 1 - c) * cs + a * ss + m * ms] = F[c * 24 + 4 * a + m];
    L.F_buffer.swap(swapped);
    L.F_base = L.F_buffer.data() + (n - 1) * cs;
  }
  if (no_u) {
    L.u_base = nullptr;
  } else {
    L.u_buffer.assign(n * 4, 0.0);
    ptrdiff_t ucs = u_soa ? 1 : 4, ums = u_soa ? static_cast<ptrdiff_t>(n) : 1;
    for (std::size_t c = 0; c < n; ++c)
      for (int m = 0; m < 4; ++m) L.u_buffer[c * ucs + m * ums] = u[c * 4 + m];
    L.u_strides[0] = ucs;
    L.u_strides[1] = ums;
    L.u_base = L.u_buffer.data();
  }
  if (in_place) {
    L.out_base = const_cast<double*>(L.F_base);
    std::memcpy(L.out_strides, L.F_strides, sizeof L.out_strides);
  } else {
    L.out_buffer.assign(n * 24 + 1, NAN);  // NaN: an output never written shows up
    L.out_strides[0] = -24;                // output always backwards, to vary it independently
    L.out_strides[1] = 4;
    L.out_strides[2] = 1;
    L.out_base = L.out_buffer.data() + (n - 1) * 24;
  }
}

void read_back(std::size_t n, const Layout& L, std::vector<double>& G) {
  G.resize(n * 24);
  for (std::size_t c = 0; c < n; ++c)
    for (int a = 0; a < 6; ++a)
      for (int m = 0; m < 4; ++m)
        G[c * 24 + 4 * a + m] = L.out_base[static_cast<ptrdiff_t>(c) * L.out_strides[0] + a * L.out_strides[1] +
                                           m * L.out_strides[2]];
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* model = std::getenv("DODO_FUZZ_MODEL");
  if (!model || !*model) model = DODO_FUZZ_MODEL_PATH;
  handles[0] = create(model, 0);
  handles[1] = create(model, 2);
  handles[2] = create(nullptr, 0);
  handles[3] = create(nullptr, 2);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 3) return 0;
  dodo_fuzz::Bytes in(data, size);
  const bool with_model = (in.byte() & 1) == 0;
  const std::size_t n = 1 + in.byte() % 12;
  const std::uint8_t layout_flags = in.byte();
  std::vector<double> F(n * 24), u(n * 4);
  for (std::size_t c = 0; c < n; ++c) dodo_fuzz::make_cell(in, &F[c * 24], &u[c * 4]);

  std::vector<double> results[2];
  std::vector<std::uint32_t> statuses[2];
  for (int run = 0; run < 2; ++run) {
    dodo_closure* handle = handles[(with_model ? 0 : 2) + run];
    Layout L;
    lay_out(n, F, u, layout_flags, L);
    statuses[run].assign(n, 0xFFFFFFFFu);
    const dodo_status status = dodo_apply(handle, n, L.F_base, L.F_strides, L.u_base, L.u_base ? L.u_strides : nullptr,
                                          L.out_base, L.out_strides, statuses[run].data());
    if (status != DODO_OK) {
      char message[512];
      dodo_last_error(handle, message, sizeof message);
      std::fprintf(stderr, "fuzz_apply: dodo_apply failed: %s: %s\n", dodo_status_name(status), message);
      std::abort();
    }
    read_back(n, L, results[run]);
    for (std::size_t c = 0; c < n; ++c)
      check_cell(c, &F[c * 24], L.u_base ? &u[c * 4] : nullptr, &results[run][c * 24], statuses[run][c]);
  }
  if (std::memcmp(results[0].data(), results[1].data(), n * 24 * sizeof(double)) != 0 || statuses[0] != statuses[1]) {
    std::fprintf(stderr, "fuzz_apply: threaded and single-threaded results differ\n");
    std::abort();
  }
  // Flavour symmetry (physics.md section 3; runtime/flavour_symmetry.hpp): the batch with mu <-> tau,
  // nu <-> nubar or both exchanged must give the exchanged outputs (to rounding: the comoving
  // densities are summed in an order the exchange keeps, the rest of the arithmetic may differ in
  // its last bits) and the same cell flags.
  const int relabelling = 1 + in.byte() % 3;
  std::vector<double> F_swapped(n * 24);
  for (std::size_t c = 0; c < n; ++c)
    for (int a = 0; a < 6; ++a)
      for (int m = 0; m < 4; ++m) F_swapped[c * 24 + 4 * a + m] = F[c * 24 + 4 * kRelabel[relabelling][a] + m];
  Layout L;
  lay_out(n, F_swapped, u, static_cast<std::uint8_t>(layout_flags & 8), L);  // contiguous; u as before
  std::vector<std::uint32_t> swapped_status(n, 0xFFFFFFFFu);
  dodo_closure* handle = handles[with_model ? 0 : 2];
  if (dodo_apply(handle, n, L.F_base, L.F_strides, L.u_base, L.u_base ? L.u_strides : nullptr, L.out_base,
                 L.out_strides, swapped_status.data()) != DODO_OK)
    fail("dodo_apply failed on the relabelled batch", 0, relabelling, 0.0);
  std::vector<double> G_swapped;
  read_back(n, L, G_swapped);
  for (std::size_t c = 0; c < n; ++c) {
    const double* F_c = &F[c * 24];
    const double* G_c = &results[0][c * 24];
    current.F = F_c;
    current.u = L.u_base ? &u[c * 4] : nullptr;
    current.G = G_c;
    current.flags = statuses[0][c];
    if (swapped_status[c] != statuses[0][c]) fail("relabelled cell: flags differ", c, relabelling, swapped_status[c]);
    const double W = L.u_base ? u[c * 4] : 1.0;
    double scale = 0.0;
    for (int v = 0; v < 24; ++v) scale = std::fmax(scale, std::fmax(std::fabs(F_c[v]), std::fabs(G_c[v])));
    const double tolerance = 1e-10 * W * W * scale * 24.0;
    for (int a = 0; a < 6; ++a)
      for (int m = 0; m < 4; ++m) {
        const double back = G_swapped[c * 24 + 4 * kRelabel[relabelling][a] + m];
        const double difference = back - G_c[4 * a + m];
        if (!(std::fabs(difference) <= tolerance) && !(back == G_c[4 * a + m]))
          fail("relabelled cell: output is not the relabelled output", c, 4 * a + m, difference);
      }
  }
  return 0;
}
