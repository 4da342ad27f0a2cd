"""Outside probe of the C, C++ and Fortran interfaces, round fifteen (docs/reliability_cpp.md,
"Round fifteen"). Each test failed on the code as it was before its fix, then passed."""
from __future__ import annotations

import os

import pytest

from capi_host import CROSSING_CELLS, compile_host, default_model, needs_runtime, run_host


# --- a descendant given the process id of the ended process whose workers it inherited ----------

PID_REUSE = r"""
#define _GNU_SOURCE
#include <dodo/dodo.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

enum { N = 64 };
static double F[N][6][4], expected[N][6][4], got[N][6][4];
""" + CROSSING_CELLS + r"""

static int apply(dodo_closure* closure, double (*out)[6][4]) {
  return dodo_apply(closure, N, &F[0][0][0], NULL, NULL, NULL, &out[0][0][0], NULL, NULL);
}

/* The next fork()'s process id, through /proc/sys/kernel/ns_last_pid (root). */
static int next_pid_is(pid_t pid) {
  int fd = open("/proc/sys/kernel/ns_last_pid", O_WRONLY);
  if (fd < 0) return -1;
  char text[32];
  int length = snprintf(text, sizeof text, "%d", (int)pid - 1);
  int ok = write(fd, text, (size_t)length) == length;
  close(fd);
  return ok ? 0 : -1;
}

int main(int argc, char** argv) {
  if (argc != 2) return 8;
  fill_crossing_cells(F, N, 0.01);
  prctl(PR_SET_CHILD_SUBREAPER, 1);  /* the orphaned child comes back to this process */
  int report[2];
  if (pipe(report)) return 9;
  pid_t parent = fork();
  if (parent == 0) {  /* P: makes a closure with workers, uses it, forks C and ends */
    parent = getpid();
    dodo_options options;
    dodo_options_init(&options);
    options.threads = 3;
    options.chunk_size = 8; /* 8 chunks: the workers take part */
    dodo_closure* closure = NULL;
    char message[512];
    if (dodo_closure_create(argv[1], &options, &closure, message, sizeof message)) {
      dprintf(report[1], "create: %s\n", message);
      _exit(1);
    }
    if (apply(closure, expected)) _exit(2);
    if (fork() == 0) {  /* C: never calls the closure; once P has ended, forks G with P's id */
      while (kill(parent, 0) == 0 || errno != ESRCH) usleep(1000);  /* P ended and reaped */
      for (int attempt = 0; attempt < 100; ++attempt) {
        if (next_pid_is(parent)) {
          dprintf(report[1], "ns_last_pid is not writable\n");
          _exit(0);
        }
        pid_t grandchild = fork();
        if (grandchild == 0) {  /* G */
          if (getpid() != parent) _exit(100);  /* another process took the id first: again */
          alarm(60);  /* a wait for ever ends here, not in the test's timeout */
          if (apply(closure, got)) _exit(3);
          _exit(memcmp(got, expected, sizeof got) == 0 ? 0 : 4);
        }
        int status;
        waitpid(grandchild, &status, 0);
        if (WIFEXITED(status) && WEXITSTATUS(status) == 100) continue;
        if (WIFSIGNALED(status))
          dprintf(report[1], "signal %d%s\n", WTERMSIG(status), WTERMSIG(status) == SIGALRM ? " (waited for ever)" : "");
        else
          dprintf(report[1], "exit %d\n", WEXITSTATUS(status));
        _exit(0);
      }
      dprintf(report[1], "the id was always taken\n");
      _exit(0);
    }
    _exit(0);
  }
  close(report[1]);
  int status;
  waitpid(parent, &status, 0);  /* P reaped: its id is free */
  char text[256];
  ssize_t n;
  while ((n = read(report[0], text, sizeof text - 1)) > 0) {
    text[n] = '\0';
    fputs(text, stdout);
  }
  while (wait(&status) > 0) {
  }
  return 0;
}
"""


@needs_runtime
@pytest.mark.parametrize("model", ["box3d", "default"])
def test_a_descendant_given_the_id_of_the_ended_process_whose_workers_it_inherited_does_not_wait_for_ever(
        tmp_path, model):
    """The closure's workers and workspaces were tagged with the id of the process that made
    them, and a process took them for its own when its id matched. Ids are reused: P makes a
    closure with 3 workers and uses it, forks C and ends (a double-forking daemon, a launcher);
    C never calls the closure and forks G, which the system gives P's old id. G's first batch
    took P's workers, which do not exist in G, as its own and waited for ever for them (killed
    by its 60 s alarm; Box3D alone and the default model). Made deterministic by setting the
    next id through /proc/sys/kernel/ns_last_pid (root only; skipped otherwise). Now a process
    is its id together with its count of forks (a pthread_atfork child handler), which grows
    along every line of descent: G starts its own workers and gets P's results bit for bit."""
    if not os.access("/proc/sys/kernel/ns_last_pid", os.W_OK):
        pytest.skip("needs a writable /proc/sys/kernel/ns_last_pid (root)")
    program = compile_host(tmp_path, "pid_reuse", PID_REUSE)
    lines = run_host(program, "box3d" if model == "box3d" else default_model(), timeout=240)
    if lines in (["ns_last_pid is not writable"], ["the id was always taken"]):
        pytest.skip(lines[0])
    assert lines == ["exit 0"], lines


# --- calls made after the calling thread's thread_local objects are destroyed ----------------------

EXIT_CALLS = r"""
#include <dodo/dodo.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { N = 16 };
static dodo_closure* closure;
static double F[N][6][4], expected[N][6][4];
""" + CROSSING_CELLS + r"""
static pthread_key_t key;

/* A call made after the calling thread's thread_local objects are destroyed. */
static void call(const char* where) {
  double got[N][6][4];
  dodo_counters counters;
  int applied = dodo_apply(closure, N, &F[0][0][0], NULL, NULL, NULL, &got[0][0][0], NULL, NULL);
  int counted = dodo_get_counters(closure, &counters);
  int refused = dodo_apply(closure, (size_t)-1, &F[0][0][0], NULL, NULL, NULL, &got[0][0][0], NULL, NULL);
  char text[64] = "";
  size_t length = dodo_last_error(NULL, text, sizeof text);
  printf("%s: apply %d same %d counters %d refused %d message %zu [%.20s]\n", where, applied,
         memcmp(got, expected, sizeof got) == 0, counted, refused, length, text);
  fflush(stdout);
}

static void key_destructor(void* value) { call((const char*)value); }
static void at_exit(void) {
  call("atexit");
  dodo_closure_destroy(closure);
}

static void* thread_body(void* unused) {
  (void)unused;
  double got[N][6][4];
  dodo_apply(closure, (size_t)-1, &F[0][0][0], NULL, NULL, NULL, &got[0][0][0], NULL, NULL);  /* a long message */
  dodo_apply(closure, N, &F[0][0][0], NULL, NULL, NULL, &got[0][0][0], NULL, NULL);
  pthread_setspecific(key, "thread key destructor");  /* runs after the thread's thread_local destructors */
  return NULL;
}

int main(int argc, char** argv) {
  if (argc != 2) return 8;
  fill_crossing_cells(F, N, 0.01);
  char message[512];
  if (dodo_closure_create(argv[1], NULL, &closure, message, sizeof message)) {
    printf("create: %s\n", message);
    return 1;
  }
  if (dodo_apply(closure, N, &F[0][0][0], NULL, NULL, NULL, &expected[0][0][0], NULL, NULL)) return 2;
  pthread_key_create(&key, key_destructor);
  pthread_t thread;
  pthread_create(&thread, NULL, thread_body, NULL);
  pthread_join(thread, NULL);
  atexit(at_exit);
  double got[N][6][4];
  dodo_apply(closure, (size_t)-1, &F[0][0][0], NULL, NULL, NULL, &got[0][0][0], NULL, NULL);  /* a long message */
  return 0;  /* exit(): this thread's thread_local objects are destroyed, then at_exit runs */
}
"""


@needs_runtime
@pytest.mark.parametrize("model", ["box3d", "default"])
def test_calls_from_an_atexit_handler_or_a_thread_key_destructor_neither_corrupt_the_heap_nor_abort(
        tmp_path, model):
    """exit() destroys the main thread's thread_local objects before it runs the atexit handlers
    and static destructors, and a thread's are destroyed before its pthread key destructors run.
    libdodo kept two there: Box3D's angular scratch (box3d.cpp) and the thread's last-error text
    (capi.cpp). A dodo_apply from an atexit handler (a host's static object flushing a last step,
    a C++ static dodo::Closure user) wrote into the freed scratch, and any call after a failure
    with a long message wrote into the freed text: heap corruption, "free(): invalid pointer" /
    "malloc(): unaligned tcache chunk detected", SIGABRT (Box3D alone and the default model; valgrind
    names the writes). dodo.h promises that nothing aborts and allows a destroy during exit. Now
    each sits behind a trivially destructible flag: after destruction Box3D takes a scratch of its
    own and the text goes to a fixed buffer, so the calls give the results of main bit for bit and
    the refusal's message."""
    program = compile_host(tmp_path, "exit_calls", EXIT_CALLS)
    lines = run_host(program, "box3d" if model == "box3d" else default_model(), timeout=240)
    tail = "apply 0 same 1 counters 0 refused 1 message 135 [F_init with 18446744]"
    assert lines == [f"thread key destructor: {tail}", f"atexit: {tail}"], lines


# --- pthread_cancel of a host thread inside a call ---------------------------------------------------

CANCEL = r"""
#define _GNU_SOURCE
#include <dodo/dodo.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { N = 4000 };
static double F[N][6][4], expected[N][6][4], got[N][6][4];
""" + CROSSING_CELLS + r"""
static dodo_closure* closure;
static long calls;

/* Host threads that spend their time inside libdodo; pthread_testcancel is the host's own
 * cancellation point between calls. */
static void* applying(void* unused) {
  (void)unused;
  static double out[N][6][4];
  for (;;) {
    dodo_apply(closure, N, &F[0][0][0], NULL, NULL, NULL, &out[0][0][0], NULL, NULL);
    __atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED);
    pthread_testcancel();
  }
  return NULL;
}

static void* creating(void* model) {
  dodo_options options;
  dodo_options_init(&options);
  options.threads = 2;
  for (;;) {
    dodo_closure* other = NULL;
    char message[256];
    dodo_closure_create((const char*)model, &options, &other, message, sizeof message);
    dodo_closure_destroy(other);
    __atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED);
    pthread_testcancel();
  }
  return NULL;
}

int main(int argc, char** argv) {
  if (argc != 3) return 8;
  fill_crossing_cells(F, N, 0.001);
  dodo_options options;
  dodo_options_init(&options);
  options.threads = 2;
  options.chunk_size = 64; /* the caller waits for the workers: a cancellation point */
  char message[512];
  if (dodo_closure_create(argv[1], &options, &closure, message, sizeof message)) {
    printf("create: %s\n", message);
    return 1;
  }
  if (dodo_apply(closure, N, &F[0][0][0], NULL, NULL, NULL, &expected[0][0][0], NULL, NULL)) return 2;
  int cancelled = 0;
  for (int k = 0; k < 20; ++k) {
    pthread_t thread;
    __atomic_store_n(&calls, 0, __ATOMIC_RELAXED);
    if (strcmp(argv[2], "apply") == 0)
      pthread_create(&thread, NULL, applying, NULL);
    else
      pthread_create(&thread, NULL, creating, argv[1]);
    while (__atomic_load_n(&calls, __ATOMIC_RELAXED) < 2) usleep(100);
    usleep(500 * (unsigned)(k % 5));
    pthread_cancel(thread);
    void* result = NULL;
    pthread_join(thread, &result);
    cancelled += result == PTHREAD_CANCELED;
    memset(got, 0, sizeof got);
    if (dodo_apply(closure, N, &F[0][0][0], NULL, NULL, NULL, &got[0][0][0], NULL, NULL) ||
        memcmp(got, expected, sizeof got) != 0) {
      printf("the handle after cancellation %d: wrong\n", k);
      return 3;
    }
  }
  printf("cancelled %d of 20, handle intact\n", cancelled);
  dodo_closure_destroy(closure);
  return 0;
}
"""


@needs_runtime
@pytest.mark.parametrize("model", ["box3d", "default"])
@pytest.mark.parametrize("work", ["apply", "create"])
def test_a_host_thread_cancelled_inside_a_call_ends_cleanly_and_leaves_the_handle_intact(tmp_path, model, work):
    """pthread_cancel of a host thread while it was inside dodo_apply (the caller waits for the
    workers on a condition variable: a cancellation point) or inside dodo_closure_create /
    dodo_closure_destroy (the model file's read, the workers' join) unwound the thread through
    libdodo: the C API's exception guard caught glibc's forced unwinding without rethrowing it,
    "FATAL: exception not rethrown", or it met a noexcept destructor, "terminate called without an
    active exception": SIGABRT or SIGSEGV (Box3D alone and the default model). Now every call holds
    cancellation off and the thread is cancelled at its own next cancellation point after the
    call: 20 of 20 threads end cancelled, and the shared handle gives its results bit for bit."""
    program = compile_host(tmp_path, "cancel", CANCEL)
    lines = run_host(program, "box3d" if model == "box3d" else default_model(), work, timeout=280)
    assert lines == ["cancelled 20 of 20, handle intact"], lines
