// The C API (cpp/include/dodo/dodo.h) over dodo::runtime::Closure.
//
// Every extern "C" body runs inside `guarded`, the one place where exceptions become status
// codes and the handle's last-error text. Nothing here prints, exits or aborts.
#include <limits.h>
#include <pthread.h>
#include <sys/stat.h>
#include <time.h>

#include <atomic>
#include <cfenv>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "cell_status.hpp"
#include "own_stack.hpp"
#include "dodo/dodo.h"
#include "runtime/array_layout.hpp"
#include "runtime/closure.hpp"
#include "runtime/errors.hpp"
#include "runtime/memory_limit.hpp"
#include "runtime/ort_library.hpp"

// The public bit values restate cell_status.hpp for C users; they must agree.
#define DODO_CHECK_CELL_BIT(name, bit, rejects, text) \
  static_assert(DODO_CELL_##name == (bit), "dodo.h and cell_status.hpp disagree on " #name);
DODO_CELL_STATUS_LIST(DODO_CHECK_CELL_BIT)
#undef DODO_CHECK_CELL_BIT
static_assert(DODO_CELL_REJECTED_MASK == dodo::kCellRejectedMask, "dodo.h and cell_status.hpp disagree on the mask");

struct dodo_closure {
  std::unique_ptr<dodo::runtime::Closure> closure;
  mutable std::mutex error_mutex;
  std::string last_error;
  // Calls inside the library on this handle (HandleInUse): dodo_closure_destroy waits for them to
  // end before it frees the handle. Counted up under live_mutex, so that after destroy has taken
  // the handle out of the live set no call can start on it.
  mutable std::atomic<long> calls_in_flight{0};

  void set_error(const std::string& message) {
    std::lock_guard<std::mutex> lock(error_mutex);
    last_error = message;
  }
};

namespace {

using dodo::runtime::Error;

// The default model's path, made on first use with no guard variable and no lock (threads racing
// to make it each make one, one is kept), so that a fork() at any moment leaves the child nothing
// held (a function-local static's guard, taken during its first initialisation, stays taken in
// the child, whose next call then waits for ever); never destroyed, so a pointer given out stays
// valid through exit. nullptr when there is no memory for it.
template <typename T, typename Make>
T* made_once(std::atomic<T*>& slot, Make&& make) noexcept {
  T* made = slot.load(std::memory_order_acquire);
  if (made) return made;
  try {
    made = make();
  } catch (...) {
    return nullptr;
  }
  T* expected = nullptr;
  if (slot.compare_exchange_strong(expected, made, std::memory_order_acq_rel)) return made;
  delete made;  // another thread's is kept
  return expected;
}

// An object built in place and never destroyed: it outlives exit()'s destructors.
template <typename T>
union NeverDestroyed {
  T value;
  NeverDestroyed() : value() {}
  ~NeverDestroyed() {}
};

// Live handles, so that a destroyed or foreign pointer is refused instead of dereferenced
// (double destroy, use after destroy from a Fortran code that kept a copy). The set is never
// destroyed: as a plain function-local static it was destroyed by exit(), and a host's own
// static owner of a closure destroyed after it (a C++ `static std::unique_ptr<dodo::Closure>`
// filled in main) erased from the freed set: "free(): double free detected", exit by SIGABRT
// (outside probe, round eighteen); a thread still calling libdodo during exit read it freed.
// Made when the library is loaded (kLiveHandlesMade), so that no fork() can catch its guard
// variable held; the guard still orders a use from another library's static initialiser.
std::mutex live_mutex;
std::set<const dodo_closure*>& live_handles() {
  static NeverDestroyed<std::set<const dodo_closure*>> handles;  // std::set() does not allocate
  return handles.value;
}
[[maybe_unused]] const bool kLiveHandlesMade = (live_handles(), true);
// A call's hold on its handle, from the liveness check to the call's end (its error text
// included): dodo_closure_destroy from another thread waits until every call that found the
// handle live has ended, instead of freeing the closure under it. The live-handle set alone
// refused only a handle destroyed before the call; one destroyed while another thread was inside
// dodo_apply was freed under it, a use after free (outside probe of the C side, round twenty: a
// thread held inside dodo_apply, destroy returned at once and the call went on in freed memory).
// One lock and two atomic counts a call: the lock is the liveness check each call already took.
class HandleInUse {
 public:
  explicit HandleInUse(const dodo_closure* handle) noexcept {
    if (!handle) return;
    std::lock_guard<std::mutex> lock(live_mutex);
    if (live_handles().count(handle) == 0) return;
    handle->calls_in_flight.fetch_add(1, std::memory_order_relaxed);
    handle_ = const_cast<dodo_closure*>(handle);
  }
  ~HandleInUse() {
    if (handle_) handle_->calls_in_flight.fetch_sub(1, std::memory_order_release);
  }
  HandleInUse(const HandleInUse&) = delete;
  HandleInUse& operator=(const HandleInUse&) = delete;
  // The handle when it is live (and held until this object ends), else nullptr.
  dodo_closure* live() const noexcept { return handle_; }

 private:
  dodo_closure* handle_ = nullptr;
};

// A call of libdodo made by a thread that is already inside one: a host's signal handler that
// interrupted that call (SIGALRM of a profiler or a checkpoint timer, SIGUSR1 of a batch system,
// a SIGSEGV handler; an asynchronous signal reaches the host's own threads, the library's block
// them), or a host's pthread_atfork handler that runs while libdodo's own fork handlers hold its
// locks (a host that registered its handlers before it dlopen()ed libdodo: Python's ctypes,
// Julia, a plugin). The handler's call waited for ever for a lock its own thread held:
// live_mutex, taken by every call, or the handle's error text (outside probe, C round
// thirty-five: a SIGALRM every 37 us whose handler calls dodo_apply hung the host within a
// second, its only thread in futex_wait on live_mutex inside the handler, the interrupted call
// below it). Such a call is now refused at once, before any lock or allocation: the status
// DODO_ERROR_INVALID_ARGUMENT, a static message for dodo_last_error and error_buffer, no handle
// touched. Nothing else is async-signal-safe (a handler that interrupted the host's own malloc
// still waits in libdodo's); dodo.h says so. A count, not a flag: fork handlers nest in a call
// of no one. volatile, and fenced against the compiler only: the handler runs on this thread.
thread_local volatile int calls_on_this_thread = 0;
thread_local const char* volatile nested_refusal = nullptr;
constexpr const char kNestedCallRefused[] =
    "libdodo was called by a thread that is already inside a libdodo call (from a signal handler that "
    "interrupted it, or a pthread_atfork handler run while libdodo's own fork handlers hold its locks): "
    "refused, since the call would wait for ever for a lock its own thread holds; libdodo's functions are not "
    "async-signal-safe: set a flag in the handler and call libdodo after it returns";

class ThreadCall {
 public:
  ThreadCall() noexcept : nested_(calls_on_this_thread != 0) {
    if (!nested_) nested_refusal = nullptr;  // an outermost call: no refusal of its own yet
    calls_on_this_thread = calls_on_this_thread + 1;
    std::atomic_signal_fence(std::memory_order_seq_cst);  // counted before any lock is taken
  }
  ~ThreadCall() {
    std::atomic_signal_fence(std::memory_order_seq_cst);
    calls_on_this_thread = calls_on_this_thread - 1;
  }
  ThreadCall(const ThreadCall&) = delete;
  ThreadCall& operator=(const ThreadCall&) = delete;
  // A nested call: records the refusal (a pointer to static text) and says so.
  bool refused() const noexcept {
    if (nested_) nested_refusal = kNestedCallRefused;
    return nested_;
  }

 private:
  bool nested_;
};

// fork() while another thread held live_mutex (every call's liveness check) or a handle's
// error_mutex copied that lock, held, into the child, whose next call hung (outside probe, round
// fifteen; the runtime's own workspaces and workers are fork-safe by process id). A fork waits
// until neither is held. No code holds an error_mutex while it takes live_mutex, so this order
// cannot deadlock.
void lock_for_fork() {
  calls_on_this_thread = calls_on_this_thread + 1;  // until the parent's or child's handler: ThreadCall
  std::atomic_signal_fence(std::memory_order_seq_cst);
  live_mutex.lock();
  for (const dodo_closure* handle : live_handles()) handle->error_mutex.lock();
}
void unlock_after_fork() {
  for (const dodo_closure* handle : live_handles()) handle->error_mutex.unlock();
  live_mutex.unlock();
  std::atomic_signal_fence(std::memory_order_seq_cst);
  calls_on_this_thread = calls_on_this_thread - 1;
}
// The child has only the thread that forked, which is inside no call: the parent's other threads'
// calls are not the child's, and its dodo_closure_destroy must not wait for them.
void unlock_in_child() {
  for (const dodo_closure* handle : live_handles()) handle->calls_in_flight.store(0, std::memory_order_relaxed);
  unlock_after_fork();
}
[[maybe_unused]] const int kForkHandlers = pthread_atfork(lock_for_fork, unlock_after_fork, unlock_in_child);

// Copies text cut to the buffer, always NUL-terminated, cut at a
// character's start: messages are UTF-8 (printable_message), and a cut inside a character left
// bytes that are not, which a host decoding its buffer as UTF-8 (Python's ctypes .decode()) could
// not read (probe round seventeen). Metadata values, UTF-8 too (the loader refuses other bytes),
// were cut byte for byte: a value cut inside a character left the host's buffer not UTF-8, though
// docs/runtime.md promises C, Fortran and Julia hosts UTF-8 only (outside probe, C round 31).
void copy_text(std::string_view text, char* buffer, size_t size) {
  if (!buffer || size == 0) return;
  size_t n = text.size() < size - 1 ? text.size() : size - 1;
  while (n > 0 && n < text.size() && (static_cast<unsigned char>(text[n]) & 0xc0) == 0x80) --n;
  std::memcpy(buffer, text.data(), n);
  buffer[n] = '\0';
}

void copy_message(std::string_view text, char* buffer, size_t size) { copy_text(text, buffer, size); }

// The calling thread's last failure, from any call (with or without a live handle): what
// dodo_last_error gives for a NULL or destroyed handle, and the text a thread sharing a handle
// can read without another thread's call replacing it (outside probe, round nine).
// A thread_local std::string is destroyed when its thread ends, and the main thread's by exit()
// before the atexit handlers and static destructors run; a host calling libdodo from one of those
// (a static object's destructor reading the counters) wrote into the freed text: heap corruption,
// "malloc(): unaligned tcache chunk detected", SIGABRT (outside probe of the C side, round
// fifteen). A trivially destructible flag, readable for the thread's whole life, says when it is
// gone; later texts go to a fixed buffer that is never destroyed (cut to its size).
// The text is held by a trivially destructible thread_local pointer and freed by a pthread key's
// destructor, as Box3D's scratch is: a thread_local object with a destructor is registered with
// glibc at its first use, and glibc aborts the process where that registration cannot allocate
// ("Fatal glibc error: failed to register TLS destructor: out of memory", SIGABRT): a host
// thread's first dodo_apply under an address-space limit (outside probe, C round forty-five). The
// text is made only for a message (a call that succeeds needs none), and where it cannot be, the
// message goes to the fixed buffer. Key destructors do not run for the main thread at exit(), so
// its text stays valid for atexit handlers and static destructors.
void free_thread_error(void* text);
thread_local std::string* thread_error = nullptr;
thread_local bool thread_error_destroyed = false;  // freed by the key: later texts go to the buffer
thread_local bool thread_error_in_buffer = true;   // the last text is thread_error_late's
thread_local char thread_error_late[1024] = "";
pthread_key_t thread_error_key;
const int thread_error_key_status = pthread_key_create(&thread_error_key, &free_thread_error);

void free_thread_error(void* text) {
  delete static_cast<std::string*>(text);
  thread_error = nullptr;
  thread_error_destroyed = true;
  thread_error_in_buffer = true;
  thread_error_late[0] = '\0';
}

// The key is deleted with the library (an unload), so that no thread's end calls free_thread_error
// in unmapped code.
struct ThreadErrorKeyDeleter {
  ~ThreadErrorKeyDeleter() {
    if (thread_error_key_status == 0) pthread_key_delete(thread_error_key);
  }
} thread_error_key_deleter;

void set_thread_error(const std::string& message) {
  if (!thread_error && !thread_error_destroyed && !message.empty() && thread_error_key_status == 0) {
    std::string* text = new (std::nothrow) std::string;
    if (text && pthread_setspecific(thread_error_key, text) == 0)
      thread_error = text;
    else
      delete text;
  }
  if (thread_error) {
    try {
      *thread_error = message;
      thread_error_in_buffer = false;
      return;
    } catch (const std::bad_alloc&) {
    }
  }
  copy_message(message, thread_error_late, sizeof thread_error_late);
  thread_error_in_buffer = true;
}

std::string_view thread_error_text() {
  return thread_error_in_buffer ? std::string_view(thread_error_late) : std::string_view(*thread_error);
}

// POSIX cancellation of a host thread (pthread_cancel) is held off for the length of a call and
// acted on at the host's next cancellation point after it. A cancellation point inside a call (a
// wait for the workers, the model file's read, a worker's join in destroy) unwound the thread
// through the library: the exception guard below caught glibc's forced unwinding without
// rethrowing it, "FATAL: exception not rethrown", abort (outside probe of the C side, round
// fifteen); had it gone on, it would have left the workers inside a batch whose memory it freed.
class CancellationHeldOff {
 public:
  CancellationHeldOff() noexcept { ::pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &previous_); }
  ~CancellationHeldOff() {
    int ignored = 0;
    ::pthread_setcancelstate(previous_, &ignored);
  }
  CancellationHeldOff(const CancellationHeldOff&) = delete;
  CancellationHeldOff& operator=(const CancellationHeldOff&) = delete;

 private:
  int previous_ = PTHREAD_CANCEL_ENABLE;
};

// The host's floating-point environment is held for the length of a call and given back as it
// was (outside probe, round nineteen). Box3D and the network raise the invalid and divide-by-zero
// flags on ordinary cells (lanes and branches whose results are discarded), so that a host with
// those exceptions trapping (feenableexcept; gfortran -ffpe-trap=invalid,zero,overflow, common in
// a simulation code's debug build) died of SIGFPE in its first dodo_apply, and a host reading its
// own flags (ieee_get_flag, fetestexcept) found libdodo's. A host's rounding mode (fesetround
// FE_UPWARD, as rounding-sensitivity tests run a code) changed the results by up to 8e-7 and
// differently on the caller's thread and the workers (which keep the mode they were started
// with), and refused the shipped model at creation (its description's numbers, read from decimal
// text, rounded off the graph's). Inside a call: no trap, flags cleared, round to nearest (the
// default environment, in which the results are as before, bit for bit); after it the host's
// environment is restored exactly, flags included, libdodo's flags discarded. Worker threads
// started inside a call start with that environment. Held by the calls that compute (the two
// creates, dodo_apply_diagnostics, dodo_self_test): some 0.1 us a call.
class FloatingPointEnvironmentHeld {
 public:
  FloatingPointEnvironmentHeld() noexcept {
    held_ = ::feholdexcept(&host_) == 0;
    if (held_) ::fesetround(FE_TONEAREST);
  }
  ~FloatingPointEnvironmentHeld() {
    if (held_) ::fesetenv(&host_);
  }
  FloatingPointEnvironmentHeld(const FloatingPointEnvironmentHeld&) = delete;
  FloatingPointEnvironmentHeld& operator=(const FloatingPointEnvironmentHeld&) = delete;

 private:
  std::fenv_t host_{};
  bool held_ = false;
};

// A host thread of a small stack (OMP_STACKSIZE=32K, pthread_attr_setstacksize of 64 KiB, a thread
// pool's) died of SIGSEGV inside a call (own_stack.hpp has the measurements; outside probe, C round
// fifty). Such a call's body now runs on a stack of the thread's own, mapped at its first short call
// and kept for its later ones (a mapping a call cost some 170 us a call here, the calls themselves
// 10 us), unmapped by a pthread key's destructor when the thread ends (the key deleted with the
// library, as the error text's).
thread_local void* own_call_stack = nullptr;
void unmap_own_call_stack(void* memory) {
  dodo::unmap_own_stack(memory);
  own_call_stack = nullptr;
}
pthread_key_t own_call_stack_key;
const int own_call_stack_key_status = pthread_key_create(&own_call_stack_key, &unmap_own_call_stack);
struct OwnCallStackKeyDeleter {
  ~OwnCallStackKeyDeleter() {
    if (own_call_stack_key_status == 0) pthread_key_delete(own_call_stack_key);
  }
} own_call_stack_key_deleter;

// Runs `run(argument)` on this thread's own call stack; false when none could be made.
bool run_on_own_stack(void (*run)(void*), void* argument) noexcept {
  if (!own_call_stack) {
    if (own_call_stack_key_status != 0) return false;
    void* memory = dodo::map_own_stack();
    if (!memory) return false;
    if (::pthread_setspecific(own_call_stack_key, memory) != 0) {
      dodo::unmap_own_stack(memory);
      return false;
    }
    own_call_stack = memory;
  }
  return dodo::run_on_stack(own_call_stack, run, argument);
}

// The choke point. `handle` receives the error text (may be null: then only the status says it).
template <typename Body>
dodo_status guarded_here(dodo_closure* handle, Body&& body);

template <typename Body>
dodo_status guarded(dodo_closure* handle, Body&& body) {
  if (!dodo::stack_is_short()) return guarded_here(handle, body);
  struct Pending {
    dodo_closure* handle;
    Body* body;
    dodo_status status;
  } pending{handle, &body, DODO_ERROR_OUT_OF_MEMORY};
  const bool ran = run_on_own_stack([](void* argument) {
    auto* call = static_cast<Pending*>(argument);
    call->status = guarded_here(call->handle, *call->body);
  }, &pending);
  if (ran) return pending.status;
  return guarded_here(handle, [] {
    throw Error(DODO_ERROR_OUT_OF_MEMORY,
                "out of memory: the calling thread has less than 160 KiB of stack left, and no stack of 512 KiB "
                "could be mapped to run the call on: give the thread a larger stack (pthread_attr_setstacksize, "
                "OMP_STACKSIZE=1M)");
  });
}

template <typename Body>
dodo_status guarded_here(dodo_closure* handle, Body&& body) {
  const CancellationHeldOff no_cancellation;
  std::string message;
  dodo_status status = DODO_OK;
  try {
    body();
  } catch (const Error& error) {
    status = error.status();
    message = error.what();
  } catch (const std::bad_alloc& error) {
    status = DODO_ERROR_OUT_OF_MEMORY;
    message = "out of memory";  // no allocation (short string): the cause is added if memory allows
    // What needed it, where the runtime said (C round forty-six); made here, after the unwinding freed
    // what the call held.
    if (const auto* what = dynamic_cast<const dodo::runtime::OutOfMemoryFor*>(&error)) {
      try {
        message = what->what();
      } catch (...) {
      }
    }
    try {  // "out of memory" alone named no limit (outside probe, C round forty-three: ulimit -v)
      message += " (" + dodo::runtime::memory_shortage_cause() + ")";
    } catch (...) {
    }
  } catch (const std::invalid_argument& error) {
    status = DODO_ERROR_INVALID_ARGUMENT;
    message = dodo::runtime::printable_message(error.what());
  } catch (const std::exception& error) {
    status = DODO_ERROR_INTERNAL;
    message = dodo::runtime::printable_message(std::string("internal error: ") + error.what());
  } catch (...) {
    status = DODO_ERROR_INTERNAL;
    message = "internal error: unknown exception";
  }
  try {
    set_thread_error(message);
    if (handle) handle->set_error(message);
  } catch (...) {
    // Out of memory while recording the message: the status still says what happened.
  }
  return status;
}

// The handle a call was given, refused unless `in_use` holds it live.
dodo_closure* checked_handle(const dodo_closure* handle, const HandleInUse& in_use) {
  if (!handle) throw Error(DODO_ERROR_INVALID_ARGUMENT, "closure handle is NULL");
  if (!in_use.live()) throw Error(DODO_ERROR_INVALID_ARGUMENT, "closure handle is not live (destroyed or never created)");
  return in_use.live();
}

// NULL strides mean the contiguous layout double[n][6][4] (= Fortran (4, 6, n)).
dodo::ConstCellArray cell_view(const double* data, const ptrdiff_t* strides) {
  dodo::ConstCellArray view;
  view.data = data;
  if (strides) {
    view.cell_stride = strides[0];
    view.species_stride = strides[1];
    view.component_stride = strides[2];
  }
  return view;
}

// dodo_options as first released (API version 1), before `device` and `device_id` were added:
// a program built against that dodo.h passes this size, and gets the defaults for the rest.
struct OptionsV1 {
  size_t struct_size;
  int threads, chunk_size, lebedev_order;
  const char* z_method;
  double max_flux_factor;
  const char* onnxruntime_library;
  int run_self_test;
};

static_assert(offsetof(OptionsV1, run_self_test) == offsetof(dodo_options, run_self_test) &&
                  sizeof(OptionsV1) != sizeof(dodo_options),
              "dodo_options must extend the first release's layout");

// The largest dodo_options a later dodo.h can have: fields are added at the end, a few at a time.
// A struct_size beyond it is no dodo.h's (an uninitialised struct's stack contents).
constexpr size_t kLargestLaterOptions = 4096;

// The caller's options over the defaults, for any struct_size this library knows.
dodo_options complete_options(const dodo_options* options) {
  dodo_options given;
  dodo_options_init(&given);
  if (!options) return given;
  if (options->struct_size == sizeof(dodo_options)) return *options;
  if (options->struct_size == sizeof(OptionsV1)) {
    std::memcpy(&given, options, offsetof(dodo_options, run_self_test) + sizeof(int));
    given.struct_size = sizeof(dodo_options);
    return given;
  }
  // Larger than ours: the struct of a later dodo.h (fields are only added at the end), whose fields
  // this library cannot honour. Said so: the general advice ("initialise with dodo_options_init")
  // named the wrong cause for a program that had (probe round thirteen of the C side).
  // Only a size that a later dodo.h can give: a multiple of the struct's alignment, at most
  // kLargestLaterOptions. Any other is what the stack held where a host never initialised its
  // dodo_options (`dodo_options o; o.threads = 4;`, the C programmer's usual slip), which was told to
  // rebuild against this library's dodo.h, an address as its "size" (outside probe, C round
  // forty-seven).
  if (options->struct_size > sizeof(dodo_options) && options->struct_size <= kLargestLaterOptions &&
      options->struct_size % alignof(dodo_options) == 0)
    throw Error(DODO_ERROR_INVALID_ARGUMENT,
                "dodo_options.struct_size " + std::to_string(options->struct_size) + " is larger than this library's (" +
                    std::to_string(sizeof(dodo_options)) + " bytes): the program was built against a newer dodo.h than "
                    "this libdodo " + dodo_version() + "; build it against this library's dodo.h, or link a libdodo "
                    "at least as new as its header");
  if (options->struct_size > sizeof(dodo_options))
    throw Error(DODO_ERROR_INVALID_ARGUMENT,
                "dodo_options.struct_size " + std::to_string(options->struct_size) + " is larger than this library's (" +
                    std::to_string(sizeof(dodo_options)) + " bytes) and than a newer dodo.h's could be: was the struct "
                    "initialised? Call dodo_options_init(&options) before setting its fields (it records the size itself)");
  throw Error(DODO_ERROR_INVALID_ARGUMENT, "dodo_options.struct_size " + std::to_string(options->struct_size) +
                                               " is not a size this library knows (initialise with dodo_options_init)");
}

// The largest CUDA device number: the runtime's "cuda:N" takes at most 6 digits (onnx_model.cpp).
constexpr int kMaxCudaDeviceId = 999999;

dodo::runtime::ClosureOptions runtime_options(const dodo_options& given) {
  dodo::runtime::ClosureOptions settings;
  settings.threads = given.threads;
  settings.chunk_size = given.chunk_size;
  settings.box3d.lebedev_order = given.lebedev_order;
  settings.box3d.z_method = given.z_method ? given.z_method : "";
  settings.box3d.max_flux_factor = given.max_flux_factor;
  settings.onnxruntime_library = given.onnxruntime_library ? given.onnxruntime_library : "";
  settings.run_self_test = given.run_self_test != 0;
  if (given.device == DODO_DEVICE_CUDA) {
    // Named as the host wrote it: a device_id of a million or more reached the runtime's parser
    // of "cuda:N" (at most 6 digits), which refused 'unknown device "cuda:2147483647" (known:
    // "cpu", "cuda", "cuda:N")', a string no C, C++ or Fortran host wrote (outside probe, C round
    // thirty-five: a Fortran cuda_device beyond the C int range arrives as 2147483647).
    if (given.device_id < 0 || given.device_id > kMaxCudaDeviceId)
      throw Error(DODO_ERROR_INVALID_ARGUMENT,
                  "dodo_options.device_id must be >= 0 and at most " + std::to_string(kMaxCudaDeviceId) +
                      " (a CUDA device number; C++ and Fortran: cuda_device); got " + std::to_string(given.device_id));
    settings.device = "cuda:" + std::to_string(given.device_id);
  } else if (given.device != DODO_DEVICE_CPU) {
    throw Error(DODO_ERROR_INVALID_ARGUMENT, "device must be DODO_DEVICE_CPU (0) or DODO_DEVICE_CUDA (1); got " +
                                                 std::to_string(given.device));
  }
  return settings;
}

// The body of both create functions: options, the runtime closure made by `make`, registration.
template <typename Make>
dodo_status create_handle(const dodo_options* options, dodo_closure** closure, char* error_buffer,
                          size_t error_buffer_size, Make&& make) {
  const ThreadCall call;
  if (call.refused()) {
    if (closure) *closure = nullptr;
    copy_message(kNestedCallRefused, error_buffer, error_buffer_size);
    return DODO_ERROR_INVALID_ARGUMENT;
  }
  // No handle exists yet to hold the text: a local one collects it for error_buffer.
  dodo_closure collector;
  dodo_status status = guarded(&collector, [&] {
    const FloatingPointEnvironmentHeld default_floating_point;
    if (!closure) throw Error(DODO_ERROR_INVALID_ARGUMENT, "output pointer `closure` is NULL");
    *closure = nullptr;
    const dodo::runtime::ClosureOptions settings = runtime_options(complete_options(options));
    auto handle = std::make_unique<dodo_closure>();
    handle->closure = make(settings);
    {
      std::lock_guard<std::mutex> lock(live_mutex);
      live_handles().insert(handle.get());
    }
    *closure = handle.release();
  });
  copy_message(collector.last_error, error_buffer, error_buffer_size);
  return status;
}

// The default model shipped with Dodo, found from where this library lies: beside the Python
// package (the wheel: dodo/lib/libdodo.so or dodo/_core*.so, model in dodo/models/), under
// share/dodo/models of an install prefix, or in the source tree this library was built from.
std::string find_default_model() {
  std::vector<std::string> candidates;
  const auto beside = [&candidates](const std::string& directory) {
    candidates.push_back(directory + "/../models/" DODO_DEFAULT_MODEL_NAME);
    candidates.push_back(directory + "/models/" DODO_DEFAULT_MODEL_NAME);
#ifdef DODO_INSTALLED_MODELS_DIR  // where `cmake --install` of this build puts it (CMakeLists)
    candidates.push_back(directory + "/" DODO_INSTALLED_MODELS_DIR "/" DODO_DEFAULT_MODEL_NAME);
#endif
    candidates.push_back(directory + "/../share/dodo/models/" DODO_DEFAULT_MODEL_NAME);
  };
  // Beside the name the loader opened, then beside the file it names, resolved when the library
  // was loaded: a libdodo reached through a link in another directory (a Spack view's or module
  // system's link farm, `ln -s .../libdodo.so.0 /usr/local/lib`) has its model beside the real
  // file, and one found through a relative LD_LIBRARY_PATH entry has a relative name, wrong once
  // the host changed its working directory: dodo_default_model_path() answered NULL, or the build
  // tree's model instead of the installed one (outside probe, C round thirty-two).
  for (const std::string& directory : dodo::runtime::library_directories()) beside(directory);
#ifdef DODO_SOURCE_MODELS_DIR
  candidates.push_back(DODO_SOURCE_MODELS_DIR "/" DODO_DEFAULT_MODEL_NAME);
#endif
  for (const std::string& candidate : candidates) {
    struct stat status {};
    char resolved[PATH_MAX];
    if (::stat(candidate.c_str(), &status) == 0 && S_ISREG(status.st_mode) && ::realpath(candidate.c_str(), resolved))
      return resolved;
  }
  return "";
}

}  // namespace

extern "C" {

const char* dodo_version(void) {
#define DODO_STRINGIFY2(x) #x
#define DODO_STRINGIFY(x) DODO_STRINGIFY2(x)
  return DODO_STRINGIFY(DODO_VERSION_MAJOR) "." DODO_STRINGIFY(DODO_VERSION_MINOR) "." DODO_STRINGIFY(DODO_VERSION_PATCH);
}

int dodo_api_version(void) { return DODO_API_VERSION; }

// dodo.h spells the enum out (C89 and C++98 hosts refuse the generated list's trailing comma):
// each listed name must have its listed value (a name missing from the enum fails to compile here).
#define DODO_STATUS_VALUE_CHECK(name, value, message) \
  static_assert(static_cast<int>(name) == (value), "dodo.h: dodo_status " #name " differs from DODO_STATUS_LIST");
DODO_STATUS_LIST(DODO_STATUS_VALUE_CHECK)
#undef DODO_STATUS_VALUE_CHECK

const char* dodo_status_name(dodo_status status) {
  switch (status) {
#define DODO_STATUS_NAME_CASE(name, value, message) \
  case name:                                        \
    return #name;
    DODO_STATUS_LIST(DODO_STATUS_NAME_CASE)
#undef DODO_STATUS_NAME_CASE
  }
  return "DODO_UNKNOWN_STATUS";
}

const char* dodo_status_message(dodo_status status) {
  switch (status) {
#define DODO_STATUS_MESSAGE_CASE(name, value, message) \
  case name:                                           \
    return message;
    DODO_STATUS_LIST(DODO_STATUS_MESSAGE_CASE)
#undef DODO_STATUS_MESSAGE_CASE
  }
  return "unknown status code";
}

const char* dodo_cell_status_name(uint32_t bit) {
  switch (bit) {
#define DODO_CELL_NAME_CASE(name, value, rejects, text) \
  case value:                                           \
    return #name;
    DODO_CELL_STATUS_LIST(DODO_CELL_NAME_CASE)
#undef DODO_CELL_NAME_CASE
  }
  return nullptr;
}

void dodo_options_init_sized(dodo_options* options, size_t size) {
  // Smaller than any dodo_options: not ours to write. (`dodo_options_init_sized(o, sizeof o)` on a
  // `dodo_options* o`, the size of a pointer: creation then reads the struct_size the memory held and
  // asks whether the struct was initialised, complete_options.)
  if (!options || size < sizeof(OptionsV1)) return;
  // Never past the fields this library knows: a size beyond them (a later dodo.h's struct, or a
  // host's wrong size, 1 MiB for a dodo_options on its stack) had every byte of it zeroed, the
  // host's stack smashed (SIGSEGV); such a struct is refused at creation anyway, as the size
  // recorded says (outside probe, C round forty-two).
  std::memset(options, 0, size < sizeof(dodo_options) ? size : sizeof(dodo_options));
  options->struct_size = size;  // a size this library does not know is refused at creation
  options->chunk_size = 1024;                        // the other defaults are zero (CPU, the model's settings)
  options->run_self_test = 1;  // as in Python: a package is checked against its test vectors at load
}

// Parenthesised: the name, not dodo.h's macro of the same name.
void(dodo_options_init)(dodo_options* options) {
  if (!options) return;
  OptionsV1 first_release{};
  first_release.struct_size = sizeof first_release;
  first_release.chunk_size = 1024;
  first_release.run_self_test = 1;  // as in Python: a package is checked against its test vectors at load
  std::memcpy(options, &first_release, sizeof first_release);  // never past the first release's size
}

const char* dodo_default_model_path(void) {
  const CancellationHeldOff no_cancellation;  // it looks at files
  // Made once, never destroyed (a pointer given out stays valid through exit), no guard to be
  // caught held by a fork (made_once); NULL also when there is no memory to look.
  static std::atomic<std::string*> found{nullptr};
  const std::string* path = made_once(found, [] { return new std::string(find_default_model()); });
  return !path || path->empty() ? nullptr : path->c_str();
}

dodo_status dodo_closure_create(const char* model_path, const dodo_options* options, dodo_closure** closure,
                                char* error_buffer, size_t error_buffer_size) {
  return create_handle(options, closure, error_buffer, error_buffer_size, [&](const dodo::runtime::ClosureOptions& settings) {
    // NULL: Box3D alone, as DODO_BOX3D_ONLY; an empty string is refused by the closure (issue 11.15).
    return std::make_unique<dodo::runtime::Closure>(model_path ? model_path : DODO_BOX3D_ONLY, settings);
  });
}

void dodo_closure_destroy(dodo_closure* closure) {
  if (!closure) return;
  const ThreadCall call;  // nested (a signal handler's): left live, as it would wait for ever
  if (call.refused()) return;
  const CancellationHeldOff no_cancellation;  // destroying joins the workers: a cancellation point
  {
    std::lock_guard<std::mutex> lock(live_mutex);
    if (live_handles().erase(closure) == 0) return;  // double destroy or foreign pointer: ignore
  }
  // No call can start on it now; those that had (another thread's dodo_apply) end first.
  while (closure->calls_in_flight.load(std::memory_order_acquire) != 0) {
    const struct timespec pause {0, 100000};  // 0.1 ms
    ::nanosleep(&pause, nullptr);
  }
  delete closure;
}

dodo_status dodo_apply(dodo_closure* closure, size_t n_cells, const double* F_init, const ptrdiff_t* F_init_strides,
                       const double* u, const ptrdiff_t* u_strides, double* F_pred, const ptrdiff_t* F_pred_strides,
                       uint32_t* cell_status) {
  return dodo_apply_diagnostics(closure, n_cells, F_init, F_init_strides, u, u_strides, F_pred, F_pred_strides,
                                cell_status, nullptr, nullptr);
}

dodo_status dodo_self_test(dodo_closure* closure, double* max_error_over_ntot) {
  const ThreadCall call;
  if (call.refused()) return DODO_ERROR_INVALID_ARGUMENT;
  const HandleInUse in_use(closure);
  return guarded(in_use.live(), [&] {
    const FloatingPointEnvironmentHeld default_floating_point;
    const double worst = checked_handle(closure, in_use)->closure->self_test();
    if (max_error_over_ntot) *max_error_over_ntot = worst;
  });
}

dodo_status dodo_get_counters(const dodo_closure* closure, dodo_counters* counters) {
  const ThreadCall call;
  if (call.refused()) return DODO_ERROR_INVALID_ARGUMENT;
  const HandleInUse in_use(closure);  // only its error text is written
  return guarded(in_use.live(), [&] {
    dodo_closure* handle = checked_handle(closure, in_use);
    if (!counters) throw Error(DODO_ERROR_INVALID_ARGUMENT, "counters is NULL");
    dodo::runtime::ClosureCounters c = handle->closure->counters();
    counters->cells = c.cells;
    counters->rejected = c.rejected;
    counters->no_crossing = c.no_crossing;
    counters->box3d_limited = c.box3d_limited;
    counters->network_nonfinite = c.network_nonfinite;
    counters->correction_limited = c.correction_limited;
  });
}

dodo_status dodo_reset_counters(dodo_closure* closure) {
  const ThreadCall call;
  if (call.refused()) return DODO_ERROR_INVALID_ARGUMENT;
  const HandleInUse in_use(closure);
  return guarded(in_use.live(), [&] { checked_handle(closure, in_use)->closure->reset_counters(); });
}

int dodo_has_model(const dodo_closure* closure) {
  const ThreadCall call;
  if (call.refused()) return 0;
  const HandleInUse in_use(closure);
  return in_use.live() && in_use.live()->closure->has_model() ? 1 : 0;
}

long dodo_get_metadata(const dodo_closure* closure, const char* key, char* buffer, size_t buffer_size) {
  const ThreadCall call;
  if (call.refused()) return -1;
  const HandleInUse in_use(closure);
  if (!in_use.live() || !key) return -1;
  // Compared in place: std::map::find(key) copied the key into a std::string, outside any
  // exception guard, so that a failed allocation ended the host in std::terminate (probe round
  // thirteen of the C side). A package holds a few dozen keys.
  const std::string_view wanted(key);
  for (const auto& [name, value] : in_use.live()->closure->metadata()) {
    if (name != wanted) continue;
    copy_text(value, buffer, buffer_size);
    return static_cast<long>(value.size());
  }
  return -1;
}

size_t dodo_last_error(const dodo_closure* closure, char* buffer, size_t buffer_size) {
  const ThreadCall call;
  if (calls_on_this_thread > 1) {  // nested: only this call's own refusal, which needs no lock
    const std::string_view text = nested_refusal ? std::string_view(nested_refusal) : std::string_view();
    copy_message(text, buffer, buffer_size);
    return text.size();
  }
  const HandleInUse in_use(closure);
  if (!in_use.live()) {  // no handle to hold a text: this thread's own last error
    const std::string_view text = thread_error_text();
    copy_message(text, buffer, buffer_size);
    return text.size();
  }
  std::lock_guard<std::mutex> lock(closure->error_mutex);
  copy_message(closure->last_error, buffer, buffer_size);
  return closure->last_error.size();
}

dodo_status dodo_closure_create_from_memory(const void* bytes, size_t size, const dodo_options* options,
                                            dodo_closure** closure, char* error_buffer, size_t error_buffer_size) {
  return create_handle(options, closure, error_buffer, error_buffer_size, [&](const dodo::runtime::ClosureOptions& settings) {
    // Size first: an empty package is empty whatever its pointer (a C++ std::vector or a Fortran
    // array read from an empty file may give NULL for it), one status and message in every language.
    if (size == 0) throw Error(DODO_ERROR_MODEL_FORMAT, "model in memory is empty (size 0)");
    if (!bytes) throw Error(DODO_ERROR_INVALID_ARGUMENT, "model bytes pointer is NULL (for a Box3D-only closure use dodo_closure_create with DODO_BOX3D_ONLY)");
    const std::string_view view(static_cast<const char*>(bytes), size);
    return std::make_unique<dodo::runtime::Closure>(dodo::runtime::ModelInMemory{view}, settings);
  });
}

// dodo_apply is this with no diagnostics.
dodo_status dodo_apply_diagnostics(dodo_closure* closure, size_t n_cells, const double* F_init,
                                   const ptrdiff_t* F_init_strides, const double* u, const ptrdiff_t* u_strides,
                                   double* F_pred, const ptrdiff_t* F_pred_strides, uint32_t* cell_status,
                                   double* growth_rate, double* uncertainty) {
  const ThreadCall call;
  if (call.refused()) return DODO_ERROR_INVALID_ARGUMENT;
  const HandleInUse in_use(closure);
  return guarded(in_use.live(), [&] {
    const FloatingPointEnvironmentHeld default_floating_point;
    dodo_closure* handle = checked_handle(closure, in_use);
    if (n_cells == 0) return;
    if (!F_init) throw Error(DODO_ERROR_INVALID_ARGUMENT, "F_init is NULL");
    if (!F_pred) throw Error(DODO_ERROR_INVALID_ARGUMENT, "F_pred is NULL");
    dodo::ConstCellArray input = cell_view(F_init, F_init_strides);
    dodo::ConstCellArray output_view = cell_view(F_pred, F_pred_strides);
    dodo::CellArray output{F_pred, output_view.cell_stride, output_view.species_stride, output_view.component_stride};
    dodo::ConstVelocityArray velocity;
    velocity.data = u;
    if (u && u_strides) {
      velocity.cell_stride = u_strides[0];
      velocity.component_stride = u_strides[1];
    }
    dodo::runtime::check_apply_layout(n_cells, input, velocity, output, cell_status);
    dodo::runtime::check_diagnostics_layout(n_cells, input, velocity, output, cell_status, growth_rate, uncertainty);
    dodo::runtime::CellDiagnostics diagnostics;
    diagnostics.growth_rate = growth_rate;
    diagnostics.uncertainty = uncertainty;
    handle->closure->apply(n_cells, input, velocity, output, cell_status, diagnostics);
  });
}

}  // extern "C"
