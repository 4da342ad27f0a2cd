/* An option value the library does not know (a z_method typo, a Lebedev order it lacks) given
 * with a model and without one: the status and text of each. */
#include <dodo/dodo.h>
#include <stdio.h>
static void attempt(const char* model, const char* z_method, int lebedev_order) {
  dodo_options options;
  dodo_options_init(&options);
  options.z_method = z_method;
  options.lebedev_order = lebedev_order;
  dodo_closure* closure = NULL;
  char message[600] = "";
  const int status = dodo_closure_create(model, &options, &closure, message, sizeof message);
  printf("%s|%s\n", dodo_status_name((dodo_status)status), message);
  dodo_closure_destroy(closure);
}
int main(int argc, char** argv) {
  if (argc < 2) return 2;
  for (int m = 0; m < 2; ++m) {
    const char* model = m ? argv[1] : DODO_BOX3D_ONLY;
    attempt(model, "Exact", 0);
    attempt(model, NULL, 5);
  }
  return 0;
}
