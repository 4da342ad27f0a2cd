/* Outside probe, original findings round three (test_probe_original_findings_round3.py): a host whose
 * fourth thread (not main) forks while two threads loop in dodo_apply on one handle and a third creates
 * and destroys handles with the model. Each child applies on the parent's handle, creates its own,
 * forks a grandchild that applies on both and leaves with exit(). Prints "forks N failures F". */
#define _GNU_SOURCE
#include <dodo/dodo.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
enum { N = 600 };
static double F[N][6][4], ref[N][6][4];
static dodo_closure* h;
static const char* model;
static atomic_int stop;
static void fill(void) {
  for (int c = 0; c < N; ++c)
    for (int a = 0; a < 6; ++a) { F[c][a][0] = 1 + 0.1 * a + 0.001 * c; F[c][a][1] = F[c][a][2] = 0; F[c][a][3] = a == 3 ? -0.4 : 0.3; }
}
static int same_as_ref(dodo_closure* c) {
  static double out[N][6][4];
  if (dodo_apply(c, N, &F[0][0][0], NULL, NULL, NULL, &out[0][0][0], NULL, NULL) != DODO_OK) return 0;
  return memcmp(out, ref, sizeof out) == 0;
}
static void* applier(void* arg) {
  (void)arg;
  static _Thread_local double out[N][6][4];
  while (!atomic_load(&stop)) dodo_apply(h, N, &F[0][0][0], NULL, NULL, NULL, &out[0][0][0], NULL, NULL);
  return NULL;
}
static void* creator(void* arg) {
  (void)arg;
  while (!atomic_load(&stop)) {
    dodo_closure* c = NULL; char err[256];
    if (dodo_closure_create(model, NULL, &c, err, sizeof err) == DODO_OK) dodo_closure_destroy(c);
  }
  return NULL;
}
static int child_work(void) {
  alarm(120);
  int ok = same_as_ref(h);
  dodo_options o; dodo_options_init(&o); o.threads = 2;
  dodo_closure* c = NULL; char err[256];
  ok = ok && dodo_closure_create(model, &o, &c, err, sizeof err) == DODO_OK && same_as_ref(c);
  pid_t g = fork();
  if (g == 0) { alarm(120); exit(same_as_ref(c) && same_as_ref(h) ? 0 : 3); }
  int st = 0; waitpid(g, &st, 0);
  ok = ok && WIFEXITED(st) && WEXITSTATUS(st) == 0;
  dodo_closure_destroy(c);
  return ok;
}
static int forks, failures;
static void* forker(void* arg) {
  (void)arg;
  for (int i = 0; i < forks; ++i) {
    usleep(3000);
    pid_t p = fork();
    if (p == 0) exit(child_work() ? 0 : 2);
    int st = 0; waitpid(p, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) { ++failures; fprintf(stderr, "fork %d: status %d\n", i, st); }
  }
  return NULL;
}
int main(int argc, char** argv) {
  if (argc < 3) return 2;
  model = argv[1]; forks = atoi(argv[2]);
  fill();
  dodo_options o; dodo_options_init(&o); o.threads = 2; o.chunk_size = 64;
  char err[512];
  if (dodo_closure_create(model, &o, &h, err, sizeof err) != DODO_OK) { printf("create %s\n", err); return 1; }
  static double out[N][6][4];
  dodo_apply(h, N, &F[0][0][0], NULL, NULL, NULL, &ref[0][0][0], NULL, NULL);
  (void)out;
  pthread_t a1, a2, cr, fk;
  pthread_create(&a1, NULL, applier, NULL); pthread_create(&a2, NULL, applier, NULL); pthread_create(&cr, NULL, creator, NULL);
  pthread_create(&fk, NULL, forker, NULL);   /* forks from a thread that is not main */
  pthread_join(fk, NULL);
  atomic_store(&stop, 1);
  pthread_join(a1, NULL); pthread_join(a2, NULL); pthread_join(cr, NULL);
  dodo_closure_destroy(h);
  printf("forks %d failures %d\n", forks, failures);
  return failures != 0;
}
