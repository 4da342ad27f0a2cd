/* Counts malloc calls per dodo_apply / dodo_apply_diagnostics after warm-up, by interposing
 * malloc (glibc: the library's and ONNX Runtime's calls resolve to this one).
 *
 * Usage: count_allocations MODEL.onnx|- THREADS   ("-": Box3D only)
 * Prints "apply A diagnostics D" (mallocs per call, averaged over 10 calls of 4096 cells). */
#define _GNU_SOURCE
#include <dodo/dodo.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern void* __libc_malloc(size_t size);
static long allocations = 0;
void* malloc(size_t size) {
  __atomic_fetch_add(&allocations, 1, __ATOMIC_RELAXED);
  return __libc_malloc(size);
}

enum { NCELL = 4096, CALLS = 10 };
static double F[NCELL][6][4], F_pred[NCELL][6][4], growth[NCELL], uncertainty[NCELL];
static uint32_t status[NCELL];

static double per_call(dodo_closure* closure, int diagnostics) {
  for (int warm = 0; warm < 3; ++warm)
    diagnostics ? dodo_apply_diagnostics(closure, NCELL, &F[0][0][0], NULL, NULL, NULL, &F_pred[0][0][0], NULL, status,
                                         growth, uncertainty)
                : dodo_apply(closure, NCELL, &F[0][0][0], NULL, NULL, NULL, &F_pred[0][0][0], NULL, status);
  long before = __atomic_load_n(&allocations, __ATOMIC_RELAXED);
  for (int call = 0; call < CALLS; ++call)
    diagnostics ? dodo_apply_diagnostics(closure, NCELL, &F[0][0][0], NULL, NULL, NULL, &F_pred[0][0][0], NULL, status,
                                         growth, uncertainty)
                : dodo_apply(closure, NCELL, &F[0][0][0], NULL, NULL, NULL, &F_pred[0][0][0], NULL, status);
  return (double)(__atomic_load_n(&allocations, __ATOMIC_RELAXED) - before) / CALLS;
}

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s MODEL.onnx|- THREADS\n", argv[0]);
    return 2;
  }
  for (int c = 0; c < NCELL; ++c)
    for (int a = 0; a < 6; ++a) {
      F[c][a][0] = 1.0 + 0.1 * a + 0.05 * sin(c);
      F[c][a][1] = (a == 3 ? -0.3 : 0.3) * cos(0.1 * c);
      F[c][a][3] = 0.2 * sin(0.3 * c + a);
    }
  dodo_options options;
  dodo_options_init(&options);
  options.threads = atoi(argv[2]);
  dodo_closure* closure = NULL;
  char message[512];
  if (dodo_closure_create(strcmp(argv[1], "-") ? argv[1] : NULL, &options, &closure, message, sizeof message) !=
      DODO_OK) {
    fprintf(stderr, "%s\n", message);
    return 1;
  }
  const double plain = per_call(closure, 0), diagnostics = per_call(closure, 1);
  printf("apply %.1f diagnostics %.1f\n", plain, diagnostics);
  dodo_closure_destroy(closure);
  return 0;
}
