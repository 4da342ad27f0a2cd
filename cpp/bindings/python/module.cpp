// pybind11 module dodo._core: numpy in, numpy out, GIL released while computing.
// Shapes and dtypes are checked in python/dodo (clear ValueErrors); here arrays arrive as
// C-contiguous float64 of shape (n, 6, 4) and (n, 4).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>
#include <stdexcept>
#include <string>

#include "box3d/box3d.hpp"
#include "box3d/lebedev.hpp"
#include "box3d/maxent.hpp"
#include "cell_status.hpp"
#include "frame.hpp"
#include "gil.hpp"
#include "out_arrays.hpp"
#include "realizability.hpp"
#include "signal_senders.hpp"

#ifdef DODO_WITH_RUNTIME
void register_runtime(pybind11::module_& m);
#endif
void register_qke(pybind11::module_& m);

namespace py = pybind11;
// Input arrays: C-contiguous float64, converted when they are not, and aligned: numpy hands a
// misaligned array (a buffer at an odd offset) over as it is unless asked, and reading doubles
// through a misaligned pointer is undefined behaviour (outside probe, round eighteen); such an
// array is copied (an aligned one is passed as before, no copy).
using CArray = py::array_t<double, py::array::c_style | py::array::forcecast | py::detail::npy_api::NPY_ARRAY_ALIGNED_>;

namespace {

dodo::ZMethod parse_z_method(const std::string& name) {
  if (name == "exact") return dodo::ZMethod::kExact;
  if (name == "jedynak") return dodo::ZMethod::kJedynak;
  throw py::value_error("z_method must be 'exact' or 'jedynak'; got '" + name + "'");
}

std::size_t check_cells(const CArray& F) {
  if (F.ndim() != 3 || F.shape(1) != dodo::kSpecies || F.shape(2) != dodo::kComponents)
    throw py::value_error("F must have shape (n, 6, 4)");
  return static_cast<std::size_t>(F.shape(0));
}

const double* velocity_pointer(const py::object& u, std::size_t n, CArray& holder) {
  if (u.is_none()) return nullptr;
  holder = CArray::ensure(u);
  if (!holder || holder.ndim() != 2 || static_cast<std::size_t>(holder.shape(0)) != n || holder.shape(1) != 4)
    throw py::value_error("u must have shape (n, 4) matching F");
  return holder.data();
}

// Cells per thread of a slice at least: Box3D starts its threads for each slice (tens of
// microseconds each), so that a slice of a few cells per thread would spend its time starting them.
constexpr std::size_t kCellsPerThread = 256;
// Least cells (or four-vectors) a slice of the boosts holds: a boost costs about a hundredth of a
// Box3D cell, so slices of Box3D's size would take the GIL back every ~0.1 ms.
constexpr std::size_t kBoostSlice = std::size_t{1} << 18;

py::tuple apply_box3d(const dodo::Box3D& box3d, const CArray& F, const py::object& u, int threads) {
  const std::size_t n = check_cells(F);
  CArray u_holder;
  const double* u_data = velocity_pointer(u, n, u_holder);
  CArray F_box({static_cast<py::ssize_t>(n), py::ssize_t{6}, py::ssize_t{4}});
  CArray growth(static_cast<py::ssize_t>(n));
  CArray ntot(static_cast<py::ssize_t>(n));
  py::array_t<std::uint32_t> status(static_cast<py::ssize_t>(n));
  const double* F_data = F.data();
  double* box_data = F_box.mutable_data();
  double* growth_data = growth.mutable_data();
  double* ntot_data = ntot.mutable_data();
  std::uint32_t* status_data = status.mutable_data();
  dodo_python::in_interruptible_slices(n, [&](std::size_t begin, std::size_t count) {
    dodo::ConstCellArray input{F_data + begin * dodo::kCellValues};
    dodo::ConstVelocityArray velocity{u_data ? u_data + begin * 4 : nullptr};
    dodo::CellArray output{box_data + begin * dodo::kCellValues};
    box3d.apply(count, input, velocity, output, growth_data + begin, ntot_data + begin, status_data + begin, threads);
  }, dodo_python::lebedev_cost(box3d.settings().lebedev_order), dodo_python::busy_cells(threads, kCellsPerThread));
  return py::make_tuple(F_box, growth, ntot, status);
}

// dodo.box3d's outputs, written into the caller's arrays (dodo.Box3DResult.empty or a previous
// call's): nothing allocated. growth_rate first receives N_tot, then becomes
// (growth_over_ntot * N_tot) * kGrowthRatePerNtot in place.
void apply_box3d_into(const dodo::Box3D& box3d, const CArray& F, const py::object& u, const py::array& F_box,
                      const py::array& growth, const py::array& rate, const py::array& status, int threads) {
  const std::size_t n = check_cells(F);
  CArray u_holder;
  const double* u_data = velocity_pointer(u, n, u_holder);
  double* box_data = dodo_python::output_data<double>(F_box, "out.F_box", n * dodo::kCellValues);
  double* growth_data = dodo_python::output_data<double>(growth, "out.growth_over_ntot", n);
  double* rate_data = dodo_python::output_data<double>(rate, "out.growth_rate", n);
  std::uint32_t* status_data = dodo_python::output_data<std::uint32_t>(status, "out.status", n);
  using dodo_python::memory_range;
  dodo_python::check_disjoint(
      {memory_range("F_init", F), u_data ? memory_range("u", u_holder) : dodo_python::MemoryRange{"u"}},
      {memory_range("out.F_box", F_box), memory_range("out.growth_over_ntot", growth),
       memory_range("out.growth_rate", rate), memory_range("out.status", status)});
  const double* F_data = F.data();
  dodo_python::in_interruptible_slices(n, [&](std::size_t begin, std::size_t count) {
    box3d.apply(count, dodo::ConstCellArray{F_data + begin * dodo::kCellValues},
                dodo::ConstVelocityArray{u_data ? u_data + begin * 4 : nullptr},
                dodo::CellArray{box_data + begin * dodo::kCellValues}, growth_data + begin, rate_data + begin,
                status_data + begin, threads);
    for (std::size_t c = begin; c < begin + count; ++c)
      rate_data[c] = dodo::growth_rate_never_rounded_to_zero(growth_data[c] * rate_data[c] * dodo::kGrowthRatePerNtot,
                                                             growth_data[c], rate_data[c]);
  }, dodo_python::lebedev_cost(box3d.settings().lebedev_order), dodo_python::busy_cells(threads, kCellsPerThread));
}

// Box3D's ELN-crossing inputs (RestFrameCell::crossing) of n cells: (n, 18) float64, NaN for a
// cell that is rejected or that the stability screen decided without the angular computation.
CArray crossing_features(const dodo::Box3D& box3d, const CArray& F, const py::object& u) {
  const std::size_t n = check_cells(F);
  CArray u_holder;
  const double* u_data = velocity_pointer(u, n, u_holder);
  CArray out({static_cast<py::ssize_t>(n), py::ssize_t{dodo::kCrossingFeatures}});
  const double* F_data = F.data();
  double* out_data = out.mutable_data();
  // In slices, as box3d (it ran in one piece: Ctrl-C was seen at the call's end, outside probe,
  // round forty-three); each slice a whole number of blocks, so the blocks are those of one piece.
  std::vector<dodo::RestFrameCell> cells(dodo::Box3D::kBlockCells);
  dodo_python::in_interruptible_slices(n, [&](std::size_t first, std::size_t cells_in_slice) {
    for (std::size_t begin = first; begin < first + cells_in_slice; begin += dodo::Box3D::kBlockCells) {
      const std::size_t count = std::min(dodo::Box3D::kBlockCells, first + cells_in_slice - begin);
      box3d.rest_frame_cells(count, F_data + begin * dodo::kCellValues, u_data ? u_data + begin * 4 : nullptr,
                             cells.data(), true);
      for (std::size_t i = 0; i < count; ++i) {
        double* row = out_data + (begin + i) * dodo::kCrossingFeatures;
        const std::uint32_t status = cells[i].status;
        const bool computed = !(status & dodo::kCellRejectedMask) &&
                              (!(status & dodo::kCell_NO_CROSSING) || !box3d.settings().screen_stable_cells);
        for (int k = 0; k < dodo::kCrossingFeatures; ++k)
          row[k] = computed ? cells[i].crossing[k] : std::numeric_limits<double>::quiet_NaN();
      }
    }
  }, dodo_python::lebedev_cost(box3d.settings().lebedev_order));
  return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "Dodo's C++ physics core (Box3D, frames, invariants). Use the public API in `dodo`.";
  m.attr("__version__") = DODO_VERSION;

  py::class_<dodo::Box3D>(m, "Box3D")
      .def(py::init([](int lebedev_order, const std::string& z_method, double max_flux_factor,
                       bool screen_stable_cells) {
             dodo::Box3DSettings settings;
             settings.lebedev_order = lebedev_order;
             settings.z_method = parse_z_method(z_method);
             settings.max_flux_factor = max_flux_factor;
             settings.screen_stable_cells = screen_stable_cells;
             try {
               return dodo::Box3D(settings);
             } catch (const std::invalid_argument& error) {
               throw py::value_error(error.what());
             }
           }),
           py::arg("lebedev_order") = 17, py::arg("z_method") = "exact", py::arg("max_flux_factor") = 0.98,
           // False: every cell through the full computation (tests compare the screen against it).
           py::arg("screen_stable_cells") = true)
      .def_property_readonly("lebedev_order", [](const dodo::Box3D& b) { return b.settings().lebedev_order; })
      .def_property_readonly("quadrature_size", [](const dodo::Box3D& b) { return b.quadrature().size(); })
      .def("apply", &apply_box3d, py::arg("F"), py::arg("u"), py::arg("threads") = 1,
           "Box3D of n cells: returns (F_box, growth_over_ntot, ntot, status).")
      .def("apply_into", &apply_box3d_into, py::arg("F"), py::arg("u"), py::arg("F_box"), py::arg("growth_over_ntot"),
           py::arg("growth_rate"), py::arg("status"), py::arg("threads") = 1,
           "Box3D of n cells into F_box (n,6,4), growth_over_ntot, growth_rate (n,) float64, status (n,) "
           "uint32: C-contiguous, writeable, not overlapping the inputs or each other.")
      .def("crossing_features", &crossing_features, py::arg("F"), py::arg("u"),
           "Box3D's ELN-crossing inputs of n cells, (n, 18): per flavour pair I+, I-, the solid-angle fraction "
           "with G > 0, the two lobes' mean-direction lengths and the cosine between them; NaN where not computed.");

  m.def("invariants", [](const CArray& F, const py::object& u) {
    const std::size_t n = check_cells(F);
    CArray u_holder;
    const double* u_data = velocity_pointer(u, n, u_holder);
    CArray out({static_cast<py::ssize_t>(n), py::ssize_t{dodo::kInvariants}});
    const double* F_data = F.data();
    double* out_data = out.mutable_data();
    // In slices (Ctrl-C seen between them: 10^8 cells took ~17 s in one piece, outside probe, round
    // forty-three).
    dodo_python::in_interruptible_slices(n, [&](std::size_t begin, std::size_t count) {
      for (std::size_t c = begin; c < begin + count; ++c)
        dodo::invariants(F_data + c * dodo::kCellValues, u_data ? u_data + 4 * c : nullptr,
                         out_data + c * dodo::kInvariants);
    });
    return out;
  });

  // The one velocity check (frame.hpp), so Python refuses exactly the u that the C API flags.
  m.def("check_four_velocities", [](const CArray& u) {
    if (u.ndim() != 2 || u.shape(1) != 4) throw py::value_error("u must have shape (n, 4)");
    const auto n = u.shape(0);
    py::array_t<bool> valid(n);
    CArray norm_error(n);
    for (py::ssize_t c = 0; c < n; ++c) {
      valid.mutable_data()[c] = dodo::is_valid_four_velocity(u.data() + 4 * c);
      norm_error.mutable_data()[c] = dodo::four_velocity_norm_error(u.data() + 4 * c);
    }
    return py::make_tuple(valid, norm_error);
  }, py::arg("u"), "(n, 4) -> (valid (n,) bool, |u.u + 1| (n,)): the check dodo_apply uses.");

  m.def("all_four_velocities_valid", [](const CArray& u) {
    if (u.ndim() != 2 || u.shape(1) != 4) throw py::value_error("u must have shape (n, 4)");
    const double* data = u.data();
    const auto n = static_cast<std::size_t>(u.shape(0));
    bool valid = true;
    dodo_python::without_gil([&] { valid = dodo::all_valid_four_velocities(n, data); });
    return valid;
  }, py::arg("u"), "(n, 4) -> True when every row passes check_four_velocities (no arrays made).");

  m.def("comoving_total_density", [](const CArray& F, const py::object& u) {
    const std::size_t n = check_cells(F);
    CArray u_holder;
    const double* u_data = velocity_pointer(u, n, u_holder);
    CArray out(static_cast<py::ssize_t>(n));
    const double* F_data = F.data();
    double* out_data = out.mutable_data();
    // Without the GIL, in slices: the loop held the GIL for the whole batch (other Python threads
    // stood still; README says the numerics run with the GIL released) and ignored Ctrl-C
    // (outside probe, round forty-three).
    dodo_python::in_interruptible_slices(n, [&](std::size_t begin, std::size_t count) {
      for (std::size_t c = begin; c < begin + count; ++c)
        out_data[c] = dodo::comoving_total_density(F_data + c * dodo::kCellValues, u_data ? u_data + 4 * c : nullptr);
    });
    return out;
  });

  m.def("boost_to_rest", [](const CArray& F, const CArray& u, bool inverse) {
    const std::size_t n = check_cells(F);
    if (u.ndim() != 2 || static_cast<std::size_t>(u.shape(0)) != n || u.shape(1) != 4)
      throw py::value_error("u must have shape (n, 4) matching F");
    CArray out({static_cast<py::ssize_t>(n), py::ssize_t{6}, py::ssize_t{4}});
    const double* F_data = F.data();
    const double* u_data = u.data();
    double* out_data = out.mutable_data();
    // Without the GIL, in slices (kBoostSlice cells or more): it ran in one piece holding the GIL,
    // so Ctrl-C waited for the call's end and other Python threads stood still (outside probe,
    // round forty-four: about 3 s for 10^8 four-vectors).
    dodo_python::in_interruptible_slices(n, [&](std::size_t begin, std::size_t count) {
      for (std::size_t c = begin; c < begin + count; ++c) {
        const double* cell = F_data + c * dodo::kCellValues;
        double* target = out_data + c * dodo::kCellValues;
        if (inverse) dodo::boost_cell_from_rest(u_data + 4 * c, cell, target);
        else dodo::boost_cell_to_rest(u_data + 4 * c, cell, target);
      }
    }, 1.0, kBoostSlice);
    return out;
  }, py::arg("F"), py::arg("u"), py::arg("inverse") = false);

  m.def("boost_four_vectors", [](const CArray& vectors, const CArray& u, bool inverse) {
    if (vectors.ndim() != 2 || vectors.shape(1) != 4 || u.ndim() != 2 || u.shape(1) != 4 || u.shape(0) != vectors.shape(0))
      throw py::value_error("boost_four_vectors needs arrays of shape (m, 4) and (m, 4)");
    CArray out({vectors.shape(0), py::ssize_t{4}});
    const double* in = vectors.data();
    const double* velocity = u.data();
    double* target = out.mutable_data();
    const auto m = static_cast<std::size_t>(vectors.shape(0));
    dodo_python::in_interruptible_slices(m, [&](std::size_t begin, std::size_t count) {  // as boost_to_rest
      for (std::size_t i = begin; i < begin + count; ++i) {
        if (inverse) dodo::boost_from_rest(velocity + 4 * i, in + 4 * i, target + 4 * i);
        else dodo::boost_to_rest(velocity + 4 * i, in + 4 * i, target + 4 * i);
      }
    }, 1.0, kBoostSlice);
    return out;
  }, py::arg("vectors"), py::arg("u"), py::arg("inverse") = false);

  m.def("realizable_step", [](const CArray& F_base, const CArray& dF) {
    const std::size_t n = check_cells(F_base);
    if (check_cells(dF) != n) throw py::value_error("F_base and dF must have the same number of cells");
    CArray out(static_cast<py::ssize_t>(n));
    for (std::size_t c = 0; c < n; ++c)
      out.mutable_data()[c] = dodo::realizable_step(F_base.data() + c * dodo::kCellValues, dF.data() + c * dodo::kCellValues);
    return out;
  });

  m.def("inverse_langevin", [](const CArray& f, const std::string& method) {
    const dodo::ZMethod z_method = parse_z_method(method);
    CArray out(f.request().shape);
    for (py::ssize_t i = 0; i < f.size(); ++i) out.mutable_data()[i] = dodo::inverse_langevin(f.data()[i], z_method);
    return out;
  }, py::arg("flux_factor"), py::arg("z_method") = "exact");

  m.def("lebedev_rule", [](int order) {
    dodo::LebedevRule rule;
    try {
      rule = dodo::lebedev_rule(order);
    } catch (const std::invalid_argument& error) {
      throw py::value_error(error.what());
    }
    const auto q = static_cast<py::ssize_t>(rule.size());
    CArray points({q, py::ssize_t{3}});
    CArray weights(q);
    for (py::ssize_t i = 0; i < q; ++i) {
      points.mutable_data()[3 * i] = rule.x[i];
      points.mutable_data()[3 * i + 1] = rule.y[i];
      points.mutable_data()[3 * i + 2] = rule.z[i];
      weights.mutable_data()[i] = rule.weight[i];
    }
    return py::make_tuple(points, weights);
  });
  m.def("available_lebedev_orders", &dodo::available_lebedev_orders);
  m.def("box3d_instruction_set", [] { return std::string(dodo::box3d_instruction_set()); },
        "The code path of Box3D's kernels on this CPU: x86-64-v4 (AVX-512), x86-64-v3 (AVX2) or baseline.");
  m.def(
      "_set_interrupt_slice_cells",
      [](std::size_t cells) {
        if (cells < 1) throw py::value_error("the slice must hold at least one cell");
        return dodo_python::interrupt_slice_cells().exchange(cells);
      },
      "Cells per slice of a long call (between slices Ctrl-C is seen); returns the previous value. For tests.");

  // The per-cell status bits, from the single C++ list, for dodo.CellStatus.
  py::list statuses;
#define DODO_X(name, bit, rejects, text) statuses.append(py::make_tuple(#name, bit, rejects, text));
  DODO_CELL_STATUS_LIST(DODO_X)
#undef DODO_X
  m.attr("cell_status_bits") = statuses;
  m.attr("growth_rate_per_ntot") = dodo::kGrowthRatePerNtot;
  m.attr("velocity_norm_tolerance") = dodo::kVelocityNormTolerance;
  m.attr("velocity_norm_tolerance_cap") = dodo::kVelocityNormToleranceCap;
  m.attr("max_threads") = dodo::kMaxThreads;

  register_qke(m);
  dodo_python::register_signal_senders(m);
#ifdef DODO_WITH_RUNTIME
  register_runtime(m);
#endif
}
