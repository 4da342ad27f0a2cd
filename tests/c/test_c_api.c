/* Plain C99 test of the Dodo C API: includes every public C header, checks the error paths
 * (bad path, bad options, NULL arguments, use after destroy), conservation and realizability of
 * the output, strided layouts and thread-count independence.
 *
 * With three more arguments, also the per-cell growth rate and uncertainty (dodo_apply_diagnostics):
 * DIAGNOSTICS_MODEL.onnx has the optional outputs "uncertainty" and "log_growth_ratio",
 * MISDECLARED.onnx declares an output its graph lacks, and DUMP receives the cells and results
 * (raw doubles) for the Python parity test (tests/python/test_native_programs.py).
 *
 * Usage: test_c_api MODEL.onnx [DIAGNOSTICS_MODEL.onnx MISDECLARED.onnx DUMP]
 *        (prints "N passed, N failed"; exit status 0 when all pass) */
#include <dodo/dodo.h>

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int passed = 0, failed = 0;

#define CHECK(condition)                                                   \
  do {                                                                     \
    if (condition) {                                                       \
      ++passed;                                                            \
    } else {                                                               \
      ++failed;                                                            \
      fprintf(stderr, "FAILED %s:%d: %s\n", __FILE__, __LINE__, #condition); \
    }                                                                      \
  } while (0)

#define NCELL 200

/* Rest-frame cells with opposed nu_e / nubar_e fluxes (ELN crossings), densities ~ 1e32. */
static void make_cells(double F[][6][4], double u[][4], int n) {
  for (int c = 0; c < n; ++c) {
    double phase = 0.37 * c;
    for (int a = 0; a < 6; ++a) {
      double n_a = (0.3 + 0.1 * a + 0.2 * sin(phase + a)) * 1e32;
      double f = 0.1 + 0.3 * fabs(sin(1.3 * phase + 0.7 * a));
      double direction[3] = {cos(phase + a), sin(phase + a) * cos(0.5 * a), sin(phase + a) * sin(0.5 * a)};
      double sign = (a == 3) ? -1.0 : 1.0;
      F[c][a][0] = n_a;
      for (int i = 0; i < 3; ++i) F[c][a][1 + i] = sign * f * n_a * direction[i];
    }
    /* A gentle flow: v = 0.2 c along a direction that varies with c. */
    double v[3] = {0.2 * cos(0.1 * c), 0.2 * sin(0.1 * c), 0.0};
    double W = 1.0 / sqrt(1.0 - (v[0] * v[0] + v[1] * v[1]));
    u[c][0] = W;
    for (int i = 0; i < 3; ++i) u[c][1 + i] = W * v[i];
  }
}

static double comoving_total(double F[6][4], const double u[4]) {
  double total = 0.0;
  for (int a = 0; a < 6; ++a) total += u[0] * F[a][0] - u[1] * F[a][1] - u[2] * F[a][2] - u[3] * F[a][3];
  return total;
}

/* Largest violation of the flavour sums (any frame) in units of N_tot. */
static double flavour_sum_violation(double F[6][4], double G[6][4], const double u[4]) {
  double worst = 0.0;
  for (int s = 0; s < 2; ++s)
    for (int m = 0; m < 4; ++m) {
      double sum = 0.0;
      for (int f = 0; f < 3; ++f) sum += G[3 * s + f][m] - F[3 * s + f][m];
      if (fabs(sum) > worst) worst = fabs(sum);
    }
  return worst / comoving_total(F, u);
}

static void test_tables(void) {
  CHECK(strcmp(dodo_status_name(DODO_ERROR_FILE), "DODO_ERROR_FILE") == 0);
  CHECK(strlen(dodo_status_message(DODO_ERROR_MODEL_METADATA)) > 10);
  CHECK(strcmp(dodo_status_name((dodo_status)12345), "DODO_UNKNOWN_STATUS") == 0);
  CHECK(strcmp(dodo_cell_status_name(DODO_CELL_CORRECTION_LIMITED), "CORRECTION_LIMITED") == 0);
  CHECK(dodo_cell_status_name(0) == NULL);
  CHECK(dodo_api_version() == DODO_API_VERSION);
  CHECK(strlen(dodo_version()) >= 5);
}

static void test_create_errors(void) {
  dodo_closure* closure = (dodo_closure*)1; /* must be reset to NULL on failure */
  char message[256];
  dodo_status status = dodo_closure_create("/no/such/model.onnx", NULL, &closure, message, sizeof message);
  CHECK(status == DODO_ERROR_FILE);
  CHECK(closure == NULL);
  CHECK(strstr(message, "/no/such/model.onnx") != NULL);
  /* A path's control characters come back escaped: the message stays one line (round sixteen). */
  status = dodo_closure_create("/no/such\nmodel\t.onnx", NULL, &closure, message, sizeof message);
  CHECK(status == DODO_ERROR_FILE);
  CHECK(strstr(message, "\"/no/such\\x0amodel\\x09.onnx\"") != NULL);
  CHECK(strchr(message, '\n') == NULL && strchr(message, '\t') == NULL);
  /* Round seventeen: one escaping function for paths and messages; a path's escape, DEL and a byte
     that is not UTF-8 are escaped, a valid UTF-8 letter (e-acute) is kept, the text exact. */
  status = dodo_closure_create("/no/such\x1b\x7f\xff\xc3\xa9\r.onnx", NULL, &closure, message, sizeof message);
  CHECK(status == DODO_ERROR_FILE);
  CHECK(strcmp(message, "model file \"/no/such\\x1b\\x7f\\xff\xc3\xa9\\x0d.onnx\" does not exist") == 0);
  /* A message cut to a small buffer is cut before a character, not inside it (still UTF-8):
     "model file \"/no/such/" is 21 bytes, then the two bytes of e-acute. */
  {
    char cut[24];
    dodo_closure_create("/no/such/\xc3\xa9.onnx", NULL, &closure, cut, 23);
    CHECK(strcmp(cut, "model file \"/no/such/") == 0);
    CHECK(dodo_last_error(NULL, cut, 23) == strlen("model file \"/no/such/\xc3\xa9.onnx\" does not exist"));
    CHECK(strcmp(cut, "model file \"/no/such/") == 0);
    dodo_last_error(NULL, cut, 24);
    CHECK(strcmp(cut, "model file \"/no/such/\xc3\xa9") == 0);
  }

  dodo_options options;
  dodo_options_init(&options);
  options.threads = -3;
  status = dodo_closure_create(NULL, &options, &closure, message, sizeof message);
  CHECK(status == DODO_ERROR_INVALID_ARGUMENT && strstr(message, "threads") != NULL);
  options.threads = 0;
  options.z_method = "guesswork";
  status = dodo_closure_create(NULL, &options, &closure, message, sizeof message);
  CHECK(status == DODO_ERROR_INVALID_ARGUMENT && strstr(message, "guesswork") != NULL);
  CHECK(dodo_closure_create(NULL, NULL, NULL, NULL, 0) == DODO_ERROR_INVALID_ARGUMENT);
  /* A one-byte buffer still gets a terminated (empty) string. */
  char tiny[1] = {'x'};
  dodo_closure_create("/no/such/model.onnx", NULL, &closure, tiny, sizeof tiny);
  CHECK(tiny[0] == '\0');
  dodo_closure_destroy(NULL);
}

static void test_closure(const char* model_path) {
  static double F[NCELL][6][4], u[NCELL][4], F_pred[NCELL][6][4], F_two[NCELL][6][4];
  static double soa[4][6][NCELL], soa_out[4][6][NCELL];
  static uint32_t status[NCELL];
  make_cells(F, u, NCELL);

  char message[512];
  dodo_options options;
  dodo_options_init(&options);
  options.run_self_test = 1;
  dodo_closure* closure = NULL;
  dodo_status code = dodo_closure_create(model_path, &options, &closure, message, sizeof message);
  CHECK(code == DODO_OK);
  if (code != DODO_OK) {
    fprintf(stderr, "cannot create closure: %s\n", message);
    return;
  }
  CHECK(dodo_has_model(closure) == 1);

  CHECK(dodo_apply(closure, NCELL, &F[0][0][0], NULL, &u[0][0], NULL, &F_pred[0][0][0], NULL, status) == DODO_OK);
  double worst = 0.0, worst_margin = 0.0;
  for (int c = 0; c < NCELL; ++c) {
    CHECK((status[c] & DODO_CELL_REJECTED_MASK) == 0);
    double violation = flavour_sum_violation(F[c], F_pred[c], u[c]);
    if (violation > worst) worst = violation;
    /* Realizability is frame independent: n >= |F| in the lab too (future causal vector). */
    for (int a = 0; a < 6; ++a) {
      double flux = sqrt(F_pred[c][a][1] * F_pred[c][a][1] + F_pred[c][a][2] * F_pred[c][a][2] +
                         F_pred[c][a][3] * F_pred[c][a][3]);
      double margin = (F_pred[c][a][0] - flux) / comoving_total(F[c], u[c]);
      if (margin < worst_margin) worst_margin = margin;
    }
  }
  CHECK(worst < 1e-13);
  CHECK(worst_margin > -1e-12);

  /* Structure of arrays [component][species][cell]: strides in elements. */
  for (int c = 0; c < NCELL; ++c)
    for (int a = 0; a < 6; ++a)
      for (int m = 0; m < 4; ++m) soa[m][a][c] = F[c][a][m];
  const ptrdiff_t soa_strides[3] = {1, NCELL, 6 * NCELL};
  CHECK(dodo_apply(closure, NCELL, &soa[0][0][0], soa_strides, &u[0][0], NULL, &soa_out[0][0][0], soa_strides,
                   NULL) == DODO_OK);
  int same = 1;
  for (int c = 0; c < NCELL; ++c)
    for (int a = 0; a < 6; ++a)
      for (int m = 0; m < 4; ++m) same = same && soa_out[m][a][c] == F_pred[c][a][m];
  CHECK(same);

  /* Another handle with two worker threads and small chunks: identical numbers. */
  dodo_options threaded;
  dodo_options_init(&threaded);
  threaded.threads = 2;
  threaded.chunk_size = 16;
  dodo_closure* parallel = NULL;
  CHECK(dodo_closure_create(model_path, &threaded, &parallel, NULL, 0) == DODO_OK);
  CHECK(dodo_apply(parallel, NCELL, &F[0][0][0], NULL, &u[0][0], NULL, &F_two[0][0][0], NULL, NULL) == DODO_OK);
  dodo_closure* chunked = NULL;
  threaded.threads = 0;
  CHECK(dodo_closure_create(model_path, &threaded, &chunked, NULL, 0) == DODO_OK);
  static double F_one[NCELL][6][4];
  CHECK(dodo_apply(chunked, NCELL, &F[0][0][0], NULL, &u[0][0], NULL, &F_one[0][0][0], NULL, NULL) == DODO_OK);
  CHECK(memcmp(F_two, F_one, sizeof F_one) == 0);
  dodo_closure_destroy(chunked);
  dodo_closure_destroy(parallel);

  /* Self-test, counters, metadata. */
  double self_error = -1.0;
  CHECK(dodo_self_test(closure, &self_error) == DODO_OK && self_error >= 0.0 && self_error < 1e-5);
  dodo_counters counters;
  CHECK(dodo_get_counters(closure, &counters) == DODO_OK);
  CHECK(counters.cells >= 2 * NCELL);
  CHECK(dodo_reset_counters(closure) == DODO_OK);
  CHECK(dodo_get_counters(closure, &counters) == DODO_OK && counters.cells == 0);
  char head[32];
  CHECK(dodo_get_metadata(closure, "dodo.format_version", head, sizeof head) == 1 && strcmp(head, "1") == 0);
  CHECK(dodo_get_metadata(closure, "no.such.key", head, sizeof head) == -1);

  /* A NaN cell is flagged and returned finite; the call still succeeds. */
  F[0][1][0] = NAN;
  CHECK(dodo_apply(closure, 1, &F[0][0][0], NULL, &u[0][0], NULL, &F_pred[0][0][0], NULL, status) == DODO_OK);
  CHECK((status[0] & DODO_CELL_NONFINITE) != 0);
  CHECK(F_pred[0][1][0] == 0.0);

  /* Errors: status + last error; a success clears it. */
  CHECK(dodo_apply(closure, 3, NULL, NULL, NULL, NULL, &F_pred[0][0][0], NULL, NULL) == DODO_ERROR_INVALID_ARGUMENT);
  CHECK(dodo_last_error(closure, message, sizeof message) > 0 && strstr(message, "F_init") != NULL);
  CHECK(dodo_apply(closure, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL) == DODO_OK);
  CHECK(dodo_last_error(closure, message, sizeof message) == 0 && message[0] == '\0');

  dodo_closure_destroy(closure);
  /* Use after destroy and double destroy: refused, not dereferenced. */
  CHECK(dodo_apply(closure, 1, &F[1][0][0], NULL, NULL, NULL, &F_pred[1][0][0], NULL, NULL) ==
        DODO_ERROR_INVALID_ARGUMENT);
  dodo_closure_destroy(closure);
}

/* Growth rate and uncertainty: zeros on stable and rejected cells, the proxy and zero uncertainty
 * without the model outputs, the same F_pred as dodo_apply, and a file with the numbers for the
 * Python side to compare. */
static void test_diagnostics(const char* plain_model, const char* model, const char* misdeclared, const char* dump) {
  static double F[NCELL][6][4], u[NCELL][4], F_pred[NCELL][6][4], F_plain[NCELL][6][4];
  static double growth[NCELL], uncertainty[NCELL], proxy[NCELL], box_uncertainty[NCELL], plain_growth[NCELL],
      plain_uncertainty[NCELL];
  static uint32_t status[NCELL], plain_status[NCELL];
  make_cells(F, u, NCELL);
  for (int a = 0; a < 6; ++a) F[0][a][1] = F[0][a][2] = F[0][a][3] = 0.0; /* isotropic: stable */
  F[1][2][0] = NAN;                                                      /* rejected */
  F[2][4][0] = -F[2][4][0];                                              /* rejected */

  char message[512];
  dodo_closure *closure = NULL, *box = NULL, *plain = NULL;
  CHECK(dodo_closure_create(model, NULL, &closure, message, sizeof message) == DODO_OK);
  CHECK(dodo_closure_create(NULL, NULL, &box, NULL, 0) == DODO_OK);
  CHECK(dodo_closure_create(plain_model, NULL, &plain, NULL, 0) == DODO_OK);
  if (!closure || !box || !plain) {
    fprintf(stderr, "cannot create closures: %s\n", message);
    return;
  }
  CHECK(dodo_apply_diagnostics(closure, NCELL, &F[0][0][0], NULL, &u[0][0], NULL, &F_pred[0][0][0], NULL, status,
                               growth, uncertainty) == DODO_OK);
  CHECK(dodo_apply(closure, NCELL, &F[0][0][0], NULL, &u[0][0], NULL, &F_plain[0][0][0], NULL, plain_status) ==
        DODO_OK);
  CHECK(memcmp(F_pred, F_plain, sizeof F_pred) == 0 && memcmp(status, plain_status, sizeof status) == 0);
  CHECK(status[0] == DODO_CELL_NO_CROSSING && growth[0] == 0.0 && uncertainty[0] == 0.0);
  CHECK((status[1] & DODO_CELL_NONFINITE) && growth[1] == 0.0 && uncertainty[1] == 0.0);
  CHECK((status[2] & DODO_CELL_NEGATIVE_DENSITY) && growth[2] == 0.0 && uncertainty[2] == 0.0);

  /* Box3D alone: its proxy, no uncertainty. The learned rate differs from it, by a positive factor. */
  CHECK(dodo_apply_diagnostics(box, NCELL, &F[0][0][0], NULL, &u[0][0], NULL, &F_plain[0][0][0], NULL, NULL, proxy,
                               box_uncertainty) == DODO_OK);
  int box_zero = 1, positive_ratio = 1, differs = 0, spread = 0;
  for (int c = 3; c < NCELL; ++c) {
    box_zero = box_zero && box_uncertainty[c] == 0.0;
    if (status[c] & DODO_CELL_NO_CROSSING) {
      positive_ratio = positive_ratio && growth[c] == 0.0 && uncertainty[c] == 0.0;
      continue;
    }
    positive_ratio = positive_ratio && proxy[c] > 0.0 && growth[c] > 0.0;
    differs = differs || fabs(growth[c] / proxy[c] - 1.0) > 1e-3;
    spread = spread || uncertainty[c] > 0.0;
  }
  CHECK(box_zero && positive_ratio && differs && spread);

  /* A model without the optional outputs: the proxy, to rounding, and no uncertainty. */
  CHECK(dodo_apply_diagnostics(plain, NCELL, &F[0][0][0], NULL, &u[0][0], NULL, &F_plain[0][0][0], NULL, NULL,
                               plain_growth, plain_uncertainty) == DODO_OK);
  int proxy_kept = 1;
  for (int c = 0; c < NCELL; ++c)
    proxy_kept = proxy_kept && fabs(plain_growth[c] - proxy[c]) <= 1e-12 * proxy[c] && plain_uncertainty[c] == 0.0;
  CHECK(proxy_kept);

  /* Either output may be NULL; the other is unchanged. */
  static double growth_only[NCELL], uncertainty_only[NCELL];
  CHECK(dodo_apply_diagnostics(closure, NCELL, &F[0][0][0], NULL, &u[0][0], NULL, &F_plain[0][0][0], NULL, NULL,
                               growth_only, NULL) == DODO_OK);
  CHECK(dodo_apply_diagnostics(closure, NCELL, &F[0][0][0], NULL, &u[0][0], NULL, &F_plain[0][0][0], NULL, NULL, NULL,
                               uncertainty_only) == DODO_OK);
  CHECK(memcmp(growth_only, growth, sizeof growth) == 0 && memcmp(uncertainty_only, uncertainty, sizeof growth) == 0);
  CHECK(dodo_apply_diagnostics(closure, 3, NULL, NULL, NULL, NULL, &F_pred[0][0][0], NULL, NULL, growth, NULL) ==
        DODO_ERROR_INVALID_ARGUMENT);

  /* An output array overlapping another array is refused before anything is written. */
  CHECK(dodo_apply_diagnostics(closure, NCELL, &F[0][0][0], NULL, &u[0][0], NULL, &F_plain[0][0][0], NULL, NULL,
                               &F_plain[0][0][0], NULL) == DODO_ERROR_INVALID_ARGUMENT);
  CHECK(dodo_apply_diagnostics(closure, NCELL, &F[0][0][0], NULL, &u[0][0], NULL, &F_plain[0][0][0], NULL, NULL,
                               growth_only, growth_only + 1) == DODO_ERROR_INVALID_ARGUMENT);
  CHECK(dodo_last_error(closure, message, sizeof message) > 0 && strstr(message, "uncertainty overlaps") != NULL);
  CHECK(memcmp(growth_only, growth, sizeof growth) == 0);

  /* A package that declares an output its graph lacks is refused, naming the file. */
  dodo_closure* refused = (dodo_closure*)1;
  CHECK(dodo_closure_create(misdeclared, NULL, &refused, message, sizeof message) == DODO_ERROR_MODEL_FORMAT);
  CHECK(refused == NULL && strstr(message, misdeclared) != NULL && strstr(message, "dodo.outputs") != NULL);

  FILE* out = fopen(dump, "wb");
  CHECK(out != NULL);
  if (out) {
    size_t written = fwrite(F, sizeof F, 1, out) + fwrite(u, sizeof u, 1, out) + fwrite(growth, sizeof growth, 1, out) +
                     fwrite(uncertainty, sizeof uncertainty, 1, out) + fwrite(proxy, sizeof proxy, 1, out);
    CHECK(written == 5);
    CHECK(fclose(out) == 0);
  }
  dodo_closure_destroy(plain);
  dodo_closure_destroy(box);
  dodo_closure_destroy(closure);
}

/* Issue 11: the model argument (items 15, 21) and dodo_apply's array checks (item 10). */
static void test_round_two(void) {
  char message[512];
  dodo_options options;
  dodo_closure* closure = NULL;
  dodo_options_init(&options);
  CHECK(options.run_self_test == 1);
  CHECK(dodo_closure_create("", &options, &closure, message, sizeof message) == DODO_ERROR_INVALID_ARGUMENT);
  CHECK(closure == NULL && strstr(message, "empty model path") != NULL);
  CHECK(dodo_closure_create(DODO_BOX3D_ONLY, &options, &closure, message, sizeof message) == DODO_OK);
  CHECK(dodo_has_model(closure) == 0);
  CHECK(dodo_default_model_path() != NULL && strstr(dodo_default_model_path(), "qke_default.onnx") != NULL);

  double F[4][6][4], u[4][4], out[8][6][4];
  make_cells(F, u, 4);
  /* n_cells so large that the addresses wrap: refused, nothing written. */
  out[0][0][0] = 42.0;
  CHECK(dodo_apply(closure, (size_t)-1, &F[0][0][0], NULL, NULL, NULL, &out[0][0][0], NULL, NULL) ==
        DODO_ERROR_INVALID_ARGUMENT);
  CHECK(out[0][0][0] == 42.0);
  CHECK(dodo_last_error(closure, message, sizeof message) > 0 && strstr(message, "address space") != NULL);
  /* Zero species or component stride in F_pred: outputs would overwrite each other. */
  const ptrdiff_t zero_species[3] = {24, 0, 1}, zero_component[3] = {24, 4, 0};
  CHECK(dodo_apply(closure, 4, &F[0][0][0], NULL, NULL, NULL, &out[0][0][0], zero_species, NULL) ==
        DODO_ERROR_INVALID_ARGUMENT);
  CHECK(dodo_apply(closure, 4, &F[0][0][0], NULL, NULL, NULL, &out[0][0][0], zero_component, NULL) ==
        DODO_ERROR_INVALID_ARGUMENT);
  CHECK(dodo_last_error(closure, message, sizeof message) > 0 && strstr(message, "share memory") != NULL);
  /* F_pred half a cell after F_init: refused; exactly F_init: in place, same result as out of place. */
  double both[5][6][4];
  memcpy(both, F, sizeof F);
  CHECK(dodo_apply(closure, 4, &both[0][0][0], NULL, NULL, NULL, &both[0][3][0], NULL, NULL) ==
        DODO_ERROR_INVALID_ARGUMENT);
  CHECK(memcmp(both, F, sizeof F) == 0);
  CHECK(dodo_apply(closure, 4, &F[0][0][0], NULL, &u[0][0], NULL, &out[0][0][0], NULL, NULL) == DODO_OK);
  CHECK(dodo_apply(closure, 4, &both[0][0][0], NULL, &u[0][0], NULL, &both[0][0][0], NULL, NULL) == DODO_OK);
  CHECK(memcmp(both, out, sizeof F) == 0);
  dodo_closure_destroy(closure);
}

/* Round nine (outside probe): a NULL or destroyed handle had no message anywhere, and a thread
 * sharing a handle lost its failure's text to another thread's success. dodo_last_error(NULL)
 * is the calling thread's own last error. */
static dodo_closure* shared_handle;
static void* succeed_on_shared_handle(void* unused) {
  (void)unused;
  double F[1][6][4], u[1][4], out[1][6][4];
  make_cells(F, u, 1);
  return (void*)(size_t)(dodo_apply(shared_handle, 1, &F[0][0][0], NULL, NULL, NULL, &out[0][0][0], NULL, NULL) != DODO_OK);
}

static void test_round_nine(void) {
  char message[256];
  double F[1][6][4], u[1][4], out[1][6][4];
  make_cells(F, u, 1);
  CHECK(dodo_apply(NULL, 1, &F[0][0][0], NULL, NULL, NULL, &out[0][0][0], NULL, NULL) == DODO_ERROR_INVALID_ARGUMENT);
  CHECK(dodo_last_error(NULL, message, sizeof message) > 0 && strstr(message, "closure handle is NULL") != NULL);
  CHECK(dodo_closure_create(DODO_BOX3D_ONLY, NULL, &shared_handle, NULL, 0) == DODO_OK);
  CHECK(dodo_last_error(NULL, message, sizeof message) == 0 && message[0] == '\0');  /* a success clears it */
  /* This thread fails on the shared handle, another succeeds on it before this one reads. */
  CHECK(dodo_apply(shared_handle, 1, NULL, NULL, NULL, NULL, &out[0][0][0], NULL, NULL) == DODO_ERROR_INVALID_ARGUMENT);
  pthread_t other;
  void* other_failed = (void*)1;
  CHECK(pthread_create(&other, NULL, succeed_on_shared_handle, NULL) == 0 && pthread_join(other, &other_failed) == 0);
  CHECK(other_failed == NULL);
  CHECK(dodo_last_error(shared_handle, message, sizeof message) == 0);  /* the handle's: the other thread's success */
  CHECK(dodo_last_error(NULL, message, sizeof message) > 0 && strstr(message, "F_init is NULL") != NULL);
  dodo_closure* stale = shared_handle;
  dodo_closure_destroy(shared_handle);
  CHECK(dodo_apply(stale, 1, &F[0][0][0], NULL, NULL, NULL, &out[0][0][0], NULL, NULL) == DODO_ERROR_INVALID_ARGUMENT);
  CHECK(dodo_last_error(stale, message, sizeof message) > 0 && strstr(message, "not live") != NULL);
}

int main(int argc, char** argv) {
  if (argc != 2 && argc != 5) {
    fprintf(stderr, "usage: %s MODEL.onnx [DIAGNOSTICS_MODEL.onnx MISDECLARED.onnx DUMP]\n", argv[0]);
    return 2;
  }
  test_tables();
  test_create_errors();
  test_closure(argv[1]);
  if (argc == 5) test_diagnostics(argv[1], argv[2], argv[3], argv[4]);
  test_round_two();
  test_round_nine();
  printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
