// Header-only C++ RAII wrapper over the Dodo C API (dodo.h). C++17.
//
//   dodo::Closure closure("model.onnx", dodo::Options().threads(2));
//   closure.apply(n, F_init, u, F_pred, status);   // double[n][6][4], double[n][4], ...
//
// Errors become dodo::Error (status code + message). The handle is move-only and may be used
// from several threads at once (the C API's guarantee).
#ifndef DODO_DODO_HPP
#define DODO_DODO_HPP

// One clear line for a host on an older standard (it got "'exchange' is not a member of 'std'"
// from inside this header). MSVC reports __cplusplus only with /Zc:__cplusplus: _MSVC_LANG there.
#if (defined(_MSVC_LANG) ? _MSVC_LANG : __cplusplus) < 201402L
#error "dodo/dodo.hpp needs C++14 or later (C++17 is what it is tested with): compile with -std=c++17, or use the C API, dodo/dodo.h, which it wraps"
// Likewise for a host built without exceptions (-fno-exceptions; /EHs- with MSVC): every failure
// here throws dodo::Error, and such a host got one "exception handling disabled" error per throw
// from inside this header, none naming the way out (outside probe, C round thirty-nine). Not in
// an offload compiler's device pass (CUDA, HIP, SYCL), which may parse host code without them.
#elif ((defined(__GNUC__) && !defined(__EXCEPTIONS) && !defined(__cpp_exceptions)) || \
       (defined(_MSC_VER) && !defined(__clang__) && !defined(_CPPUNWIND))) && \
    !defined(__CUDACC__) && !defined(__HIPCC__) && !defined(__SYCL_DEVICE_ONLY__)
#error "dodo/dodo.hpp reports every failure by throwing dodo::Error, and exceptions are disabled (-fno-exceptions): compile with -fexceptions, or use the C API, dodo/dodo.h, whose calls return a status"
#else  // the header itself; nothing of it is compiled after the #error (its errors would bury it)

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

#include "dodo.h"

namespace dodo {

class Error : public std::runtime_error {
 public:
  Error(dodo_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  dodo_status status() const noexcept { return status_; }

 private:
  dodo_status status_;
};

// Builder over dodo_options; strings are copied so temporaries are safe.
class Options {
 public:
  // Members in the initialiser list: a host compiling with -Weffc++ -Werror could not include this
  // header (probe round thirteen of the C side).
  Options() : options_(), z_method_(), onnxruntime_library_() { dodo_options_init(&options_); }
  Options& threads(int n) { options_.threads = n; return *this; }
  Options& chunk_size(int n) { options_.chunk_size = n; return *this; }
  Options& lebedev_order(int order) { options_.lebedev_order = order; return *this; }
  Options& z_method(std::string method) { z_method_ = checked_text("z_method", std::move(method)); return *this; }
  Options& max_flux_factor(double value) { options_.max_flux_factor = value; return *this; }
  Options& onnxruntime_library(std::string path) {
    onnxruntime_library_ = checked_text("onnxruntime_library", std::move(path));
    return *this;
  }
  Options& run_self_test(bool run) { options_.run_self_test = run ? 1 : 0; return *this; }
  // The network on CUDA device `id` (needs an onnxruntime-gpu library); cpu() undoes it.
  Options& cuda_device(int id) { options_.device = DODO_DEVICE_CUDA; options_.device_id = id; return *this; }
  Options& cpu() { options_.device = DODO_DEVICE_CPU; options_.device_id = 0; return *this; }

  dodo_options c_options() const {
    dodo_options copy = options_;
    copy.z_method = z_method_.empty() ? nullptr : z_method_.c_str();
    copy.onnxruntime_library = onnxruntime_library_.empty() ? nullptr : onnxruntime_library_.c_str();
    return copy;
  }

  // A std::string holding a NUL reaches C cut at it ("box3d\0model.onnx" would be "box3d",
  // Box3D alone): refused instead.
  static std::string checked_text(const char* what, std::string text) {
    if (text.find('\0') != std::string::npos)
      throw Error(DODO_ERROR_INVALID_ARGUMENT, std::string(what) + " contains a NUL character");
    return text;
  }

 private:
  dodo_options options_;
  std::string z_method_, onnxruntime_library_;
};

class Closure {
 public:
  // Box3D-only closure (no model, no ONNX Runtime); the same as Closure(DODO_BOX3D_ONLY). An empty
  // model path is refused (dodo::Error, DODO_ERROR_INVALID_ARGUMENT). The default constructor is
  // not explicit: `Host host{};` of a struct Host { dodo::Closure closure; ... }, `dodo::Closure c
  // = {};` and `std::array<dodo::Closure, 2> a{};` copy-initialise from {}, which an explicit
  // default constructor makes ill-formed (clang refused them; probe round thirty-four).
  Closure() { create(nullptr, Options()); }
  explicit Closure(const Options& options) { create(nullptr, options); }
  // Closure with an ONNX model package.
  explicit Closure(const std::string& model_path, const Options& options = Options()) {
    create(Options::checked_text("model path", model_path).c_str(), options);
  }
  // The same from a C string. A null pointer is refused (DODO_ERROR_INVALID_ARGUMENT): it reached
  // the std::string overload, whose construction from NULL is undefined behaviour (libstdc++ threw
  // std::logic_error, not dodo::Error), e.g. for a path from getenv of an unset variable; an unset
  // path must not become Box3D alone either (an empty one is refused). Box3D alone: Closure(options)
  // or Closure(DODO_BOX3D_ONLY).
  explicit Closure(const char* model_path, const Options& options = Options()) {
    if (!model_path)
      throw Error(DODO_ERROR_INVALID_ARGUMENT,
                  "model path is a null pointer (for Box3D alone use dodo::Closure(options) or DODO_BOX3D_ONLY)");
    create(model_path, options);
  }
  // Closure with a model package already in memory (e.g. after MPI_Bcast); same checks as a file.
  // The bytes are only read during construction.
  static Closure from_memory(const void* bytes, std::size_t size, const Options& options = Options()) {
    Closure closure(nullptr);
    const dodo_options c_options = options.c_options();
    closure.throw_on_failure(dodo_closure_create_from_memory(bytes, size, &c_options, &closure.handle_, nullptr, 0));
    return closure;
  }
  ~Closure() { dodo_closure_destroy(handle_); }
  Closure(Closure&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
  Closure& operator=(Closure&& other) noexcept {
    if (this != &other) {
      dodo_closure_destroy(handle_);
      handle_ = std::exchange(other.handle_, nullptr);
    }
    return *this;
  }
  Closure(const Closure&) = delete;
  Closure& operator=(const Closure&) = delete;

  // Contiguous arrays: F_init/F_pred double[n][6][4] (= Fortran (4,6,n)), u double[n][4] or
  // nullptr (rest frame), cell_status n entries or nullptr. F_pred may equal F_init.
  void apply(std::size_t n, const double* F_init, const double* u, double* F_pred,
             std::uint32_t* cell_status = nullptr) const {
    check_call(dodo_apply(handle_, n, F_init, nullptr, u, nullptr, F_pred, nullptr, cell_status));
  }

  // Strided arrays: strides in elements, {cell, species, component} and {cell, component}.
  void apply_strided(std::size_t n, const double* F_init, const std::ptrdiff_t F_init_strides[3], const double* u,
                     const std::ptrdiff_t u_strides[2], double* F_pred, const std::ptrdiff_t F_pred_strides[3],
                     std::uint32_t* cell_status = nullptr) const {
    check_call(dodo_apply(handle_, n, F_init, F_init_strides, u, u_strides, F_pred, F_pred_strides, cell_status));
  }

  // apply, and per cell the growth rate (s^-1, comoving frame, for densities in cm^-3) and the
  // model's uncertainty (units of N_tot), n entries each; either may be nullptr (dodo_apply_diagnostics).
  void apply_diagnostics(std::size_t n, const double* F_init, const double* u, double* F_pred,
                         std::uint32_t* cell_status, double* growth_rate, double* uncertainty) const {
    check_call(dodo_apply_diagnostics(handle_, n, F_init, nullptr, u, nullptr, F_pred, nullptr, cell_status, growth_rate,
                                 uncertainty));
  }

  double self_test() const {
    double worst = 0.0;
    check_call(dodo_self_test(handle_, &worst));
    return worst;
  }

  dodo_counters counters() const {
    dodo_counters counters{};
    check_call(dodo_get_counters(handle_, &counters));
    return counters;
  }
  void reset_counters() const { check_call(dodo_reset_counters(handle_)); }

  bool has_model() const { return dodo_has_model(handle_) != 0; }

  // The model's metadata value for key; empty when absent. No key holds a NUL: such a key is
  // absent (C would see it cut at the NUL and answer for another key).
  std::string metadata(const std::string& key) const {
    if (key.find('\0') != std::string::npos) return std::string();
    long length = dodo_get_metadata(handle_, key.c_str(), nullptr, 0);
    if (length < 0) return std::string();
    std::string value(static_cast<std::size_t>(length) + 1, '\0');
    dodo_get_metadata(handle_, key.c_str(), &value[0], value.size());
    value.resize(static_cast<std::size_t>(length));
    return value;
  }

  dodo_closure* get() const noexcept { return handle_; }

 private:
  explicit Closure(std::nullptr_t) {}  // empty, for from_memory

  void create(const char* model_path, const Options& options) {
    const dodo_options c_options = options.c_options();
    throw_on_failure(dodo_closure_create(model_path, &c_options, &handle_, nullptr, 0));
  }

  // A call's status, once the object is known to hold a closure: a moved-from dodo::Closure was
  // told "closure handle is NULL", C's words for an argument the C++ host never saw (probe round
  // thirteen of the C side). One branch per call.
  void check_call(dodo_status status) const {
    if (!handle_ && status != DODO_OK)
      throw Error(DODO_ERROR_INVALID_ARGUMENT,
                  "this dodo::Closure holds no closure (it was moved from: use the object it was moved to)");
    throw_on_failure(status);
  }

  // Not named check: macOS's AssertMacros.h (included by Apple's frameworks) defines check(),
  // verify() and require() as macros unless __ASSERT_MACROS_DEFINE_VERSIONS_WITHOUT_UNDERSCORES is
  // 0, and a host that had included it could not compile this header (probe round thirty-four).
  void throw_on_failure(dodo_status status) const {
    if (status == DODO_OK) return;
    // This thread's own last error (a NULL handle asks for it), whole: another thread sharing
    // the handle cannot replace it between the failure and this reading, and a long message (a
    // model path of some thousand characters) is not cut at a fixed buffer's size, as creation's
    // was at 1,023 characters, its reason lost.
    std::string message(dodo_last_error(nullptr, nullptr, 0) + 1, '\0');
    message.resize(dodo_last_error(nullptr, &message[0], message.size()));
    throw Error(status, message.empty() ? dodo_status_message(status) : message);
  }

  dodo_closure* handle_ = nullptr;
};

inline std::string version() { return dodo_version(); }
// The commit libdodo was built from (dodo.h's dodo_build_id).
inline std::string build_id() { return dodo_build_id(); }

}  // namespace dodo

#endif  // C++14 or later
#endif  // DODO_DODO_HPP
