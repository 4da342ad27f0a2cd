/* Example 1 (C): apply the Dodo closure to every cell of a hydro grid.
 *
 * The host keeps its neutrino moments the way many codes do, as a structure of arrays
 * moments[component][species][cell]; the strides tell Dodo so, and nothing is copied.
 *
 * Build:  cc grid_closure.c $(pkg-config --cflags --libs dodo) -lm -o grid_closure
 * Run:    ./grid_closure MODEL.onnx      (no argument: Box3D only) */
#include <dodo/dodo.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

enum { NX = 16, NY = 16, NZ = 8, NCELL = NX * NY * NZ };

/* Prints this thread's last libdodo error whole: its length first, then the text (the list of ONNX
 * Runtime libraries tried can pass 1 KiB; a fixed buffer of 512 bytes lost its end, the reason). */
static void print_error(const char* call, dodo_status status) {
  size_t length = dodo_last_error(NULL, NULL, 0);
  char* text = malloc(length + 1);
  if (text) dodo_last_error(NULL, text, length + 1);
  fprintf(stderr, "%s: %s: %s\n", call, dodo_status_name(status), text ? text : "(no memory for the message)");
  free(text);
}

int main(int argc, char** argv) {
  const char* model = argc > 1 ? argv[1] : NULL;
  static double moments[4][6][NCELL];   /* [t,x,y,z][species][cell], number densities in cm^-3 */
  static double velocity[NCELL][4];     /* fluid four-velocity per cell */
  static double asymptotic[4][6][NCELL];
  static uint32_t cell_status[NCELL];
  static double growth_rate[NCELL];     /* 1/s: is the instability fast against the hydro step? */

  /* A smooth toy field: electron neutrinos stream outward along x, antineutrinos inward. */
  for (int k = 0; k < NZ; ++k)
    for (int j = 0; j < NY; ++j)
      for (int i = 0; i < NX; ++i) {
        int c = i + NX * (j + NY * k);
        double x = (i + 0.5) / NX, y = (j + 0.5) / NY;
        for (int a = 0; a < 6; ++a) {
          double density = 1e32 * (0.4 + 0.1 * a + 0.3 * x * y);
          double flux_factor = 0.1 + 0.3 * x;
          double direction = (a == 3) ? -1.0 : 1.0;
          moments[0][a][c] = density;
          moments[1][a][c] = direction * flux_factor * density * cos(0.3 * a);
          moments[2][a][c] = flux_factor * density * sin(0.3 * a) * y;
          moments[3][a][c] = 0.0;
        }
        double vx = 0.1 * (x - 0.5), W = 1.0 / sqrt(1.0 - vx * vx);
        velocity[c][0] = W;
        velocity[c][1] = W * vx;
        velocity[c][2] = velocity[c][3] = 0.0;
      }

  dodo_options options;
  dodo_options_init(&options);
  options.threads = 2;
  options.run_self_test = model != NULL;
  dodo_closure* closure = NULL;
  dodo_status status = dodo_closure_create(model, &options, &closure, NULL, 0);
  if (status != DODO_OK) {
    print_error("dodo_closure_create", status);
    return 1;
  }

  /* Strides in elements: cell 1, species NCELL, component 6*NCELL. */
  const ptrdiff_t strides[3] = {1, NCELL, 6 * NCELL};
  status = dodo_apply_diagnostics(closure, NCELL, &moments[0][0][0], strides, &velocity[0][0], NULL,
                                  &asymptotic[0][0][0], strides, cell_status, growth_rate, NULL);
  if (status != DODO_OK) {
    print_error("dodo_apply_diagnostics", status);
    dodo_closure_destroy(closure);
    return 1;
  }

  /* The host's own check: nu_e number moved per cell, and total nu number conserved. */
  double moved = 0.0, violation = 0.0, fastest = 0.0;
  for (int c = 0; c < NCELL; ++c) {
    fastest = fmax(fastest, growth_rate[c]);
    double before = 0.0, after = 0.0;
    for (int f = 0; f < 3; ++f) {
      before += moments[0][f][c];
      after += asymptotic[0][f][c];
    }
    violation = fmax(violation, fabs(after - before) / before);
    moved += fabs(asymptotic[0][0][c] - moments[0][0][c]) / moments[0][0][c];
  }
  dodo_counters counters;
  dodo_get_counters(closure, &counters);
  printf("cells %llu, rejected %llu, stable %llu, correction limited %llu\n", (unsigned long long)counters.cells,
         (unsigned long long)counters.rejected, (unsigned long long)counters.no_crossing,
         (unsigned long long)counters.correction_limited);
  printf("mean |dn_nu_e|/n_nu_e %.4f, max nu-number violation %.2e, fastest growth %.3g /s\n", moved / NCELL,
         violation, fastest);
  dodo_closure_destroy(closure);
  return violation < 1e-12 && counters.cells == NCELL ? 0 : 1;
}
