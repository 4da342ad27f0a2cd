// Room on the stack for a thread that has little (outside probe, C round fifty). A host thread of
// a small stack (OMP_STACKSIZE=32K, pthread_attr_setstacksize of 64 KiB) and libdodo's own workers
// under a small `ulimit -s` (glibc's default thread stack) died of SIGSEGV inside libdodo: Box3D's
// blocks take some 51 KiB below dodo_apply, the native network 54 KiB, ONNX Runtime's session
// creation and evaluation some 92 KiB (the 2-core AMD EPYC, gcc 12, onnxruntime 1.32). Where the
// thread has less than kStackWanted left, the work runs on a mapping of kOwnStackBytes (a guard
// page below it) by swapcontext: on the same thread (its thread-local state, its signal mask and
// cancellation state as they were), and back. A thread with room pays one comparison. Work on a
// stack that is not the thread's (a fiber's, a coroutine's, sigaltstack's) is left where it is:
// its room is unknown.
#pragma once
#include <pthread.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>

namespace dodo {

inline constexpr std::size_t kStackWanted = 160 * 1024;
inline constexpr std::size_t kOwnStackBytes = 512 * 1024;

struct ThreadStackBounds {
  std::uintptr_t low = 0, high = 0;  // [low, high): the thread's stack, or nothing known
  bool asked = false;
};
inline thread_local ThreadStackBounds thread_stack_bounds;  // trivially destructible: nothing registered

// True when the caller runs on its thread's own stack with less than kStackWanted of it left.
// The bounds are asked once a thread (pthread_getattr_np; none known where it fails).
inline bool stack_is_short() noexcept {
  ThreadStackBounds& bounds = thread_stack_bounds;
  if (!bounds.asked) {
    bounds.asked = true;
    pthread_attr_t attributes;
    if (::pthread_getattr_np(::pthread_self(), &attributes) == 0) {
      void* address = nullptr;
      std::size_t size = 0;
      if (::pthread_attr_getstack(&attributes, &address, &size) == 0 && address && size) {
        bounds.low = reinterpret_cast<std::uintptr_t>(address);
        bounds.high = bounds.low + size;
      }
      ::pthread_attr_destroy(&attributes);
    }
  }
  const auto here = reinterpret_cast<std::uintptr_t>(__builtin_frame_address(0));
  if (bounds.high == 0 || here <= bounds.low || here >= bounds.high) return false;
  return here - bounds.low < kStackWanted;
}

inline std::size_t own_stack_mapped_bytes() noexcept {
  return kOwnStackBytes + static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

// A stack of kOwnStackBytes above a guard page (own_stack_mapped_bytes() in all); nullptr where
// it cannot be mapped. Free it with unmap_own_stack.
inline void* map_own_stack() noexcept {
  const std::size_t mapped = own_stack_mapped_bytes();
  void* memory = ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (memory == MAP_FAILED) return nullptr;
  if (::mprotect(memory, mapped - kOwnStackBytes, PROT_NONE) != 0) {  // an overflow faults here
    ::munmap(memory, mapped);
    return nullptr;
  }
  return memory;
}

inline void unmap_own_stack(void* memory) noexcept {
  if (memory) ::munmap(memory, own_stack_mapped_bytes());
}

struct CallOnOwnStack {
  void (*run)(void*);
  void* argument;
};

inline void call_on_own_stack(unsigned high, unsigned low) {
  const auto* call = reinterpret_cast<const CallOnOwnStack*>((static_cast<std::uintptr_t>(high) << 32) | low);
  call->run(call->argument);  // must not throw: nothing above this frame catches
}

// Runs run(argument) on `stack` (from map_own_stack) and returns when it has; false when the
// switch could not be made (run not called).
inline bool run_on_stack(void* stack, void (*run)(void*), void* argument) noexcept {
  CallOnOwnStack call{run, argument};
  ucontext_t caller, callee;
  if (::getcontext(&callee) != 0) return false;
  callee.uc_stack.ss_sp = static_cast<char*>(stack) + (own_stack_mapped_bytes() - kOwnStackBytes);
  callee.uc_stack.ss_size = kOwnStackBytes;
  callee.uc_link = &caller;
  const auto address = reinterpret_cast<std::uintptr_t>(&call);
  ::makecontext(&callee, reinterpret_cast<void (*)()>(&call_on_own_stack), 2, static_cast<unsigned>(address >> 32),
                static_cast<unsigned>(address & 0xffffffffu));
  return ::swapcontext(&caller, &callee) == 0;
}

// Runs `function()` here, or, where this thread's stack is short, on a stack mapped for the call
// (where none can be mapped: here, as before). For a thread's whole body (libdodo's workers).
template <typename Function>
void run_with_room(Function& function) {
  if (!stack_is_short()) {
    function();
    return;
  }
  void* stack = map_own_stack();
  if (!stack || !run_on_stack(stack, [](void* f) { (*static_cast<Function*>(f))(); }, &function)) function();
  unmap_own_stack(stack);
}

}  // namespace dodo
