// Sum of a vector's lanes (GCC vector types, stored to an array of `Lanes` values) by halves:
// lanes l and l + Lanes/2 first, as vector adds down to one lane, not a scalar add per lane.
// Used by the kernels that keep partial sums in vector registers (Box3D's crossing shape, the
// native network's dot products).
#pragma once

#include <cstddef>
#include <cstring>

namespace dodo {

template <typename T, std::size_t Lanes>
inline __attribute__((always_inline)) T lane_sum(const T* lanes) {
  if constexpr (Lanes == 1) {
    return lanes[0];
  } else {
    typedef T Half __attribute__((vector_size(Lanes / 2 * sizeof(T))));
    Half low, high;
    std::memcpy(&low, lanes, sizeof low);
    std::memcpy(&high, lanes + Lanes / 2, sizeof high);
    const Half sum = low + high;
    T folded[Lanes / 2];
    std::memcpy(folded, &sum, sizeof folded);
    return lane_sum<T, Lanes / 2>(folded);
  }
}

}  // namespace dodo
