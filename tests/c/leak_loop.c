/* Create/apply/destroy loop of the C API, for valgrind memcheck (scripts/valgrind_leaks.sh):
 * every handle made (with a model and Box3D-only, also failed creations) is destroyed, so
 * "definitely lost" and "indirectly lost" must be 0 bytes.
 *
 * Usage: leak_loop MODEL.onnx [ITERATIONS]   (default 20) */
#include <dodo/dodo.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define NCELL 100

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: leak_loop MODEL.onnx [ITERATIONS]\n");
    return 2;
  }
  const int iterations = argc > 2 ? atoi(argv[2]) : 20;
  static double F[NCELL][6][4], out[NCELL][6][4], u[NCELL][4];
  static uint32_t status[NCELL];
  for (int c = 0; c < NCELL; ++c) {
    for (int a = 0; a < 6; ++a) {
      F[c][a][0] = 1.0 + 0.1 * a + 0.01 * c;
      F[c][a][3] = (a == 0 ? 0.5 : (a == 3 ? -0.5 : 0.1 * sin(c + a)));
    }
    if (c % 17 == 0) F[c][2][1] = NAN; /* a rejected cell */
    double v = 0.3 * sin(0.1 * c), W = 1.0 / sqrt(1.0 - v * v);
    u[c][0] = W;
    u[c][1] = W * v;
    u[c][2] = 0.0;
    u[c][3] = 0.0;
  }
  int failures = 0;
  char message[512];
  for (int i = 0; i < iterations; ++i) {
    dodo_options options;
    dodo_options_init(&options);
    options.threads = i % 3; /* 0, 1 and 2 workers */
    options.chunk_size = 32;
    options.run_self_test = i % 2;
    dodo_closure* closure = NULL;
    const char* path = (i % 4 == 3) ? NULL : argv[1];
    if (dodo_closure_create(path, &options, &closure, message, sizeof message) != DODO_OK) {
      fprintf(stderr, "create failed: %s\n", message);
      ++failures;
      continue;
    }
    if (dodo_apply(closure, NCELL, &F[0][0][0], NULL, &u[0][0], NULL, &out[0][0][0], NULL, status) != DODO_OK) ++failures;
    if (dodo_apply(closure, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL) != DODO_OK) ++failures;
    /* An error path records a message on the handle. */
    if (dodo_apply(closure, 3, NULL, NULL, NULL, NULL, &out[0][0][0], NULL, NULL) == DODO_OK) ++failures;
    dodo_last_error(closure, message, sizeof message);
    dodo_closure_destroy(closure);
    dodo_closure_destroy(closure); /* second destroy: a no-op */
    /* Failed creations must not leak either. */
    if (dodo_closure_create("/nonexistent/model.onnx", NULL, &closure, message, sizeof message) == DODO_OK) ++failures;
    options.threads = -1;
    if (dodo_closure_create(NULL, &options, &closure, message, sizeof message) == DODO_OK) ++failures;
  }
  printf("leak_loop: %d iterations, %d failures\n", iterations, failures);
  return failures == 0 ? 0 : 1;
}
