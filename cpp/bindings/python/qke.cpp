// dodo._core.QkeKernel: the compiled time stepping of the fast-flavour QKE solver
// (cpp/src/qke/flavour_box.hpp), driven by python/dodo/qke/compiled.py. Arrays arrive checked
// there; shapes are checked again here (ValueError), the GIL is released while stepping.
#include <pybind11/complex.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <complex>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

#include "gil.hpp"
#include "qke/flavour_box.hpp"

namespace py = pybind11;

namespace {

// Input arrays: C-contiguous float64, converted when they are not, and aligned: numpy hands a
// misaligned array (a buffer at an odd offset) over as it is unless asked, and reading doubles
// through a misaligned pointer is undefined behaviour (outside probe, round eighteen); such an
// array is copied (an aligned one is passed as before, no copy).
using RealArray = py::array_t<double, py::array::c_style | py::array::forcecast | py::detail::npy_api::NPY_ARRAY_ALIGNED_>;
using ComplexArray = py::array_t<std::complex<double>, py::array::c_style | py::array::forcecast | py::detail::npy_api::NPY_ARRAY_ALIGNED_>;
using dodo::qke::FlavourBoxKernel;

std::vector<double> to_vector(const RealArray& array) { return {array.data(), array.data() + array.size()}; }

void check_shape(const py::array& array, const std::vector<py::ssize_t>& shape, const char* name) {
  bool same = array.ndim() == static_cast<py::ssize_t>(shape.size());
  for (std::size_t i = 0; same && i < shape.size(); ++i) same = array.shape(static_cast<py::ssize_t>(i)) == shape[i];
  if (!same) throw py::value_error(std::string(name) + " has the wrong shape for this kernel");
}

std::vector<py::ssize_t> field_shape(const FlavourBoxKernel& k, std::size_t last) {
  return {6, static_cast<py::ssize_t>(k.nsim()), 2, static_cast<py::ssize_t>(k.ncell()), static_cast<py::ssize_t>(last)};
}

}  // namespace

void register_qke(py::module_& m) {
  py::class_<FlavourBoxKernel>(m, "QkeKernel",
                               "Compiled Lawson-RK4 stepping of a batch of periodic 1D fast-flavour boxes "
                               "(use dodo.qke with backend='cpp').")
      .def(py::init([](const RealArray& directions, std::size_t ncell, const RealArray& cell_size_cm,
                       const RealArray& state_filter, const py::object& moment_filter, double self_interaction,
                       double speed_of_light, bool coupling) {
             if (directions.ndim() != 2 || directions.shape(1) != 3)
               throw py::value_error("directions must have shape (ndir, 3)");
             dodo::qke::FlavourBoxSettings settings;
             settings.ncell = ncell;
             settings.directions = to_vector(directions);
             settings.state_filter = to_vector(state_filter);
             settings.self_interaction = self_interaction;
             settings.speed_of_light = speed_of_light;
             settings.coupling = coupling;
             std::vector<double> filter;
             if (!moment_filter.is_none()) {
               // ensure() gives a null handle for what numpy cannot make a float64 array of (a
               // str, a dict): reading its data was a segmentation fault (outside probe, C round
               // twenty-three).
               const RealArray array = RealArray::ensure(moment_filter);
               if (!array) throw py::type_error("moment_filter must be None or an array of floats");
               filter = to_vector(array);
             }
             // std::invalid_argument (bad sizes, ncell not a power of two) becomes ValueError.
             return new FlavourBoxKernel(std::move(settings), to_vector(cell_size_cm), std::move(filter));
           }),
           py::arg("directions"), py::arg("ncell"), py::arg("cell_size_cm"), py::arg("state_filter"),
           py::arg("moment_filter"), py::arg("self_interaction"), py::arg("speed_of_light"), py::arg("coupling") = true)
      .def_property_readonly("nsim", &FlavourBoxKernel::nsim)
      .def_property_readonly("ncell", &FlavourBoxKernel::ncell)
      .def_property_readonly("ndir", &FlavourBoxKernel::ndir)
      .def("set_state", [](FlavourBoxKernel& k, const ComplexArray& packed) {
        check_shape(packed, field_shape(k, k.ndir()), "state");
        dodo_python::without_gil([&] { k.set_state(packed.data()); });
      }, py::arg("state"), "Set the packed state [6, nsim, 2, ncell, ndir] (diagonal entries: real part).")
      .def("get_state", [](const FlavourBoxKernel& k) {
        ComplexArray out(field_shape(k, k.ndir()));
        std::complex<double>* data = out.mutable_data();
        dodo_python::without_gil([&] { k.get_state(data); });
        return out;
      }, "The packed state [6, nsim, 2, ncell, ndir] (a copy).")
      .def("moments", [](const FlavourBoxKernel& k) {
        ComplexArray out(field_shape(k, 4));
        std::complex<double>* data = out.mutable_data();
        dodo_python::without_gil([&] { k.moments(data); });
        return out;
      }, "Packed four-moments [6, nsim, 2, ncell, 4] of the state.")
      .def("step", [](FlavourBoxKernel& k, const RealArray& dt, int threads) {
        check_shape(dt, {static_cast<py::ssize_t>(k.nsim())}, "dt");
        ComplexArray out(field_shape(k, 4));
        std::complex<double>* data = out.mutable_data();
        const double* steps = dt.data();
        // Without the GIL through gil.hpp: pybind11's gil_scoped_release ended the process with
        // std::terminate when the interpreter exited while a daemon thread stepped.
        dodo_python::without_gil([&] { k.step(steps, data, threads); });  // std::invalid_argument becomes ValueError
        return out;
      }, py::arg("dt"), py::arg("threads") = 1,
         "One Lawson-RK4 step of dt [nsim] s (simulations on up to `threads` threads); returns the "
         "four-moments at its start.");
}
