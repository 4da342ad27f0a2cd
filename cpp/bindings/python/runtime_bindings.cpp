// pybind11 glue for the closure runtime: dodo._core.Closure. The public API is dodo.Closure
// (python/dodo/_closure.py); this layer only moves arrays and releases the GIL while computing.
#include <cerrno>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>

#include "dodo/dodo.h"
#include "gil.hpp"
#include "out_arrays.hpp"
#include "runtime/closure.hpp"
#include "runtime/errors.hpp"
#include "runtime/model_metadata.hpp"
#include "runtime/native_network.hpp"
#include "runtime/onnx_package.hpp"

namespace py = pybind11;
using dodo::runtime::Closure;
using dodo::runtime::ClosureOptions;

namespace {

// Input arrays: C-contiguous float64, converted when they are not, and aligned: numpy hands a
// misaligned array (a buffer at an odd offset) over as it is unless asked, and reading doubles
// through a misaligned pointer is undefined behaviour (outside probe, round eighteen); such an
// array is copied (an aligned one is passed as before, no copy).
using CellInput = py::array_t<double, py::array::c_style | py::array::forcecast | py::detail::npy_api::NPY_ARRAY_ALIGNED_>;

// Status codes become the Python exception a user expects, with the status name in the text.
void translate_runtime_error(std::exception_ptr pointer) {
  try {
    if (pointer) std::rethrow_exception(pointer);
  } catch (const dodo::runtime::Error& error) {
    const std::string text = std::string(dodo_status_name(error.status())) + ": " + error.what();
    PyObject* type = PyExc_RuntimeError;
    switch (error.status()) {
      case DODO_ERROR_INVALID_ARGUMENT: type = PyExc_ValueError; break;
      case DODO_ERROR_FILE: type = PyExc_FileNotFoundError; break;
      case DODO_ERROR_OUT_OF_MEMORY: type = PyExc_MemoryError; break;
      default: break;
    }
    // Never a UnicodeDecodeError instead of the real error (messages quote model-file bytes).
    PyObject* message = PyUnicode_DecodeUTF8(text.data(), static_cast<Py_ssize_t>(text.size()), "backslashreplace");
    if (!message) return;  // the decoding error is set
    const int system_error = error.system_error();
    if (error.status() == DODO_ERROR_FILE && (system_error == EACCES || system_error == EPERM)) {
      // A model the user may not read: PermissionError with its errno, as open() raises it (it was
      // FileNotFoundError "... Permission denied"; deployment probe, C round 31).
      PyObject* arguments = Py_BuildValue("(iO)", system_error, message);
      Py_DECREF(message);
      if (!arguments) return;
      PyErr_SetObject(PyExc_PermissionError, arguments);
      Py_DECREF(arguments);
      return;
    }
    PyErr_SetObject(type, message);
    Py_DECREF(message);
  }
}

py::dict counters_dict(const Closure& closure) {
  const dodo::runtime::ClosureCounters c = closure.counters();
  py::dict out;
  out["cells"] = c.cells;
  out["rejected"] = c.rejected;
  out["no_crossing"] = c.no_crossing;
  out["box3d_limited"] = c.box3d_limited;
  out["network_nonfinite"] = c.network_nonfinite;
  out["correction_limited"] = c.correction_limited;
  return out;
}

// The checked inputs of an apply call.
struct ApplyInput {
  std::size_t n = 0;
  dodo::ConstVelocityArray velocity;
};

ApplyInput check_apply_input(const CellInput& F_init, const std::optional<CellInput>& u) {
  if (F_init.ndim() != 3 || F_init.shape(1) != dodo::kSpecies || F_init.shape(2) != dodo::kComponents)
    throw py::value_error("F_init must have shape (n, 6, 4)");
  ApplyInput call;
  call.n = static_cast<std::size_t>(F_init.shape(0));
  if (u) {
    if (u->ndim() != 2 || static_cast<std::size_t>(u->shape(0)) != call.n || u->shape(1) != 4)
      throw py::value_error("u must have shape (n, 4) matching F_init");
    call.velocity.data = u->data();
  }
  return call;
}

// closure.apply over packed arrays in interruptible slices (gil.hpp): each slice's pointers are
// the cells' own, every diagnostic offset with them.
void apply_in_slices(const Closure& closure, std::size_t n, const double* F_init, dodo::ConstVelocityArray velocity,
                     double* F_pred, std::uint32_t* status, const dodo::runtime::CellDiagnostics& diagnostics) {
  const auto at = [](double* data, std::size_t begin) { return data ? data + begin : nullptr; };
  dodo_python::in_interruptible_slices(n, [&](std::size_t begin, std::size_t count) {
    dodo::ConstVelocityArray u = velocity;
    if (u.data) u.data += static_cast<std::ptrdiff_t>(begin) * u.cell_stride;
    dodo::runtime::CellDiagnostics slice;
    slice.growth_over_ntot = at(diagnostics.growth_over_ntot, begin);
    slice.growth_rate = at(diagnostics.growth_rate, begin);
    slice.growth_over_ntot_proxy = at(diagnostics.growth_over_ntot_proxy, begin);
    slice.growth_rate_proxy = at(diagnostics.growth_rate_proxy, begin);
    slice.uncertainty = at(diagnostics.uncertainty, begin);
    closure.apply(count, dodo::ConstCellArray{F_init + begin * dodo::kCellValues}, u,
                  dodo::CellArray{F_pred + begin * dodo::kCellValues}, status ? status + begin : nullptr, slice);
  }, dodo_python::lebedev_cost(closure.box3d_settings().lebedev_order),
     // four chunks per worker at least: a slice of fewer chunks than workers left workers idle
     dodo_python::busy_cells(closure.threads(), 4 * static_cast<std::size_t>(closure.chunk_size())));
}

// The closure and every per-cell diagnostic (CellDiagnostics) of dodo.Closure.apply, written
// into the caller's arrays (fresh ones from dodo.ClosureResult.empty, or a previous call's):
// nothing is allocated here, as a simulation's time loop needs.
void apply_into(const Closure& closure, const CellInput& F_init, const std::optional<CellInput>& u,
                const py::array& F_pred, const py::array& status, const py::array& growth_over_ntot,
                const py::array& growth_rate, const py::array& growth_rate_proxy, const py::array& uncertainty) {
  const ApplyInput call = check_apply_input(F_init, u);
  const std::size_t n = call.n;
  dodo::CellArray output{dodo_python::output_data<double>(F_pred, "out.F_pred", n * dodo::kCellValues)};
  std::uint32_t* status_data = dodo_python::output_data<std::uint32_t>(status, "out.status", n);
  dodo::runtime::CellDiagnostics diagnostics;
  diagnostics.growth_over_ntot = dodo_python::output_data<double>(growth_over_ntot, "out.growth_over_ntot", n);
  diagnostics.growth_rate = dodo_python::output_data<double>(growth_rate, "out.growth_rate", n);
  diagnostics.growth_rate_proxy = dodo_python::output_data<double>(growth_rate_proxy, "out.growth_rate_proxy", n);
  diagnostics.uncertainty = dodo_python::output_data<double>(uncertainty, "out.uncertainty", n);
  using dodo_python::memory_range;
  dodo_python::check_disjoint(
      {memory_range("F_init", F_init), u ? memory_range("u", *u) : dodo_python::MemoryRange{"u"}},
      {memory_range("out.F_pred", F_pred), memory_range("out.status", status),
       memory_range("out.growth_over_ntot", growth_over_ntot), memory_range("out.growth_rate", growth_rate),
       memory_range("out.growth_rate_proxy", growth_rate_proxy), memory_range("out.uncertainty", uncertainty)});
  apply_in_slices(closure, n, F_init.data(), call.velocity, output.data, status_data, diagnostics);
}

py::tuple apply(const Closure& closure, const CellInput& F_init, const std::optional<CellInput>& u) {
  const ApplyInput call = check_apply_input(F_init, u);
  const std::size_t n = call.n;
  const auto cells = static_cast<py::ssize_t>(n);
  const dodo::ConstVelocityArray velocity = call.velocity;
  py::array_t<double> F_pred({cells, py::ssize_t{dodo::kSpecies}, py::ssize_t{dodo::kComponents}});
  py::array_t<std::uint32_t> status(cells);
  py::array_t<double> proxy(cells);
  dodo::runtime::CellDiagnostics diagnostics;
  diagnostics.growth_over_ntot_proxy = proxy.mutable_data();
  apply_in_slices(closure, n, F_init.data(), velocity, F_pred.mutable_data(), status.mutable_data(), diagnostics);
  return py::make_tuple(F_pred, status, proxy);
}

}  // namespace

void register_runtime(py::module_& m) {
  py::register_exception_translator(&translate_runtime_error);

  py::class_<Closure>(m, "Closure", "The C++ closure runtime; use dodo.Closure instead.")
      .def(py::init([](const py::object& model, int threads, int chunk_size, int lebedev_order,
                       const std::string& z_method, double max_flux_factor, const std::string& onnxruntime_library,
                       const std::string& device, bool run_self_test, const std::string& evaluator) {
             ClosureOptions options;
             options.threads = threads;
             options.chunk_size = chunk_size;
             options.box3d.lebedev_order = lebedev_order;
             options.box3d.z_method = z_method;
             options.box3d.max_flux_factor = max_flux_factor;
             options.onnxruntime_library = onnxruntime_library;
             options.device = device;
             options.run_self_test = run_self_test;
             options.evaluator = evaluator;
             // model: None (Box3D only, as DODO_BOX3D_ONLY), a path (str), or the package's bytes
             // (copied under the GIL).
             // A bytearray is bytes too: pybind11's string caster took it as a path, "model file
             // \"\x08\x08\x12...\" does not exist" for a whole package; an int or a list was a
             // RuntimeError "Unable to cast" (outside probe, C round twenty-four).
             const bool in_memory = py::isinstance<py::bytes>(model) || py::isinstance<py::bytearray>(model);
             if (!model.is_none() && !in_memory && !py::isinstance<py::str>(model))
               throw py::type_error("model must be None, a path (str) or the package's bytes; got " +
                                    py::str(py::type::of(model).attr("__name__")).cast<std::string>());
             const std::string text = model.is_none() ? std::string(DODO_BOX3D_ONLY) : model.cast<std::string>();
             std::unique_ptr<Closure> closure;
             // Loading and warm-up can take a while.
             dodo_python::without_gil([&] {
               if (in_memory)
                 closure = std::make_unique<Closure>(dodo::runtime::ModelInMemory{text}, options);
               else
                 closure = std::make_unique<Closure>(text, options);
             });
             return closure;
           }),
           py::arg("model"), py::arg("threads") = 0, py::arg("chunk_size") = 1024, py::arg("lebedev_order") = 0,
           py::arg("z_method") = "", py::arg("max_flux_factor") = 0.0, py::arg("onnxruntime_library") = "",
           py::arg("device") = "cpu", py::arg("run_self_test") = false, py::arg("evaluator") = "auto")
      .def("apply", &apply, py::arg("F_init"), py::arg("u") = py::none(),
           "(n,6,4) float64 [, (n,4)] -> (F_pred (n,6,4), status (n,) uint32, growth_over_ntot (n,))")
      .def("apply_into", &apply_into, py::arg("F_init"), py::arg("u"), py::arg("F_pred"), py::arg("status"),
           py::arg("growth_over_ntot"), py::arg("growth_rate"), py::arg("growth_rate_proxy"),
           py::arg("uncertainty"),
           "(n,6,4) float64 [, (n,4)] into F_pred (n,6,4), status (n,) uint32 and growth_over_ntot, "
           "growth_rate, growth_rate_proxy, uncertainty (n,) float64: C-contiguous, writeable, not "
           "overlapping the inputs or each other")
      .def("self_test", [](const Closure& closure) {
             double worst = 0.0;
             dodo_python::without_gil([&] { worst = closure.self_test(); });
             return worst;
           })
      .def("counters", &counters_dict)
      .def("reset_counters", &Closure::reset_counters)
      .def_property_readonly("has_model", &Closure::has_model)
      .def_property_readonly("optional_outputs", [](const Closure& c) {
        py::list names;  // the optional graph outputs in use (docs/model_package.md, "dodo.outputs")
        if (c.optional_outputs().uncertainty) names.append("uncertainty");
        if (c.optional_outputs().log_growth_ratio) names.append("log_growth_ratio");
        return names;
      })
      .def_property_readonly("head", [](const Closure& c) -> py::object {
        return c.has_model() ? py::object(py::str(dodo::runtime::head_name(c.head()))) : py::object(py::none());
      })
      .def_property_readonly("metadata", [](const Closure& c) { return c.metadata(); })
      .def_property_readonly("box3d_settings", [](const Closure& c) {
        const dodo::Box3DSettings& s = c.box3d_settings();
        py::dict out;
        out["scheme"] = "pairwise";
        out["form"] = "delta";
        out["lebedev_order"] = s.lebedev_order;
        out["z_method"] = dodo::runtime::z_method_name(s.z_method);
        out["max_flux_factor"] = s.max_flux_factor;
        return out;
      })
      .def_property_readonly("threads", &Closure::threads)
      .def_property_readonly("chunk_size", &Closure::chunk_size)
      .def_property_readonly("onnxruntime_library", &Closure::onnxruntime_path)
      .def_property_readonly("onnxruntime_version", &Closure::onnxruntime_version)
      .def_property_readonly("evaluator", &Closure::evaluator);

  // The model package's content digest (docs/model_package.md), for the exporters and tests.
  m.def("model_content_sha256", [](const py::bytes& model) {
    const std::string bytes = model;
    return dodo::runtime::content_sha256(dodo::runtime::read_package(bytes));
  }, py::arg("model"), "SHA-256 (hex) of ONNX model bytes without their metadata_props.");
  m.def("model_metadata_sha256", [](const py::bytes& model) {
    const std::string bytes = model;
    return dodo::runtime::metadata_sha256(dodo::runtime::read_package(bytes));
  }, py::arg("model"), "SHA-256 (hex) of the metadata entries as \"dodo.metadata_sha256\" defines it.");
  m.def("model_metadata", [](const py::bytes& model) {
    const std::string bytes = model;
    return dodo::runtime::read_package(bytes).metadata;
  }, py::arg("model"), "metadata_props of ONNX model bytes, as the runtime reads them.");
  // The runtime's own evaluator of a package's network alone (no graph check, no closure): for
  // benchmarks/bench_speed.py's network row and the parity tests.
  py::class_<dodo::runtime::NativeNetwork>(m, "NativeNetwork",
                                           "The runtime's evaluator of a package's \"dodo.native_network\" alone.")
      .def(py::init([](const py::bytes& model, const std::string& instruction_set) {
             const std::string bytes = model;
             const auto metadata = dodo::runtime::read_package(bytes).metadata;
             const auto description = metadata.find(dodo::runtime::kNativeNetworkKey);
             const auto features = metadata.find("dodo.features");
             const auto outputs = metadata.find("dodo.output_size");
             if (description == metadata.end() || features == metadata.end() || outputs == metadata.end())
               throw dodo::runtime::Error(DODO_ERROR_MODEL_METADATA,
                                          "the package has no \"dodo.native_network\" (or no dodo.features / "
                                          "dodo.output_size)");
             // Read as strictly as the closure reads them (model_metadata.cpp): std::stoi took "3.5"
             // as 3 and answered "abc" with a bare ValueError("stoi") and 99999999999 with
             // IndexError("stoi"); an unknown feature set became "cannot take 0 inputs" (outside
             // probe, C round twenty-four).
             const int input_size = dodo::runtime::known_feature_size(features->second);
             int output_size = 0;
             const std::string& declared = outputs->second;
             const bool digits = !declared.empty() && declared.size() <= 9 && declared[0] != '0' &&
                                 declared.find_first_not_of("0123456789") == std::string::npos;
             if (digits) output_size = std::stoi(declared);
             if (!digits || std::to_string(output_size) != declared)
               throw dodo::runtime::Error(DODO_ERROR_MODEL_METADATA,
                                          "model \"dodo.output_size\" is " + dodo::runtime::quoted_value(declared) +
                                              "; a whole number of outputs (1 or more, decimal digits) is wanted");
             auto network = std::make_unique<dodo::runtime::NativeNetwork>(
                 description->second, dodo::runtime::read_float_initializers(bytes), input_size, output_size);
             // "auto": the widest kernel this CPU runs (what the closure uses); a named one for
             // the tests that compare the kernels.
             if (instruction_set != "auto" && !network->use_instruction_set(instruction_set))
               throw py::value_error("this CPU cannot run the \"" + instruction_set +
                                     "\" kernel (\"avx512\", \"avx2\", \"baseline\" or \"auto\")");
             return network;
           }),
           py::arg("model"), py::arg("instruction_set") = "auto")
      .def_property_readonly("instruction_set", &dodo::runtime::NativeNetwork::instruction_set)
      .def("evaluate",
           [](const dodo::runtime::NativeNetwork& network,
              py::array_t<float, py::array::c_style | py::array::forcecast | py::detail::npy_api::NPY_ARRAY_ALIGNED_> features) {
             if (features.ndim() != 2 || features.shape(1) != network.input_size())
               throw py::value_error("features must have shape (n, " + std::to_string(network.input_size()) + ")");
             const auto n = static_cast<std::size_t>(features.shape(0));
             py::array_t<float> head({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(network.output_size())});
             py::array_t<float> uncertainty(static_cast<py::ssize_t>(n)), growth(static_cast<py::ssize_t>(n));
             const float* in = features.data();
             float *h = head.mutable_data(), *s = uncertainty.mutable_data(), *g = growth.mutable_data();
             dodo_python::without_gil([&] { network.evaluate(in, n, h, s, g); });
             return py::make_tuple(head, uncertainty, growth);
           },
           py::arg("features"), "float32 (n, F) -> (head_output (n, K), uncertainty (n,), log_growth_ratio (n,))");
  m.def("with_content_digest", [](const py::bytes& model) {
    const std::string bytes = model;
    return py::bytes(dodo::runtime::with_content_digest(bytes));
  }, py::arg("model"), "The model bytes signed again: fresh \"dodo.content_sha256\" and \"dodo.metadata_sha256\".");
}
