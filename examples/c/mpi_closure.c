/* Example 4 (C + MPI): one closure per rank, the model read from disk by rank 0 only.
 *
 * A code with 10^4 ranks must not have every rank open the same file: rank 0 reads the model
 * package, MPI_Bcast sends its bytes, and every rank creates its closure from memory with
 * dodo_closure_create_from_memory (the same checks as a file: digest, metadata, self-test).
 *
 * Threads per rank: the cores of a node divided among the ranks on that node (1 when a rank
 * runs on every core), and never more than the cores the rank is bound to (mpirun --bind-to core,
 * srun --cpus-per-task: the rank's CPU affinity, where the system tells it). Devices: with an onnxruntime-gpu library, pass "cuda" and each rank
 * uses device (node-local rank mod DODO_GPUS_PER_NODE, default 1).
 *
 * Build:  mpicc mpi_closure.c $(pkg-config --cflags --libs dodo) -lm -o mpi_closure
 * Run:    mpirun -n 4 ./mpi_closure MODEL.onnx [cuda] */
#define _POSIX_C_SOURCE 200809L /* sysconf */
#if defined(__linux__)
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include <sched.h>
#endif
#include <dodo/dodo.h>
#include <mpi.h>

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum { NCELL = 4096 };

/* A failed call's error, printed once for the job (collective: every rank calls it, failed or not).
 * Rank 0 names every rank whose error is its own (the same status and text: a file that is not a
 * model package, "cuda" without a CUDA provider on any node) in one line; a rank whose error differs
 * prints its own. Each rank printed its line before: N copies of one error on N ranks. The text is
 * this thread's last libdodo error whole (the list of ONNX Runtime libraries tried can pass 1 KiB). */
static void report_error(int rank, int size, const char* call, int failed, dodo_status status) {
  char* text = NULL;
  if (failed) {
    size_t length = dodo_last_error(NULL, NULL, 0);
    text = malloc(length + 1);
    if (text) dodo_last_error(NULL, text, length + 1);
  }
  const char* shown = text ? text : "(no memory for the message)";
  unsigned long long digest = 14695981039346656037ull; /* FNV-1a of the text: equal errors, equal digests */
  for (const char* c = shown; *c; ++c) digest = (digest ^ (unsigned char)*c) * 1099511628211ull;
  unsigned long long first[3] = {(unsigned long long)failed, (unsigned long long)status, digest};
  MPI_Bcast(first, 3, MPI_UNSIGNED_LONG_LONG, 0, MPI_COMM_WORLD); /* rank 0's error, to compare with */
  int alike = failed && first[0] && first[1] == (unsigned long long)status && first[2] == digest, alike_ranks = 0;
  MPI_Reduce(&alike, &alike_ranks, 1, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
  if (rank == 0 && failed) {
    char who[64];
    if (size > 1 && alike_ranks == size)
      snprintf(who, sizeof who, "all %d ranks", size);
    else if (alike_ranks > 1)
      snprintf(who, sizeof who, "rank 0 and %d other rank%s", alike_ranks - 1, alike_ranks == 2 ? "" : "s");
    else
      snprintf(who, sizeof who, "rank 0");
    fprintf(stderr, "%s: %s: %s: %s\n", who, call, dodo_status_name(status), shown);
  } else if (failed && !alike) {
    fprintf(stderr, "rank %d: %s: %s: %s\n", rank, call, dodo_status_name(status), shown);
  }
  free(text);
}

/* Rank 0: the file's bytes (malloc'ed) and their count, or a negative count on failure: -1 the
 * file cannot be read, -2 it is larger than any model package (DODO_MAX_MODEL_FILE_BYTES; its size
 * in *file_size). Only a regular file is read: fopen on a FIFO waits for a writer, and rank 0 blocked
 * there while every other rank waited in MPI_Bcast (a hang of the whole job). O_NONBLOCK makes the
 * open return at once; fstat then refuses anything but a regular file. A file above the bound (a
 * data file given by mistake) is not read: every rank received it whole, up to 2 GiB each, before
 * libdodo refused it, and one above 2 GiB was called "missing, empty, unreadable or not a regular
 * file" (outside probe, C round forty-seven). */
static unsigned char* read_package(const char* path, long* size, long* file_size) {
  *size = -1;
  *file_size = -1;
  int fd = open(path, O_RDONLY | O_NONBLOCK);
  if (fd < 0) return NULL;
  struct stat info;
  FILE* file = NULL;
  if (fstat(fd, &info) != 0 || !S_ISREG(info.st_mode) || !(file = fdopen(fd, "rb"))) {
    close(fd);
    return NULL;
  }
  unsigned char* bytes = NULL;
  if (fseek(file, 0, SEEK_END) == 0) {
    long length = ftell(file);
    *file_size = length;
    if (length > (long)DODO_MAX_MODEL_FILE_BYTES) {
      *size = -2;
    } else if (length > 0 && fseek(file, 0, SEEK_SET) == 0 && (bytes = malloc((size_t)length)) &&
               fread(bytes, 1, (size_t)length, file) == (size_t)length) {
      *size = length;
    }
  }
  fclose(file);
  if (*size < 0) {
    free(bytes);
    bytes = NULL;
  }
  return bytes;
}

/* Worker threads for this rank: the node's online cores divided among its `local_size` ranks, at
 * most the cores this rank may run on (its affinity mask: a rank bound to one core of a 128-core
 * node given 128 / local_size workers would have them all compete for that core), at least 1. */
static int threads_per_rank(int local_size) {
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  long threads = cores > local_size ? cores / local_size : 1;
#if defined(__linux__)
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof allowed, &allowed) == 0 && CPU_COUNT(&allowed) > 0 && CPU_COUNT(&allowed) < threads)
    threads = CPU_COUNT(&allowed);
#endif
  return threads > 1024 ? 1024 : (int)threads; /* 1024: the runtime's bound on threads per handle */
}

/* A rank's share of a toy grid: electron neutrinos stream along +x, antineutrinos along -x. */
static void make_cells(int rank, double F[][6][4], double u[][4]) {
  for (int c = 0; c < NCELL; ++c) {
    double x = (rank * NCELL + c + 0.5) / (4.0 * NCELL);
    for (int a = 0; a < 6; ++a) {
      double density = 1e32 * (0.4 + 0.1 * a + 0.3 * fmod(x, 1.0));
      double flux = (0.1 + 0.3 * fmod(3 * x, 1.0)) * density * (a == 3 ? -1.0 : 1.0);
      F[c][a][0] = density;
      F[c][a][1] = flux * cos(0.3 * a);
      F[c][a][2] = flux * sin(0.3 * a);
      F[c][a][3] = 0.0;
    }
    double vx = 0.2 * (fmod(x, 1.0) - 0.5), W = 1.0 / sqrt(1.0 - vx * vx);
    u[c][0] = W;
    u[c][1] = W * vx;
    u[c][2] = u[c][3] = 0.0;
  }
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank, size, local_rank, local_size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Comm node;  /* the ranks sharing this node's memory (and cores, and GPUs) */
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
  MPI_Comm_rank(node, &local_rank);
  MPI_Comm_size(node, &local_size);
  MPI_Comm_free(&node);
  if (argc < 2) {
    if (rank == 0) fprintf(stderr, "usage: %s MODEL.onnx [cuda]\n", argv[0]);
    MPI_Finalize();
    return 2;
  }

  /* 1. Only rank 0 touches the file system. The size goes first (negative: could not read). */
  long package_size = 0, file_size = -1;
  unsigned char* package = rank == 0 ? read_package(argv[1], &package_size, &file_size) : NULL;
  MPI_Bcast(&package_size, 1, MPI_LONG, 0, MPI_COMM_WORLD);
  if (package_size < 0) {
    if (rank == 0 && package_size == -2)
      fprintf(stderr, "model file \"%s\" is %ld bytes; a model package is at most %lu bytes (DODO_MAX_MODEL_FILE_BYTES)\n",
              argv[1], file_size, (unsigned long)DODO_MAX_MODEL_FILE_BYTES);
    else if (rank == 0)
      fprintf(stderr, "cannot read the model package \"%s\" (missing, empty, unreadable or not a regular file)\n", argv[1]);
    MPI_Finalize();
    return 1;
  }
  if (rank != 0) package = malloc((size_t)package_size);
  int have_memory = package != NULL, all_have_memory = 0;
  MPI_Allreduce(&have_memory, &all_have_memory, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (!all_have_memory) {
    if (!have_memory) fprintf(stderr, "rank %d: out of memory for the model package\n", rank);
    free(package);
    MPI_Finalize();
    return 1;
  }
  MPI_Bcast(package, (int)package_size, MPI_BYTE, 0, MPI_COMM_WORLD);  /* models are kB to MB: one int count */

  /* 2. Every rank creates its own closure from the bytes, then frees them. */
  dodo_options options;
  dodo_options_init(&options);
  options.threads = threads_per_rank(local_size);
  options.run_self_test = 1;
  if (argc > 2 && strcmp(argv[2], "cuda") == 0) {
    const char* per_node = getenv("DODO_GPUS_PER_NODE");
    int gpus = per_node && atoi(per_node) > 0 ? atoi(per_node) : 1;
    options.device = DODO_DEVICE_CUDA;
    options.device_id = local_rank % gpus;
  }
  dodo_closure* closure = NULL;
  dodo_status status = dodo_closure_create_from_memory(package, (size_t)package_size, &options, &closure, NULL, 0);
  free(package);
  int failed = status != DODO_OK, any_failed = 0;
  report_error(rank, size, "dodo_closure_create_from_memory", failed, status);
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (any_failed) {
    dodo_closure_destroy(closure);
    MPI_Finalize();
    return 1;
  }

  /* 3. The time loop's closure call, on this rank's cells; the host checks conservation. */
  static double F[NCELL][6][4], u[NCELL][4], F_pred[NCELL][6][4];
  make_cells(rank, F, u);
  status = dodo_apply(closure, NCELL, &F[0][0][0], NULL, &u[0][0], NULL, &F_pred[0][0][0], NULL, NULL);
  double violation = 0.0; /* flavour-summed neutrino density, relative */
  for (int c = 0; status == DODO_OK && c < NCELL; ++c) {
    double before = 0.0, after = 0.0;
    for (int a = 0; a < 3; ++a) {
      before += F[c][a][0];
      after += F_pred[c][a][0];
    }
    violation = fmax(violation, fabs(after - before) / before);
  }
  failed = status != DODO_OK;
  report_error(rank, size, "dodo_apply", failed, status);
  double worst = 0.0;
  long cells = failed ? 0 : NCELL, total_cells = 0;
  MPI_Reduce(&violation, &worst, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
  MPI_Reduce(&cells, &total_cells, 1, MPI_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0)
    printf("%d rank%s (%d thread%s each, model of %ld bytes broadcast from rank 0): %ld cells, "
           "largest relative change of the neutrino number %.1e\n",
           size, size == 1 ? "" : "s", options.threads, options.threads == 1 ? "" : "s", package_size,
           total_cells, worst);
  dodo_closure_destroy(closure);
  MPI_Finalize();
  return any_failed || worst > 1e-12 ? 1 : 0;
}
