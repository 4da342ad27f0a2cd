#include "native_network.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <type_traits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "../lane_sum.hpp"
#include "errors.hpp"
#include "json.hpp"
#include "residual.hpp"

namespace dodo::runtime {
namespace {

// Outputs are padded to whole vectors of the widest kernel (16 floats, AVX-512).
constexpr int kPad = 16;

// Vectors of `Bytes` bytes of T: 64 (AVX-512), 32 (AVX2) or 16 (SSE2).
template <typename T, int Bytes>
struct VectorOf {
  typedef T type __attribute__((vector_size(Bytes)));
  static constexpr int kLanes = Bytes / static_cast<int>(sizeof(T));
};

[[noreturn]] void unusable(const std::string& why) {
  throw Error(DODO_ERROR_MODEL_METADATA, std::string("metadata \"") + kNativeNetworkKey + "\" " + why);
}

const FloatTensor& tensor_named(const std::map<std::string, FloatTensor>& initializers, const JsonValue& name) {
  if (!name.is_string()) unusable("names a tensor by " + name.dump_excerpt() + ", not by a string");
  const auto found = initializers.find(name.string());
  if (found == initializers.end()) unusable("names " + quoted_value(name.string()) + ", which is not a float32 initializer of the graph");
  return found->second;
}

// The values the evaluation reads must be finite. A NaN or infinite weight, mean or precision
// makes every row's output NaN (or a gate 0), which the load-time probes reported as 'does not
// reproduce the graph's head_output (probe row 0: -nan instead of -nan)' or '(0 instead of nan)',
// naming neither the tensor nor the value (outside probe, C round 31).
void require_finite(const std::string& what, const std::vector<float>& values) {
  for (std::size_t i = 0; i < values.size(); ++i)
    if (!std::isfinite(values[i]))
      unusable(what + " holds " + (std::isnan(values[i]) ? "NaN" : values[i] > 0 ? "+infinity" : "-infinity") +
               " at element " + std::to_string(i) + " of " + std::to_string(values.size()) +
               ": the network's values must be finite (edited after export?)");
}

// A vector by initializer name, or given inline as a JSON list of numbers (the exporter folds
// some small constant vectors, such as an all-zero mean, out of the graph); `key` names it in messages.
std::vector<float> vector_named(const std::map<std::string, FloatTensor>& initializers, const JsonValue& name,
                                std::size_t size, const std::string& key) {
  if (name.is_array()) {
    if (name.array().size() != size) unusable("lists " + std::to_string(name.array().size()) + " values where " +
                                              std::to_string(size) + " are needed");
    std::vector<float> values;
    for (const JsonValue& value : name.array()) values.push_back(static_cast<float>(value.number()));
    require_finite("the list given for " + key, values);
    return values;
  }
  const FloatTensor& tensor = tensor_named(initializers, name);
  if (tensor.dims.size() != 1 || tensor.values.size() != size)
    unusable("tensor " + quoted_value(name.string()) + " must be a vector of " + std::to_string(size) + " values");
  require_finite("tensor " + quoted_value(name.string()) + " (" + key + ")", tensor.values);
  return tensor.values;
}

float scalar_of(const std::map<std::string, FloatTensor>& initializers, const JsonValue& value) {
  if (value.is_number()) return static_cast<float>(value.number());
  const FloatTensor& tensor = tensor_named(initializers, value);
  if (tensor.values.size() != 1) unusable("tensor " + quoted_value(value.string()) + " must be a scalar");
  return tensor.values[0];
}

// The fewest digits that read back as the same float (a float widened to double needs 17: r_scale
// 286.8057 read "286.80569458007812").
std::string number_text(float value) { return dodo::runtime::number_text(value, 0, false, true); }

// Values the description gives by number must be constants the graph holds itself (an
// initializer or a Constant node): the digests do not stop a package re-signed after an edit, and
// the load-time probes (near the training mean, at 1e-3 of the outputs' scale) let small edits of
// the gates' constants through (probe round sixteen: sigma_floor x0.5, r_scale x1.0005, tiny x1e30
// loaded and moved outputs by up to 4e-5 N_tot). A value given by a tensor's name is the graph's
// own, and is held to the key's own tensor below like a number (probe round seventeen).
void require_graph_constant(const std::map<std::string, FloatTensor>& constants, const JsonValue& root,
                            const char* key) {
  const JsonValue& given = root.at(key);
  std::vector<float> values;
  if (given.is_string()) values = tensor_named(constants, given).values;  // by name: held to the key's node too
  if (given.is_number()) values.push_back(static_cast<float>(given.number()));
  if (given.is_array())
    for (const JsonValue& value : given.array()) values.push_back(static_cast<float>(value.number()));
  // Cut between characters (a byte cut left a lone lead byte, shown as "\xc3"; probe round nineteen).
  const std::string shown = excerpt(given.dump(), false, 60);
  // Per node where the graph names one for the key: a tensor called `key` or `<prefix>.key` (the
  // exporter's "ensemble.r_scale", "ensemble.d2_max") is the constant the number belongs to, so
  // the number must be that one's, not merely some constant's (probe round seventeen: r_scale
  // edited onto d2_max's exact value passed membership, refused only by the load-time probes; a
  // tensor named in r_scale's place holding it x 1.0005 loaded). The other numbers have
  // exporter-made names ("onnx::Mul_203", "/Constant_1_output_0"): no node is theirs by name, and
  // finding theirs would mean reading the graph's operators, so for them membership stays the test.
  const std::string suffix = std::string(".") + key;
  const FloatTensor* named = nullptr;
  std::string named_as;
  for (const auto& entry : constants) {
    const std::string& name = entry.first;
    const bool matches = name == key || (name.size() > suffix.size() &&
                                         name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0);
    if (!matches) continue;
    if (named) {  // two candidates: no one node is the key's
      named = nullptr;
      named_as.clear();
      break;
    }
    named = &entry.second;
    named_as = name;
  }
  if (named) {
    if (named->values == values) return;
    unusable(std::string("gives ") + key + " " + shown + ", but the graph's " + quoted_value(named_as) + " holds " +
             (named->values.size() == 1 ? number_text(named->values[0])
                                        : std::to_string(named->values.size()) + " other values") +
             " (edited after export?)");
  }
  // A constant that no node reads is no constant the graph computes with (probe round eighteen:
  // sigma_floor x 0.5 loaded beside an unused initializer "decoy" holding that value).
  for (const auto& entry : constants)
    if (entry.second.read_by_a_node && entry.second.values == values) return;
  unusable(std::string("gives ") + key + " " + shown + ", which is not a constant of the graph (edited after export?)");
}

int padded(int size) { return (size + kPad - 1) / kPad * kPad; }

// e^x in float32 on a vector of floats (GCC's vector extensions; std::exp is a
// library call that no loop vectorises): x clamped to [-80, 88] (no denormal results), 2^k e^r
// with |r| <= ln2/2 and e^r by its Taylor series to degree 7 (truncation 5e-9 relative, below
// float rounding). NaN stays NaN. V is a vector of floats, U the unsigned integers of
// the same shape. (By reference: GCC warns that vectors by value change the ABI between targets.)
// kAboveOnly: x clamped from below only and NaN not kept, for a caller that discards the results
// of x > 80 and of NaN (SiLU: four vector instructions fewer of its thirty); those lanes then
// hold garbage (no undefined behaviour: the integer part is unsigned).
template <typename V, typename U, bool kAboveOnly = false>
inline __attribute__((always_inline)) void exp_of(const V& x, V& result) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2High = 0.693145751953125f;         // ln 2 with trailing zero bits
  constexpr float kLn2Low = 1.42860682030941723212e-6f;  // ln 2 - kLn2High
  constexpr float kShift = 12582912.0f;                   // 1.5 * 2^23: x + shift rounds x
  const V zero = V{};
  const V low = zero - 80.0f;
  V value = x < low ? low : x;
  if constexpr (!kAboveOnly) {
    const V high = zero + 88.0f;
    value = value > high ? high : value;
    value = x == x ? value : x;
  }
  const V shifted = value * kLog2e + kShift;
  const V k = shifted - kShift;
  const V r = (value - k * kLn2High) - k * kLn2Low;
  V p = zero + 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // The exponent's bits in unsigned arithmetic: for a NaN argument they are garbage, and a left
  // shift of a negative int is undefined (found by fuzz_loader on a re-signed package with a NaN weight).
  U shifted_bits, shift_bits;
  const V shift = zero + kShift;
  std::memcpy(&shifted_bits, &shifted, sizeof shifted_bits);
  std::memcpy(&shift_bits, &shift, sizeof shift_bits);
  const U exponent = (shifted_bits - shift_bits + 127u) << 23;
  V scale;
  std::memcpy(&scale, &exponent, sizeof scale);
  result = p * scale;
}

// 1/d for d >= 1 (SiLU's 1 + e^-z, up to e^88) by Newton's iteration y <- y (2 - d y) from the
// exponent-flipping guess (5% off): three steps reach 2 float ulps. A vector division costs the
// AVX-512 kernel more than these six multiply-adds (measured: 8% of its time). NaN stays NaN.
// (By reference, as exp_of.)
template <typename V, typename U>
inline __attribute__((always_inline)) void reciprocal(const V& d, V& y) {
  U bits;
  std::memcpy(&bits, &d, sizeof bits);
  const U guess_bits = 0x7EF311C7u - bits;
  std::memcpy(&y, &guess_bits, sizeof y);
  const V two = V{} + 2.0f;
  y = y * (two - d * y);
  y = y * (two - d * y);
  y = y * (two - d * y);
}

// Rows evaluated together, so that each weight vector loaded serves R rows (on AVX-512 the loads,
// not the multiply-adds, bound a one-row loop), and accumulator vectors per pass (R x NV of them
// in registers: AVX-512 has 32, AVX2 16). AVX2 takes one row a pass with all eight accumulators,
// so that each weight vector is used once and read by its multiply-add as a memory operand, and its
// input loop is unrolled by four (dense_block). Valgrind, the 52-64-64-3 student: 3,287
// instructions a row against 3,523 with two rows a pass (two rows a pass unrolled likewise: 3,787,
// accumulators spilled). Each output is the same products summed in the same order: the same bits.
template <int Bytes>
constexpr int kBlockRows = Bytes == 64 ? 4 : 1;
template <int Bytes>
constexpr int kMaxAccumulators = Bytes == 64 ? 16 : 8;

// out[r][o] = bias[o] + sum_k x[r][k] w_t[k][o] for R rows and one group of NV vectors of
// outputs; w_t's rows are `stride` values apart, x's rows xs apart, out's os apart.
template <typename T, int Bytes, int R, int NV>
inline __attribute__((always_inline)) void dense_block(const T* x, int xs, int inputs, const T* w_t, int stride,
                                                       const T* bias, T* out, int os) {
  typedef typename VectorOf<T, Bytes>::type Vector;
  constexpr int Lanes = VectorOf<T, Bytes>::kLanes;
  // Fully unrolled (GCC kept the AVX2 clone's accumulators on the stack otherwise).
  Vector acc[R][NV];
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) {
    std::memcpy(&acc[0][v], bias + v * Lanes, sizeof(Vector));
#pragma GCC unroll 16
    for (int r = 1; r < R; ++r) acc[r][v] = acc[0][v];
  }
  // One input's multiply-adds into every accumulator (the order over k is the sum's order).
  const auto add_input = [&](int k) __attribute__((always_inline)) {
    const T* row = w_t + static_cast<std::size_t>(k) * stride;
    Vector w[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) std::memcpy(&w[v], row + v * Lanes, sizeof(Vector));
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const T xk = x[r * xs + k];
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[r][v] += xk * w[v];
    }
  };
  if constexpr (R == 1) {
    // Four inputs a loop iteration: the loop's counter, compare and branch cost four instructions
    // beside an input's nine (a broadcast and eight multiply-adds). Not for the AVX-512 blocks of
    // four rows, left as they were measured (perf, README's Speed section).
#pragma GCC unroll 4
    for (int k = 0; k < inputs; ++k) add_input(k);
  } else {
    for (int k = 0; k < inputs; ++k) add_input(k);
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) std::memcpy(out + r * os + v * Lanes, &acc[r][v], sizeof(Vector));
}

// z sigmoid(z) = z / (1 + e^-z) on `count` values (a multiple of the lanes; padding stays 0), a
// vector at a time: a scalar loop calling a scalar exp was vectorised in the AVX-512 clone but left
// scalar in the AVX2 one (valgrind: 3,700 instructions a row for the 128 SiLUs).
// Below -80 the product is under 1e-33: 0, which keeps denormals (slow) out of the next layer.
template <int Bytes>
inline __attribute__((always_inline)) void silu_in_place(float* values, int count) {
  typedef typename VectorOf<float, Bytes>::type V;
  constexpr int Lanes = VectorOf<float, Bytes>::kLanes;
  for (int i = 0; i < count; i += Lanes) {
    V z;
    std::memcpy(&z, values + i, sizeof(V));
    const V zero = V{};
    const V minus_z = -z;
    V e;  // e^-z, garbage where z < -80 or NaN: those lanes are 0 below
    exp_of<V, typename VectorOf<std::uint32_t, Bytes>::type, true>(minus_z, e);
    V inverse;
    reciprocal<V, typename VectorOf<std::uint32_t, Bytes>::type>(zero + 1.0f + e, inverse);
    const V silu = z * inverse;
    const V result = z > zero - 80.0f ? silu : zero;
    std::memcpy(values + i, &result, sizeof(V));
  }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(DODO_NO_MULTIVERSION)
// silu_in_place for `rows` rows (os floats apart) with AVX-512's own instructions where the generic
// form spends most: vrndscaleps for k = round(x log2 e), vscalefps for 2^k e^r (0 and +inf beyond
// the float range, so no clamps and no exponent bits), vrcp14ps and one Newton step for
// 1 / (1 + e^-z) (14 bits to 28). 19 instructions a vector against the generic 31 (perf: SiLU was
// a quarter of the network's time). Same results to float rounding; z <= -80 and NaN give 0, as
// the generic form does. A function of its own, not inlined: code of the default target (the
// layer templates) may call AVX-512 code but not inline it.
// (GCC 12's intrinsics pass _mm512_undefined_ps() as the unused merge source, which
// -Wmaybe-uninitialized reports: a false positive; clang has no such warning.)
#if !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,bmi2"), noinline))
void silu_rows_avx512(float* values, int os, int rows, int count) {
  const __m512 minus_log2e = _mm512_set1_ps(-1.44269504088896341f);
  const __m512 ln2_high = _mm512_set1_ps(0.693145751953125f);  // exact products with k below 128
  const __m512 ln2_low = _mm512_set1_ps(1.42860682030941723212e-6f);
  const __m512 cap = _mm512_set1_ps(80.0f), floor = _mm512_set1_ps(-80.0f);
  const __m512 one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
  const float taylor[8] = {1.0f / 5040.0f, 1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f, 1.0f / 6.0f, 0.5f, 1.0f, 1.0f};
  for (int r = 0; r < rows; ++r) {
    float* row = values + static_cast<std::ptrdiff_t>(r) * os;
    for (int i = 0; i < count; i += 16) {
      const __m512 z = _mm512_loadu_ps(row + i);
      // e^x for x = -min(z, 80) = 2^k e^r, computed from y = min(z, 80) = -x without negating it:
      // k = round(y (-log2 e)), and r = -s with s = (y + k ln2_high) + k ln2_low, each step the
      // negation of x's (a negation is exact and rounding to nearest is symmetric: the same
      // bits), and the polynomial's p r + c as c - p s (fnmadd: the same single rounding).
      const __m512 y = _mm512_min_ps(z, cap);
      const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(y, minus_log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m512 s = _mm512_fmadd_ps(k, ln2_low, _mm512_fmadd_ps(k, ln2_high, y));  // -r, |r| <= ln2/2
      __m512 p = _mm512_set1_ps(taylor[0]);
      for (int t = 1; t < 8; ++t) p = _mm512_fnmadd_ps(p, s, _mm512_set1_ps(taylor[t]));
      const __m512 d = _mm512_add_ps(one, _mm512_scalef_ps(p, k));  // 1 + e^-z
      __m512 inverse = _mm512_rcp14_ps(d);
      inverse = _mm512_mul_ps(inverse, _mm512_fnmadd_ps(d, inverse, two));
      const __mmask16 kept = _mm512_cmp_ps_mask(z, floor, _CMP_GT_OQ);  // false for z <= -80 and NaN
      _mm512_storeu_ps(row + i, _mm512_maskz_mul_ps(kept, z, inverse));
    }
  }
}
#if !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

// A narrow layer (the last: 3 outputs) for R rows as dot products along the weight rows: a
// vector of outputs per input would be 13/16 padding (measured: 15% of the dense layers' time).
template <int Bytes, int R>
inline __attribute__((always_inline)) void narrow_dense(const float* x, int xs, int padded_inputs,
                                                        const float* weight_rows, int outputs, const float* bias,
                                                        float* out, int os) {
  typedef typename VectorOf<float, Bytes>::type Vector;
  constexpr int Lanes = VectorOf<float, Bytes>::kLanes;
  constexpr int kMax = NativeNetwork::kNarrowOutputs;
  Vector acc[R][kMax];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int o = 0; o < kMax; ++o) acc[r][o] = Vector{};
  for (int k = 0; k < padded_inputs; k += Lanes) {
    Vector xv[R];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) std::memcpy(&xv[r], x + r * xs + k, sizeof(Vector));
#pragma GCC unroll 4
    for (int o = 0; o < kMax; ++o) {
      if (o >= outputs) break;
      Vector w;
      std::memcpy(&w, weight_rows + static_cast<std::size_t>(o) * padded_inputs + k, sizeof w);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) acc[r][o] += xv[r] * w;
    }
  }
  for (int r = 0; r < R; ++r)
    for (int o = 0; o < outputs; ++o) {
      float lanes[Lanes];
      std::memcpy(lanes, &acc[r][o], sizeof lanes);
      out[r * os + o] = bias[o] + lane_sum<float, Lanes>(lanes);
    }
}

// One layer for kBlockRows rows: out (padded_outputs values a row) = bias + x W^T, then SiLU if asked.
template <typename T, int Bytes>
inline __attribute__((always_inline)) void dense(const T* x, int xs, int inputs, const T* w_t, int padded_outputs,
                                                 const T* bias, bool silu, T* out, int os) {
  constexpr int Lanes = VectorOf<T, Bytes>::kLanes;
  constexpr int R = kBlockRows<Bytes>;
  constexpr int kGroupVectors = kMaxAccumulators<Bytes> / R;  // 4, 4 or 8
  for (int first = 0; first < padded_outputs; first += kGroupVectors * Lanes) {
    const int vectors = std::min(kGroupVectors, (padded_outputs - first) / Lanes);
    const T* w = w_t + first;
    const T* b = bias + first;
    T* o = out + first;
    switch (vectors) {
      case 8: if constexpr (kGroupVectors >= 8) dense_block<T, Bytes, R, 8>(x, xs, inputs, w, padded_outputs, b, o, os); break;
      case 7: if constexpr (kGroupVectors >= 7) dense_block<T, Bytes, R, 7>(x, xs, inputs, w, padded_outputs, b, o, os); break;
      case 6: if constexpr (kGroupVectors >= 6) dense_block<T, Bytes, R, 6>(x, xs, inputs, w, padded_outputs, b, o, os); break;
      case 5: if constexpr (kGroupVectors >= 5) dense_block<T, Bytes, R, 5>(x, xs, inputs, w, padded_outputs, b, o, os); break;
      case 4: dense_block<T, Bytes, R, 4>(x, xs, inputs, w, padded_outputs, b, o, os); break;
      case 3: dense_block<T, Bytes, R, 3>(x, xs, inputs, w, padded_outputs, b, o, os); break;
      case 2: dense_block<T, Bytes, R, 2>(x, xs, inputs, w, padded_outputs, b, o, os); break;
      default: dense_block<T, Bytes, R, 1>(x, xs, inputs, w, padded_outputs, b, o, os); break;
    }
  }
  if constexpr (std::is_same_v<T, float>) {
    if (!silu) return;
#if defined(__x86_64__) && defined(__GNUC__) && !defined(DODO_NO_MULTIVERSION)
    if constexpr (Bytes == 64) {
      silu_rows_avx512(out, os, R, padded_outputs);
      return;
    }
#endif
    for (int r = 0; r < R; ++r) silu_in_place<Bytes>(out + r * os, padded_outputs);
  }
}

using KernelFunction = void (*)(const NativeNetwork&, const float*, std::size_t, float*, float*, float*);
KernelFunction best_kernel();  // the widest kernel this CPU runs (end of file)

}  // namespace

NativeNetwork::NativeNetwork(const std::string& description, const std::map<std::string, FloatTensor>& initializers,
                             int input_size, int output_size)
    : input_size_(input_size), output_size_(output_size) {
  if (input_size < 1 || input_size > kMaxWidth) unusable("cannot take " + std::to_string(input_size) + " inputs");
  JsonValue root;
  try {
    root = JsonValue::parse(description);
  } catch (const std::invalid_argument& error) {  // as the other keys say it (model_metadata.cpp)
    unusable(std::string("is not valid JSON: ") + error.what());
  }
  if (!root.is_object()) unusable("is not a JSON object");
  try {
    const JsonValue& form = root.at("form");
    if (!form.is_string() || (form.string() != kNativeNetworkForm && form.string() != kNativeNetworkFormUngatedGrowth))
      unusable("has form " + form.dump_excerpt() + "; this runtime evaluates \"" + kNativeNetworkForm + "\" and \"" +
               kNativeNetworkFormUngatedGrowth + "\"");
    growth_gated_ = form.string() == kNativeNetworkForm;
    input_mean_ = vector_named(initializers, root.at("input_mean"), static_cast<std::size_t>(input_size), "input_mean");
    input_std_ = vector_named(initializers, root.at("input_std"), static_cast<std::size_t>(input_size), "input_std");
    const JsonValue& layers = root.at("layers");
    if (!layers.is_array() || layers.array().empty()) unusable("needs a non-empty list of layers");
    int width = input_size;
    for (const JsonValue& entry : layers.array()) {
      if (!entry.is_array() || entry.array().size() != 2) unusable("layers must be [weight, bias] name pairs");
      const FloatTensor& weight = tensor_named(initializers, entry.array()[0]);
      if (weight.dims.size() != 2 || weight.dims[1] != width || weight.dims[0] < 1)
        unusable("layer weight " + quoted_value(entry.array()[0].string()) + " must have shape [outputs, " +
                 std::to_string(width) + "]");
      Layer layer;
      layer.inputs = width;
      layer.outputs = static_cast<int>(weight.dims[0]);
      layer.padded_outputs = padded(layer.outputs);
      if (layer.padded_outputs > kMaxWidth) unusable("has a layer wider than " + std::to_string(kMaxWidth));
      require_finite("layer weight " + quoted_value(entry.array()[0].string()), weight.values);
      const std::vector<float> bias = vector_named(initializers, entry.array()[1], static_cast<std::size_t>(layer.outputs),
                                                   "a layer's bias");
      layer.bias.assign(static_cast<std::size_t>(layer.padded_outputs), 0.0f);
      for (int o = 0; o < layer.outputs; ++o) layer.bias[o] = bias[o];
      const bool last = &entry == &layers.array().back();
      if (!(last && layer.outputs <= kNarrowOutputs)) {
        layer.weight_t.assign(static_cast<std::size_t>(layer.inputs) * layer.padded_outputs, 0.0f);
        for (int o = 0; o < layer.outputs; ++o)
          for (int k = 0; k < layer.inputs; ++k)
            layer.weight_t[static_cast<std::size_t>(k) * layer.padded_outputs + o] =
                weight.values[static_cast<std::size_t>(o) * layer.inputs + k];
      } else {
        const int padded_inputs = padded(layer.inputs);
        layer.weight_rows.assign(static_cast<std::size_t>(layer.outputs) * padded_inputs, 0.0f);
        for (int o = 0; o < layer.outputs; ++o)
          for (int k = 0; k < layer.inputs; ++k)
            layer.weight_rows[static_cast<std::size_t>(o) * padded_inputs + k] =
                weight.values[static_cast<std::size_t>(o) * layer.inputs + k];
      }
      width = layer.outputs;
      layers_.push_back(std::move(layer));
    }
    if (width != 3) unusable("'s last layer must have 3 outputs (correction, log spread, log growth ratio)");
    r_scale_ = scalar_of(initializers, root.at("r_scale"));
    sigma_floor_ = scalar_of(initializers, root.at("sigma_floor"));
    error_per_spread_ = scalar_of(initializers, root.at("error_per_spread"));
    sigma0_ = scalar_of(initializers, root.at("sigma0"));
    tiny_ = scalar_of(initializers, root.at("tiny"));
    d2_max_ = scalar_of(initializers, root.at("d2_max"));
    const JsonValue& mean = root.at("feature_mean");
    distance_columns_ = static_cast<int>(mean.is_array() ? mean.array().size()
                                                          : tensor_named(initializers, mean).values.size());
    if ((!mean.is_array() && tensor_named(initializers, mean).dims.size() != 1) || distance_columns_ < 1 ||
        distance_columns_ > input_size || distance_columns_ > kMaxDistanceColumns)
      unusable("feature_mean must be a vector of at most " + std::to_string(input_size) + " values");
    feature_mean_ = vector_named(initializers, mean, static_cast<std::size_t>(distance_columns_), "feature_mean");
    const FloatTensor& precision = tensor_named(initializers, root.at("feature_precision"));
    if (precision.dims.size() != 2 || precision.dims[0] != distance_columns_ || precision.dims[1] != distance_columns_)
      unusable("feature_precision must be a square matrix of the feature_mean's size");
    require_finite("tensor " + quoted_value(root.at("feature_precision").string()) + " (feature_precision)", precision.values);
    const auto P = [&](int i, int j) {
      return static_cast<double>(precision.values[static_cast<std::size_t>(i) * distance_columns_ + j]);
    };
    for (int i = 0; i < distance_columns_; ++i)
      for (int j = i; j < distance_columns_; ++j) distance_form_.push_back(j == i ? P(i, i) : P(i, j) + P(j, i));
    feature_mean_double_.assign(feature_mean_.begin(), feature_mean_.end());
    const JsonValue& pattern = root.at("pattern");
    if (!pattern.is_array() || static_cast<int>(pattern.array().size()) != output_size)
      unusable("pattern must list " + std::to_string(output_size) + " numbers (the head output per unit correction)");
    for (const JsonValue& value : pattern.array()) pattern_.push_back(static_cast<float>(value.number()));
    // The constants the evaluation uses (sigma0 only without the Wiener form's error_per_spread).
    for (const char* key : {"r_scale", "d2_max", "sigma_floor", "pattern"})
      require_graph_constant(initializers, root, key);
    for (const char* key : {"error_per_spread", "tiny"})
      if (error_per_spread_ > 0) require_graph_constant(initializers, root, key);
    if (!(error_per_spread_ > 0)) require_graph_constant(initializers, root, "sigma0");
    density_only_ = output_size == kEquivariantOutputs &&
                    std::all_of(pattern_.begin(), pattern_.begin() + 2 * kSpecies * kSpecies,
                                [](float value) { return value == 0.0f; });
  } catch (const std::invalid_argument& error) {
    unusable(std::string("is incomplete: ") + error.what());
  }
  for (const float std : input_std_) input_inverse_std_.push_back(1.0f / std);
  if (!(d2_max_ > 0) || !(error_per_spread_ > 0 || sigma0_ > 0))
    unusable("needs d2_max > 0 and error_per_spread > 0 or sigma0 > 0");
  kernel_ = best_kernel();
}


std::vector<float> NativeNetwork::probe_inputs(std::size_t rows) const {
  // The distance's columns at (every fourth row) or near the training mean, so that the gates
  // are open and the correction itself is compared; the other columns spread over +-2 std.
  std::vector<float> x(rows * static_cast<std::size_t>(input_size_));
  for (std::size_t r = 0; r < rows; ++r)
    for (int k = 0; k < input_size_; ++k) {
      const float wave = static_cast<float>(std::sin(1.7 * r + 0.61 * k + 0.3));
      x[r * input_size_ + k] = k < distance_columns_
                                   ? feature_mean_[k] + (r % 4 == 0 ? 0.0f : 0.02f * input_std_[k] * wave)
                                   : input_mean_[k] + 2.0f * input_std_[k] * wave;
    }
  return x;
}

// Squared Mahalanobis distance of D rows at once, one row per lane of a double vector: column i
// of the rows' centred features is centred[i]. Sum over i of c_i (Q_ii c_i + sum_{j>i} Q_ij c_j):
// each of the form's distinct products once (half the multiply-adds of c^T (P c)), in double (it
// cancels digits: the features are correlated and P has large entries of both signs, so float32
// sums in different orders disagree by up to 1e-3 of d2 on far-out cells). (Result by reference:
// GCC warns that vectors by value change the ABI between targets.)
template <typename DV>
inline __attribute__((always_inline)) void distance_squared(const double* form, int columns, const DV* centred, DV& d2) {
  d2 = DV{};
  for (int i = 0; i < columns; ++i) {
    // Four chains of multiply-adds: one chain waits on each add's latency (measured: 16% of the
    // kernel's time).
    DV inner[4] = {form[0] * centred[i], DV{}, DV{}, DV{}};
    int j = i + 1;
#pragma GCC unroll 2
    for (; j + 3 < columns; j += 4)
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) inner[c] += form[j + c - i] * centred[j + c];
#pragma GCC unroll 3
    for (; j < columns; ++j) inner[0] += form[j - i] * centred[j];
    d2 += centred[i] * ((inner[0] + inner[1]) + (inner[2] + inner[3]));
    form += columns - i;
  }
}

#if defined(__GNUC__) && !defined(__clang__)  // __builtin_shuffle (clang, the fuzzers' compiler, names it otherwise)
#define DODO_TRANSPOSED_COLUMNS 1
// v[j][l] <- v[l][j] for N vectors of N lanes (N = 2, 4, 8): at each scale s, the upper s lanes of
// each block of v[j] trade places with the lower s lanes of v[j + s] (j without bit s), so an
// element's row and lane end swapped. Only moves: the values are unchanged.
template <typename V, int N>
inline __attribute__((always_inline)) void transpose_square(V* v) {
  typedef typename VectorOf<long long, static_cast<int>(sizeof(V))>::type Index;
  static_assert(sizeof(V) / N == 8, "doubles");
  const auto butterfly = [&](int s, const Index& low, const Index& high) __attribute__((always_inline)) {
    for (int j = 0; j < N; ++j) {
      if (j & s) continue;
      const V a = v[j], b = v[j + s];
      v[j] = __builtin_shuffle(a, b, low);
      v[j + s] = __builtin_shuffle(a, b, high);
    }
  };
  if constexpr (N == 2) {
    butterfly(1, Index{0, 2}, Index{1, 3});
  } else if constexpr (N == 4) {
    butterfly(1, Index{0, 4, 2, 6}, Index{1, 5, 3, 7});
    butterfly(2, Index{0, 1, 4, 5}, Index{2, 3, 6, 7});
  } else {
    static_assert(N == 8, "2, 4 or 8 lanes");
    butterfly(1, Index{0, 8, 2, 10, 4, 12, 6, 14}, Index{1, 9, 3, 11, 5, 13, 7, 15});
    butterfly(2, Index{0, 1, 8, 9, 4, 5, 12, 13}, Index{2, 3, 10, 11, 6, 7, 14, 15});
    butterfly(4, Index{0, 1, 2, 3, 8, 9, 10, 11}, Index{4, 5, 6, 7, 12, 13, 14, 15});
  }
}
#else
#define DODO_TRANSPOSED_COLUMNS 0
#endif

// distance_squared for a number of columns known at compile time, fully unrolled: the same
// operations in the same order (so the same bits), without the short inner loops' counters,
// branches and remainders, which cost more instructions than the multiply-adds themselves at the
// default model's 34 columns (callgrind, AVX2: ~2,600 instructions a block of four rows, 595 of
// them multiply-adds). Row i of the form, then the rows after it.
// The distance column count distance_rows is compiled for: the default model's (its 27 invariant
// and 7 Box3D columns, OOD_COLUMNS of dodo.training.features); other counts take distance_squared.
constexpr int kUnrolledDistanceColumns = 34;

template <typename DV, int kColumns, int i = 0>
inline __attribute__((always_inline)) void distance_rows(const double* form, const DV* centred, DV& d2) {
  if constexpr (i < kColumns) {
    DV inner[4] = {form[0] * centred[i], DV{}, DV{}, DV{}};
    constexpr int kQuads = (kColumns - (i + 1)) / 4;  // whole groups of four after the diagonal
#pragma GCC unroll 16
    for (int quad = 0; quad < kQuads; ++quad) {
      const int j = i + 1 + 4 * quad;
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) inner[c] += form[j + c - i] * centred[j + c];
    }
#pragma GCC unroll 4
    for (int j = i + 1 + 4 * kQuads; j < kColumns; ++j) inner[0] += form[j - i] * centred[j];
    d2 += centred[i] * ((inner[0] + inner[1]) + (inner[2] + inner[3]));
    distance_rows<DV, kColumns, i + 1>(form + (kColumns - i), centred, d2);
  }
}

template <int Bytes>
inline __attribute__((always_inline)) void evaluate_rows(const NativeNetwork& net, const float* input, std::size_t n,
                                                         float* head, float* uncertainty, float* log_growth_ratio) {
  constexpr int R = kBlockRows<Bytes>;  // rows per pass of the dense layers
  typedef typename VectorOf<double, Bytes>::type DoubleVector;
  constexpr int D = VectorOf<double, Bytes>::kLanes;  // rows per block: one per lane of the distance
  static_assert(D % R == 0, "a block is whole passes of the layers");
  constexpr int W = NativeNetwork::kMaxWidth;
  typedef typename VectorOf<float, Bytes / 2>::type RowFloats;  // D floats: half the doubles' bytes
  typedef typename VectorOf<std::uint32_t, Bytes / 2>::type RowBits;
  static_assert(VectorOf<float, Bytes / 2>::kLanes == D, "one row per lane");
  alignas(64) float a[D][W], b[D][W];
  alignas(64) DoubleVector centred[NativeNetwork::kMaxDistanceColumns];
  double d2_lanes[D];
  const int columns = net.distance_columns_;
  const std::size_t layers = net.layers_.size();
  float(*result)[W] = layers % 2 ? b : a;  // where the last layer's outputs land
  for (std::size_t first = 0; first < n; first += D) {
    // The graph's order of operations: (x - mean) / std, layers, then the outputs and gates. A
    // last block short of D rows repeats its last row (results not written).
    const float* rows[D];
    for (int r = 0; r < D; ++r) {
      rows[r] = input + std::min(first + r, n - 1) * static_cast<std::size_t>(net.input_size_);
      for (int k = 0; k < net.input_size_; ++k)
        a[r][k] = (rows[r][k] - net.input_mean_[k]) * net.input_inverse_std_[k];
    }
    // The distance's columns, a vector over the block's rows each, assembled in registers (lane
    // by lane stores read back as a vector stalled on store forwarding). D columns at a time: each
    // row's D floats widened to doubles (exact) and the D x D block transposed by shuffles, instead
    // of a scalar load, conversion and lane insert per value (perf: most of the distance's time
    // besides its multiply-adds); the last columns one at a time. The same values either way.
    int i = 0;
#if DODO_TRANSPOSED_COLUMNS
    for (; i + D <= columns; i += D) {
      DoubleVector block[D];
#pragma GCC unroll 8
      for (int r = 0; r < D; ++r) {
        RowFloats values;
        std::memcpy(&values, rows[r] + i, sizeof values);
        block[r] = __builtin_convertvector(values, DoubleVector);
      }
      transpose_square<DoubleVector, D>(block);
#pragma GCC unroll 8
      for (int c = 0; c < D; ++c) centred[i + c] = block[c] - net.feature_mean_double_[i + c];
    }
#endif
    for (; i < columns; ++i) {
      DoubleVector column;
#pragma GCC unroll 8
      for (int r = 0; r < D; ++r) column[r] = static_cast<double>(rows[r][i]);
      centred[i] = column - net.feature_mean_double_[i];
    }
    DoubleVector d2_block;
    if (columns == kUnrolledDistanceColumns) {
      d2_block = DoubleVector{};
      distance_rows<DoubleVector, kUnrolledDistanceColumns>(net.distance_form_.data(), centred, d2_block);
    } else {
      distance_squared(net.distance_form_.data(), columns, centred, d2_block);
    }
    std::memcpy(d2_lanes, &d2_block, sizeof d2_lanes);
    // Layer by layer over the block's passes (not pass by pass): a pass's SiLU ends in a chain of
    // ~75 cycles of latency that its own next layer waits for, while the next pass's multiply-adds
    // do not, so the CPU overlaps them (perf: SiLU ran at 15 cycles a vector against its ~10 of
    // port pressure). Each row's operations are the same: the same bits.
    float(*in)[W] = a;
    float(*out)[W] = b;
    for (std::size_t l = 0; l < layers; ++l) {
      const auto& layer = net.layers_[l];
      for (int pass = 0; pass < D; pass += R) {
        if (!layer.weight_rows.empty())  // the last layer, when narrow
          narrow_dense<Bytes, R>(in[pass], W, padded(layer.inputs), layer.weight_rows.data(), layer.outputs,
                                 layer.bias.data(), out[pass], W);
        else
          dense<float, Bytes>(in[pass], W, layer.inputs, layer.weight_t.data(), layer.padded_outputs,
                              layer.bias.data(), l + 1 < layers, out[pass], W);
      }
      std::swap(in, out);
    }
    // The outputs and gates of the block's rows, one row per lane (the graph's operations in its
    // order; std::max(x, 0) as x < 0 ? 0 : x, which keeps a NaN).
    const RowFloats zero = RowFloats{};
    RowFloats value, log_spread, d2;
    for (int r = 0; r < D; ++r) {
      value[r] = result[r][0];
      log_spread[r] = result[r][1];
      d2[r] = static_cast<float>(d2_lanes[r]);
    }
    value = value * net.r_scale_;
    RowFloats sigma;
    exp_of<RowFloats, RowBits>(log_spread, sigma);
    sigma = sigma - net.sigma_floor_;
    sigma = sigma < zero ? zero : sigma;
    RowFloats spread_gate;
    if (net.error_per_spread_ > 0) {  // Wiener form r^2 / (r^2 + (c sigma)^2)
      const RowFloats noise = (net.error_per_spread_ * sigma) * (net.error_per_spread_ * sigma);
      const RowFloats signal = value * value;
      spread_gate = signal / (signal + noise + net.tiny_);
    } else {
      const RowFloats ratio = sigma / net.sigma0_;
      spread_gate = 1.0f / (1.0f + ratio * ratio);
    }
    RowFloats beyond = d2 - net.d2_max_;
    beyond = beyond < zero ? zero : beyond;
    RowFloats distance_gate;
    exp_of<RowFloats, RowBits>(-beyond / net.d2_max_, distance_gate);
    const RowFloats used = value * (spread_gate * distance_gate);
    for (int r = 0; r < D && first + r < n; ++r) {
      const std::size_t row = first + r;
      float* head_row = head + row * static_cast<std::size_t>(net.output_size_);
      for (int k = 0; k < net.output_size_; ++k) head_row[k] = used[r] * net.pattern_[k];
      if (uncertainty) uncertainty[row] = sigma[r];
      if (log_growth_ratio) log_growth_ratio[row] = net.growth_gated_ ? result[r][2] * distance_gate[r] : result[r][2];
    }
  }
}

namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(DODO_NO_MULTIVERSION)
// Flush-to-zero and denormals-are-zero for this thread while the kernel runs, restored after:
// gates far from 1 make values under 1e-38 (a distance gate of e^-80 times a small correction),
// and each denormal operation costs the CPU a microcode assist (measured: the kernel ran 40%
// longer on rows far from the training data). Such values are 0 to the closure anyway.
class DenormalsAsZero {
 public:
  DenormalsAsZero() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040u); }  // FTZ | DAZ
  ~DenormalsAsZero() { _mm_setcsr(saved_); }
  DenormalsAsZero(const DenormalsAsZero&) = delete;
  DenormalsAsZero& operator=(const DenormalsAsZero&) = delete;

 private:
  unsigned saved_;
};

__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,bmi2")))
void evaluate_avx512(const NativeNetwork& net, const float* input, std::size_t n, float* head, float* uncertainty,
                     float* log_growth_ratio) {
  const DenormalsAsZero scope;
  evaluate_rows<64>(net, input, n, head, uncertainty, log_growth_ratio);
}

__attribute__((target("avx2,fma,bmi2")))
void evaluate_avx2(const NativeNetwork& net, const float* input, std::size_t n, float* head, float* uncertainty,
                   float* log_growth_ratio) {
  const DenormalsAsZero scope;
  evaluate_rows<32>(net, input, n, head, uncertainty, log_growth_ratio);
}
#endif

void evaluate_baseline(const NativeNetwork& net, const float* input, std::size_t n, float* head, float* uncertainty,
                       float* log_growth_ratio) {
  evaluate_rows<16>(net, input, n, head, uncertainty, log_growth_ratio);
}

}  // namespace

namespace {

KernelFunction best_kernel() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(DODO_NO_MULTIVERSION)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512bw"))
    return &evaluate_avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &evaluate_avx2;
#endif
  return &evaluate_baseline;
}

}  // namespace

bool NativeNetwork::use_instruction_set(const std::string& name) {
  if (name == "baseline") {
    kernel_ = &evaluate_baseline;
    return true;
  }
#if defined(__x86_64__) && defined(__GNUC__) && !defined(DODO_NO_MULTIVERSION)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (name == "avx2" && avx2) {
    kernel_ = &evaluate_avx2;
    return true;
  }
  if (name == "avx512" && best_kernel() == &evaluate_avx512) {
    kernel_ = &evaluate_avx512;
    return true;
  }
#endif
  return false;
}

const char* NativeNetwork::instruction_set() const {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(DODO_NO_MULTIVERSION)
  if (kernel_ == &evaluate_avx512) return "avx512";
  if (kernel_ == &evaluate_avx2) return "avx2";
#endif
  return "baseline";
}

}  // namespace dodo::runtime
