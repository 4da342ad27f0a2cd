/* Whether libdodo calls setenv while the host has a second thread (a thread that may be inside
 * getenv: glibc's setenv may move the environment array under it). setenv is interposed here; the
 * host starts an idle thread, then makes a closure with a model (ONNX Runtime's first load). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dodo/dodo.h>

static int calls_alone = 0, calls_with_threads = 0;

static int threads_in_process(void) {
  int n = 0;
  DIR* d = opendir("/proc/self/task");
  if (!d) return -1;
  for (struct dirent* e; (e = readdir(d)) != NULL;) n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

int setenv(const char* name, const char* value, int overwrite) {
  int (*real)(const char*, const char*, int) = (int (*)(const char*, const char*, int))dlsym(RTLD_NEXT, "setenv");
  if (threads_in_process() > 1) ++calls_with_threads; else ++calls_alone;
  return real(name, value, overwrite);
}

static pthread_mutex_t gate = PTHREAD_MUTEX_INITIALIZER;
static void* idle(void* unused) {
  (void)unused;
  pthread_mutex_lock(&gate);  /* waits until main is done */
  pthread_mutex_unlock(&gate);
  return NULL;
}

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  const char* at_main = getenv("ORT_DISABLE_TELEMETRY");
  char at_main_copy[16];
  snprintf(at_main_copy, sizeof at_main_copy, "%s", at_main ? at_main : "(unset)");
  pthread_mutex_lock(&gate);
  pthread_t thread;
  if (pthread_create(&thread, NULL, idle, NULL) != 0) return 2;
  dodo_closure* closure = NULL;
  char message[512] = "";
  const int status = dodo_closure_create(argv[1], NULL, &closure, message, sizeof message);
  pthread_mutex_unlock(&gate);
  pthread_join(thread, NULL);
  const char* now = getenv("ORT_DISABLE_TELEMETRY");
  printf("create %d; at main %s; after %s; setenv alone %d, with threads %d\n", status, at_main_copy,
         now ? now : "(unset)", calls_alone, calls_with_threads);
  if (status != DODO_OK) puts(message);
  dodo_closure_destroy(closure);
  return 0;
}
