// Output arrays a caller provides (dodo.Closure.apply(..., out=), dodo.box3d(..., out=)): written
// in place, so they are never converted or copied, and must not share memory with the inputs or
// with each other (a cell would read values another cell already overwrote). dodo checks shapes
// and dtypes with named errors before it gets here; these checks keep _core itself safe.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstddef>
#include <string>
#include <initializer_list>

namespace dodo_python {

// The bytes an array occupies (C-contiguous arrays: exactly these).
struct MemoryRange {
  const char* name;
  const char* begin = nullptr;
  const char* end = nullptr;
};

inline MemoryRange memory_range(const char* name, const pybind11::array& array) {
  const char* begin = static_cast<const char*>(array.data());
  return {name, begin, begin + array.nbytes()};
}

// The data of `array` for writing: dtype exactly T, C-contiguous, writeable, `values` elements.
template <typename T>
T* output_data(const pybind11::array& array, const char* name, std::size_t values) {
  if (!pybind11::isinstance<pybind11::array_t<T>>(array))
    throw pybind11::type_error(std::string(name) + ": wrong dtype for an output array: it is " +
                               pybind11::str(array.dtype()).cast<std::string>() + ", this call writes " +
                               pybind11::str(pybind11::dtype::of<T>()).cast<std::string>());
  if (!(array.flags() & pybind11::array::c_style))
    throw pybind11::value_error(std::string(name) + ": an output array must be C-contiguous");
  if (!array.writeable()) throw pybind11::value_error(std::string(name) + ": an output array must be writeable");
  // Written in place, so never copied: a misaligned one (a buffer at an odd offset) is refused, as
  // the C API refuses it (writing through a misaligned T* is undefined behaviour).
  if (!(array.flags() & pybind11::detail::npy_api::NPY_ARRAY_ALIGNED_))
    throw pybind11::value_error(std::string(name) + ": an output array must be aligned for its dtype (one viewed "
                                "at an odd offset of a byte buffer is not): make out with ClosureResult.empty or "
                                "Box3DResult.empty, or pass a previous call's result");
  if (static_cast<std::size_t>(array.size()) != values)
    throw pybind11::value_error(std::string(name) + ": output array of " + std::to_string(array.size()) +
                                " values; this call writes " + std::to_string(values));
  return static_cast<T*>(const_cast<void*>(array.data()));
}

// Refuses outputs that overlap an input or another output (empty arrays overlap nothing).
inline void check_disjoint(std::initializer_list<MemoryRange> inputs, std::initializer_list<MemoryRange> outputs) {
  auto overlap = [](const MemoryRange& a, const MemoryRange& b) {
    return a.begin < a.end && b.begin < b.end && a.begin < b.end && b.begin < a.end;
  };
  for (auto output = outputs.begin(); output != outputs.end(); ++output) {
    for (const MemoryRange& input : inputs)
      if (overlap(*output, input))
        throw pybind11::value_error(std::string(output->name) + " shares memory with the input " + input.name +
                                    ": give output arrays of their own");
    for (auto other = outputs.begin(); other != output; ++other)
      if (overlap(*output, *other))
        throw pybind11::value_error(std::string(output->name) + " shares memory with " + other->name +
                                    ": every output needs an array of its own");
  }
}

}  // namespace dodo_python
