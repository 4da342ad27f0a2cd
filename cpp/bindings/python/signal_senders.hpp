// Which process sent a signal: Python's handlers are told the signal alone. Under MPI a SIGTERM
// from the launcher (the rank's parent: mpirun, orted, slurmstepd) means the whole job is being
// stopped (Ctrl-C on mpirun, another rank ended, scancel), one from anyone else (kill PID) this rank
// alone, which must then stop the others (dodo.qke.cli). Every stopped rank printed "terminated;
// stopping all N ranks" and called MPI_Abort again (scale-out round five).
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <csignal>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <signal.h>
#include <unistd.h>
#define DODO_SIGNAL_SENDERS 1
#endif

namespace dodo_python {

#ifdef DODO_SIGNAL_SENDERS
inline constexpr int kRecordedSignals = 65;
inline volatile std::sig_atomic_t signal_sender[kRecordedSignals];  // 0: none, or not sent by a process
inline struct sigaction handler_before[kRecordedSignals];

// Records the sender, then runs the handler it replaced (Python's, which sets the flag its Python
// handler is run by): async-signal-safe, a store and a call.
extern "C" inline void record_signal_sender(int signum, siginfo_t* info, void* context) {
  if (signum <= 0 || signum >= kRecordedSignals) return;
  // si_code <= 0: sent by a process (kill, sigqueue, tgkill); above 0 the kernel sent it.
  signal_sender[signum] = info != nullptr && info->si_code <= 0 ? static_cast<std::sig_atomic_t>(info->si_pid) : 0;
  const struct sigaction& before = handler_before[signum];
  if (before.sa_flags & SA_SIGINFO) {
    if (before.sa_sigaction != nullptr) before.sa_sigaction(signum, info, context);
  } else if (before.sa_handler != SIG_DFL && before.sa_handler != SIG_IGN && before.sa_handler != nullptr) {
    before.sa_handler(signum);
  }
}
#endif

inline void register_signal_senders(pybind11::module_& m) {
  m.def(
      "_record_signal_senders",
      [](const std::vector<int>& signums) {
        std::vector<int> wrapped;
#ifdef DODO_SIGNAL_SENDERS
        for (int signum : signums) {
          struct sigaction current {};
          if (signum <= 0 || signum >= kRecordedSignals || sigaction(signum, nullptr, &current) != 0) continue;
          if (!(current.sa_flags & SA_SIGINFO) && (current.sa_handler == SIG_DFL || current.sa_handler == SIG_IGN))
            continue;  // only a handler already installed (Python's) is wrapped: a default action stays
          if ((current.sa_flags & SA_SIGINFO) && current.sa_sigaction == record_signal_sender) {
            wrapped.push_back(signum);  // already wrapped
            continue;
          }
          handler_before[signum] = current;
          struct sigaction recording = current;
          recording.sa_flags |= SA_SIGINFO;
          recording.sa_sigaction = record_signal_sender;
          if (sigaction(signum, &recording, nullptr) == 0) wrapped.push_back(signum);
        }
#else
        (void)signums;
#endif
        return wrapped;
      },
      "Wraps the handlers of these signals (Python's, installed first) so that the pid of each one's sender "
      "is recorded; returns the signals wrapped. A later signal.signal() for a signal replaces the wrapper.");
  m.def(
      "_signal_sender",
      [](int signum) -> long {
#ifdef DODO_SIGNAL_SENDERS
        if (signum > 0 && signum < kRecordedSignals) return static_cast<long>(signal_sender[signum]);
#else
        (void)signum;
#endif
        return 0;
      },
      "The pid that sent the last delivery of this signal (0: none recorded, or the kernel sent it).");
}

}  // namespace dodo_python
