/* Dodo C API: the in-loop closure for the neutrino fast flavour instability.
 *
 * F_pred = F_box + dF_ml per grid cell: Box3D (Richers et al., PRD 110, 103019 (2024)) in the
 * fluid rest frame, then a learned correction (ONNX model) that is projected onto the
 * conservation subspace, limited to stay realizable and boosted back to the lab frame.
 *
 * Conventions (docs/runtime.md): a cell holds 6 species (nu_e, nu_mu, nu_tau, nubar_e,
 * nubar_mu, nubar_tau) x 4 components (t, x, y, z) of the number four-flux in the caller's
 * units; the four-velocity is u^mu = (W, W v). A C array double F[ncell][6][4] and a Fortran
 * array real(c_double) :: F(4, 6, ncell) have the same memory layout (the default strides).
 *
 * Rules: C99 (the header itself is also C89 and C++98 clean, -pedantic); every function returns a status or a plain value; nothing prints, exits or
 * aborts; handles are immutable after creation and may be shared between threads; threads may
 * create handles at once (their ONNX Runtime sessions are made one at a time, which ONNX Runtime
 * needs); dodo_closure_destroy(NULL) is a no-op. Strings returned as `const char*` are static.
 * The calls that compute (the two creates, dodo_apply, dodo_apply_diagnostics, dodo_self_test)
 * run in the default floating-point environment (round to nearest, no exception trapping)
 * whatever the caller's (feenableexcept, gfortran -ffpe-trap, fesetround), and give the caller's
 * environment back as it was, its exception flags included (the library's own are discarded).
 * Threads the library starts (dodo_options.threads workers, ONNX Runtime's own) block the
 * asynchronous signals (SIGINT, SIGTERM, SIGUSR1, ...): a signal sent to the process goes to one
 * of the host's threads, so a host may block it and wait for it with sigwait or a signalfd.
 * When it is loaded (before main for a program linked to it), libdodo sets
 * ORT_DISABLE_TELEMETRY=1 unless the host set it: ONNX Runtime's telemetry thread otherwise made
 * a fork()ed child hang in exit(). Later (ONNX Runtime's first load) only if the host removed it.
 * ONNX Runtime keeps one environment, with its logging, per process, and a host that uses ONNX
 * Runtime itself (the same library) shares it: after libdodo's first closure with a model, the
 * host's CreateEnv gets libdodo's environment, whose log output is discarded (the host's logger
 * and level are ignored, silently); a host that makes its environment first keeps its logging,
 * and libdodo's sessions then log through the host's logger too.
 * A handle may be destroyed, and called, during exit (from a host's static object or atexit
 * handler) and from a thread's pthread key destructors: the library's own state outlives exit's
 * destructors and the calling thread's thread_local objects (with the network in ONNX Runtime, a
 * call made after ONNX Runtime's own static destructors ran, which happens to an atexit handler
 * registered before the first closure with a model, returns DODO_ERROR_ONNXRUNTIME, whose message
 * says that the process is exiting).
 * Stack of a host thread that calls libdodo (pthread_attr_setstacksize, OMP_STACKSIZE): any size
 * glibc allows (16 KiB and up). A call made where the calling thread has less than 160 KiB of its
 * stack left runs on a stack of 512 KiB that libdodo maps for that thread at its first such call
 * (swapcontext, on the same thread; kept for its later calls, unmapped when the thread ends;
 * DODO_ERROR_OUT_OF_MEMORY where it cannot be mapped). Below the call, Box3D and the native
 * network take some 51 and 54 KiB, ONNX Runtime's session creation and evaluation some 92 KiB
 * (onnxruntime 1.32), which a thread of 56 KiB (Box3D alone), or 96 KiB with a model, lacked: a
 * segmentation fault in a libdodo without this fallback (commit 2fe1f2d0, 2026-12-07 19:05 UTC;
 * dodo_build_id() names a build's commit). A call made on a stack that is not the
 * thread's (a coroutine's or fiber's, sigaltstack's) runs there and needs that room itself
 * (128 KiB with a model). libdodo's workers (dodo_options.threads) get glibc's default stack,
 * from ulimit -s; a worker's body runs on a 512 KiB stack of its own where that is short.
 * A host thread cancelled with pthread_cancel during a call is cancelled after it, at its own
 * next cancellation point: the calls hold cancellation off.
 * No function that takes a handle or creates one is async-signal-safe (they take locks and
 * allocate): do not call libdodo from a signal handler; set a flag there and call after it. A
 * call made by a thread already inside a libdodo call (a handler that interrupted that call, or
 * a pthread_atfork handler that runs while libdodo's own fork handlers hold its locks, as a host's
 * handlers registered before it dlopen()ed libdodo do) is refused at once instead of waiting for
 * ever for a lock its own thread holds: DODO_ERROR_INVALID_ARGUMENT (dodo_has_model 0,
 * dodo_get_metadata -1, dodo_closure_destroy does nothing), the reason in error_buffer and in
 * dodo_last_error read in that handler, no handle touched. So a thread must not leave a call by
 * longjmp out of a signal handler: its later calls would be refused. pthread_atfork handlers of
 * a host linked to libdodo run outside libdodo's (registered after them) and may call it.
 * Worker threads (dodo_options.threads) are started by the create call, on the calling thread, and
 * keep its CPU affinity: a handle created on a thread bound to one core (OMP_PROC_BIND, OMP_PLACES;
 * libgomp binds the initial thread before main) runs all its workers on that core (docs/runtime.md,
 * "OpenMP codes").
 * dlclose: libdodo stays loaded after dlclose (it is linked -z nodelete, whatever compiler built
 * it): a later dlopen gets the same library and state, handles made before stay live, and a thread
 * still inside a call, or ending after the dlclose, runs code that is still there
 * (docs/runtime.md, "dlclose and a second dlopen"). Destroy the handles you no longer need all the same.
 */
#ifndef DODO_DODO_H
#define DODO_DODO_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(DODO_BUILDING_LIBRARY)
#define DODO_API __declspec(dllexport)
#elif defined(__GNUC__)
#define DODO_API __attribute__((visibility("default")))
#else
#define DODO_API
#endif

#define DODO_VERSION_MAJOR 0
#define DODO_VERSION_MINOR 1
#define DODO_VERSION_PATCH 0
/* Bumped when a function's signature or a struct's meaning changes incompatibly. */
#define DODO_API_VERSION 1

/* Largest model file dodo_closure_create reads (256 MiB; Dodo's packages are a few MB at most).
 * Larger files, directories, devices, FIFOs and sockets are refused before anything is read. */
#define DODO_MAX_MODEL_FILE_BYTES (256u * 1024u * 1024u)

/* Status codes, listed once: X(name, value, message). */
#define DODO_STATUS_LIST(X)                                                                         \
  X(DODO_OK, 0, "success")                                                                          \
  X(DODO_ERROR_INVALID_ARGUMENT, 1, "invalid argument (null pointer, bad option or bad stride)")    \
  X(DODO_ERROR_FILE, 2, "model file missing or unreadable")                                         \
  X(DODO_ERROR_MODEL_FORMAT, 3, "not an ONNX model, or its inputs/outputs break the model contract") \
  X(DODO_ERROR_MODEL_METADATA, 4, "model metadata missing, of an unknown version or incompatible")  \
  X(DODO_ERROR_ONNXRUNTIME_UNAVAILABLE, 5, "ONNX Runtime library not found or too old")             \
  X(DODO_ERROR_ONNXRUNTIME, 6, "ONNX Runtime reported an error")                                    \
  X(DODO_ERROR_SELF_TEST, 7, "self-test against the model's embedded test vectors failed")          \
  X(DODO_ERROR_OUT_OF_MEMORY, 8, "out of memory")                                                   \
  X(DODO_ERROR_NO_MODEL, 9, "operation needs a model but the handle is Box3D-only")                 \
  X(DODO_ERROR_INTERNAL, 10, "internal error (please report)")

/* The list's names and values, spelled out: an enumerator list generated from it ends with a
 * comma, which C89/C90 and C++98/03 refuse under -pedantic (a C++ host older than the C++14 of
 * dodo.hpp, or a C89 one, includes this header). libdodo checks at compile time that both agree. */
typedef enum dodo_status {
  DODO_OK = 0,
  DODO_ERROR_INVALID_ARGUMENT = 1,
  DODO_ERROR_FILE = 2,
  DODO_ERROR_MODEL_FORMAT = 3,
  DODO_ERROR_MODEL_METADATA = 4,
  DODO_ERROR_ONNXRUNTIME_UNAVAILABLE = 5,
  DODO_ERROR_ONNXRUNTIME = 6,
  DODO_ERROR_SELF_TEST = 7,
  DODO_ERROR_OUT_OF_MEMORY = 8,
  DODO_ERROR_NO_MODEL = 9,
  DODO_ERROR_INTERNAL = 10
} dodo_status;

/* Per-cell status bits (OR-ed together in dodo_apply's cell_status output). */
#define DODO_CELL_OK 0u
#define DODO_CELL_NO_CROSSING 1u        /* no ELN crossing: stable, output = input bit for bit (no correction) */
#define DODO_CELL_FLUX_FACTOR 2u        /* flux factor at or above the representable limit (rejected) */
#define DODO_CELL_NEGATIVE_DENSITY 4u   /* negative comoving density (rejected) */
#define DODO_CELL_NONFINITE 8u          /* NaN/Inf input or result beyond the double range (rejected) */
#define DODO_CELL_ZERO_DENSITY 16u      /* N_tot = 0 or < 1e-300, vacuum (rejected) */
#define DODO_CELL_BAD_VELOCITY 32u      /* u not a future-directed unit four-velocity (rejected) */
#define DODO_CELL_BOX3D_LIMITED 64u     /* Box3D change scaled down to stay realizable */
#define DODO_CELL_NETWORK_NONFINITE 128u /* network output not finite: Box3D result returned */
#define DODO_CELL_CORRECTION_LIMITED 256u /* learned correction scaled down by the realizability limiter or the crossing-strength bound */
/* Any of these bits: the closure was not applied; the cell's output is its input when that is
 * finite and realizable, zeros when it is not finite, otherwise the input with negative densities
 * set to 0 and each flux scaled to |F| <= n (always finite and realizable). Every other output is
 * realizable exactly in double precision: sqrt(Fx*Fx + Fy*Fy + Fz*Fz) <= n for each species
 * (for components beyond about 1e154 or below about 1e-154, whose squares leave the double range
 * or lose their digits, with n and the components first scaled by one power of two). */
#define DODO_CELL_REJECTED_MASK 62u

/* Opaque handle (SUNDIALS style: a pointer to an incomplete struct). */
typedef struct dodo_closure dodo_closure;

/* Where the network runs (dodo_options.device). Box3D always runs on the CPU. */
#define DODO_DEVICE_CPU 0
#define DODO_DEVICE_CUDA 1 /* ONNX Runtime's CUDA execution provider (an onnxruntime-gpu library) */

/* The structs below have their natural layout whatever packing the host compiles with
 * (gcc -fpack-struct or -fpack-struct=N, a #pragma pack in force where this header is included):
 * libdodo reads them at their natural offsets, and a packed dodo_options had its pointers read
 * from the wrong bytes (a crash in dodo_closure_create). #pragma pack(push, 8) undoes a pack(N)
 * and gcc's -fpack-struct=N (it caps no member here: none is aligned to more than 8); gcc ignores
 * it under -fpack-struct without N, where z_method's own alignment (DODO_NATURAL, on 64-bit
 * targets) keeps the layout: the one hole of dodo_options is before it, and the struct's
 * alignment, then z_method's, rounds its size up to C's as well. */
#if defined(__GNUC__) && defined(__LP64__) /* __alignof__ is the in-struct alignment on LP64 */
#define DODO_NATURAL(type) __attribute__((aligned(__alignof__(type))))
#else
#define DODO_NATURAL(type)
#endif
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpragmas"
#endif
#pragma pack(push, 8)

/* Options for dodo_closure_create. Initialise with dodo_options_init, then set fields.
 * Fields are only ever added at the end; a program built against an older dodo.h keeps working. */
typedef struct dodo_options {
  size_t struct_size;              /* set by dodo_options_init; lets the struct grow compatibly */
  int threads;                     /* worker threads per dodo_apply; 0 or 1 = caller's thread only */
  int chunk_size;                  /* cells per network call (default 1024) */
  int lebedev_order;               /* Box3D quadrature order; 0 = the model's (17 without a model) */
  DODO_NATURAL(const char*) const char* z_method;  /* "exact" or "jedynak"; NULL or "" (the empty string) = the model's
                                                     ("exact" without one) */
  double max_flux_factor;          /* 0 = the model's (0.98 without one) */
  const char* onnxruntime_library; /* path of libonnxruntime; NULL = search (docs/runtime.md) */
  int run_self_test;               /* nonzero (the default): run the model's test vectors at creation */
  int device;                      /* DODO_DEVICE_CPU (default) or DODO_DEVICE_CUDA */
  int device_id;                   /* CUDA device number, 0 to 999999 (DODO_DEVICE_CUDA only); e.g. the rank on its node */
} dodo_options;

typedef struct dodo_counters {
  uint64_t cells;               /* cells processed by dodo_apply (the self-test's are not counted) */
  uint64_t rejected;            /* cells whose input was rejected (output = input) */
  uint64_t no_crossing;         /* stable cells (no ELN crossing) */
  uint64_t box3d_limited;       /* cells whose Box3D change was limited */
  uint64_t network_nonfinite;   /* cells whose network output was not finite (Box3D returned) */
  uint64_t correction_limited;  /* cells whose learned correction was scaled down */
} dodo_counters;
/* dodo_counters never grows (it has no struct_size): dodo_get_counters writes these six fields,
 * sizeof(dodo_counters) = 48 bytes, in every version of libdodo; a later counter would come
 * with a function of its own. */

#pragma pack(pop)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

/* Library version "MAJOR.MINOR.PATCH" and the API version it implements. */
DODO_API const char* dodo_version(void);
DODO_API int dodo_api_version(void);
/* The commit of Dodo's sources this libdodo was built from: 40 hex digits, "-dirty" added when the
 * library's sources had changes not committed; what a packager set (CMake DODO_BUILD_ID); or
 * "unknown" (sources no git repository tracks: a source archive). A static text, never NULL. */
DODO_API const char* dodo_build_id(void);
/* Static texts: "DODO_ERROR_FILE" and its message; NULL-safe for unknown codes. */
DODO_API const char* dodo_status_name(dodo_status status);
DODO_API const char* dodo_status_message(dodo_status status);
/* Name of one cell status bit ("NO_CROSSING", ...), or NULL if `bit` is not exactly one known bit. */
DODO_API const char* dodo_cell_status_name(uint32_t bit);

/* Sets the defaults in the caller's dodo_options of `size` bytes (the sizeof of the caller's
 * dodo.h) and records the size in struct_size. Use it through dodo_options_init (below). It
 * writes no byte past the struct this library knows: a larger size (a later dodo.h's) is recorded
 * and refused by dodo_closure_create; a size smaller than any dodo_options (sizeof of a pointer)
 * writes nothing. Defaults: threads 0, chunk_size 1024, run_self_test 1, device CPU, everything
 * else the model's. Initialise every dodo_options: one that is not is refused for the struct_size
 * its memory held, unless that happens to be a size this library knows. */
DODO_API void dodo_options_init_sized(dodo_options* options, size_t size);
/* The first release's entry point, kept for programs built against that dodo.h: initialises the
 * first release's fields only (it cannot know the caller's size), with the same defaults. This
 * header maps dodo_options_init(o) to dodo_options_init_sized(o, sizeof *(o)); bindings that call
 * symbols (Fortran, Julia, ctypes) call dodo_options_init_sized with the size of their struct. */
DODO_API void dodo_options_init(dodo_options* options);
#define dodo_options_init(options) dodo_options_init_sized((options), sizeof *(options))

/* Absolute path of the default model package shipped with Dodo (the model Python's
 * dodo.Closure() loads), found next to this library (next to the file itself too when libdodo
 * was reached through a symbolic link elsewhere); NULL if it is not there. Static string. */
DODO_API const char* dodo_default_model_path(void);

/* Model path meaning "no model": Box3D alone, without a learned correction (the same literal in
 * every language: C, C++, Fortran, Python, Julia). */
#define DODO_BOX3D_ONLY "box3d"

/* Creates a closure from an ONNX model package, or a Box3D-only closure when model_path is
 * DODO_BOX3D_ONLY or NULL. An empty model_path is refused (DODO_ERROR_INVALID_ARGUMENT): a
 * parameter left empty must not silently drop the learned correction. A file named "box3d" is
 * loaded as "./box3d". Directories, devices, FIFOs and files above DODO_MAX_MODEL_FILE_BYTES are
 * refused (DODO_ERROR_FILE / DODO_ERROR_MODEL_FORMAT) before anything is read. The package must
 * carry test vectors (docs/model_package.md); with run_self_test (default on) they are run here.
 * options may be NULL (defaults). On failure *closure is NULL and, if error_buffer is not NULL,
 * a message (truncated to error_buffer_size, always NUL-terminated; UTF-8, cut before a character,
 * never inside one) says what went wrong. */
DODO_API dodo_status dodo_closure_create(const char* model_path, const dodo_options* options,
                                         dodo_closure** closure, char* error_buffer,
                                         size_t error_buffer_size);
/* A destroyed (or foreign) handle is refused by every call, and a second destroy is a no-op.
 * Destroying a handle while other threads are inside calls on it waits until those calls have
 * returned (calls that begin after destroy are refused); a call that never returns (a host
 * thread stopped inside one) keeps destroy waiting. A later dodo_closure_create may reuse a
 * destroyed handle's address, which a stale copy then reaches as a live handle. */
DODO_API void dodo_closure_destroy(dodo_closure* closure);

/* Applies the closure to n_cells cells.
 * Element (cell c, species a, component m) of F_init is F_init[c*s[0] + a*s[1] + m*s[2]] with
 * s = F_init_strides (in elements; NULL = {24, 4, 1}); likewise F_pred. u[c*v[0] + m*v[1]] with
 * v = u_strides (NULL = {4, 1}); u = NULL means every cell is at rest.
 * F_pred may be F_init (same pointer and strides; for one cell the cell strides may differ) for
 * in-place use. cell_status (n_cells entries) may be NULL. Refused with
 * DODO_ERROR_INVALID_ARGUMENT before anything is written: n_cells or strides whose addresses
 * leave the address space, F_pred strides under which two output values share memory (e.g. a
 * zero species or component stride), F_pred or cell_status sharing memory with F_init or u
 * other than by exact in-place use, and an array not at its type's alignment
 * (8 bytes for the doubles, 4 for cell_status). Arrays interleaved in one struct per cell (F_init,
 * F_pred and u with the same cell stride) share nothing and are accepted; interleaved arrays of
 * different cell strides are refused as sharing memory.
 * Cells are independent: a bad cell is flagged, never an error. An error after those checks
 * (DODO_ERROR_OUT_OF_MEMORY, DODO_ERROR_ONNXRUNTIME) leaves the outputs partly written: some
 * cells may hold their result, in place too, so keep a copy of F_init to retry from. */
DODO_API dodo_status dodo_apply(dodo_closure* closure, size_t n_cells, const double* F_init,
                                const ptrdiff_t* F_init_strides, const double* u,
                                const ptrdiff_t* u_strides, double* F_pred,
                                const ptrdiff_t* F_pred_strides, uint32_t* cell_status);

/* Runs the model's embedded test vectors through dodo_apply; DODO_ERROR_SELF_TEST if any cell
 * differs by more than the tolerance stored in the model, if the network's output for one is not
 * finite, or if none reaches the network (every one stable or rejected: such vectors test no
 * weight). max_error_over_ntot may be NULL.
 * The counters are left as they are (they describe the caller's cells only). */
DODO_API dodo_status dodo_self_test(dodo_closure* closure, double* max_error_over_ntot);

DODO_API dodo_status dodo_get_counters(const dodo_closure* closure, dodo_counters* counters);
DODO_API dodo_status dodo_reset_counters(dodo_closure* closure);

/* 1 if the handle carries a model, 0 if Box3D-only (or NULL). */
DODO_API int dodo_has_model(const dodo_closure* closure);
/* Copies the model's metadata value for `key` (e.g. "dodo.head") into buffer. Returns the length
 * of the value in bytes (excluding NUL), or -1 if the key is absent, the handle NULL, destroyed or
 * Box3D-only, or key NULL. buffer may be NULL with buffer_size 0 (ask the length, then allocate
 * length + 1). Nothing is written past buffer_size bytes; with buffer_size > 0 the copy is always
 * NUL-terminated, and a value of buffer_size bytes or more is cut before buffer_size - 1 bytes at
 * the start of a character, so the buffer holds UTF-8 (values are UTF-8: the loader refuses other
 * bytes) that may be up to 3 bytes shorter than buffer_size - 1. A value may hold NUL characters:
 * trust the returned length, not strlen. */
DODO_API long dodo_get_metadata(const dodo_closure* closure, const char* key, char* buffer,
                                size_t buffer_size);
/* Copies the last error message recorded on this handle (by any thread) into buffer; returns its
 * length. Empty when the last call succeeded. With closure NULL (or a destroyed handle): the
 * calling thread's own last error, from any call, handle or not ("closure handle is NULL", ...;
 * empty when that thread's last call succeeded). Threads sharing a handle should read that one:
 * another thread's call replaces the handle's text between a failure and its reading.
 * Paths and option values are quoted shortened past a few hundred bytes; the list
 * of ONNX Runtime libraries tried (one line each) can exceed 1 KiB: size a buffer from the
 * returned length. */
DODO_API size_t dodo_last_error(const dodo_closure* closure, char* buffer, size_t buffer_size);

/* Like dodo_closure_create, from a model package already in memory (size bytes at `bytes`), with
 * the same checks as a file: content digest, metadata digest, required test vectors, the size
 * bound DODO_MAX_MODEL_FILE_BYTES, self-test. The bytes are only read during the call, and read
 * once: they are copied at its start, so every check is of the bytes that load. For codes
 * with many ranks: rank 0 reads the file, MPI_Bcast sends the bytes, every rank creates its
 * closure, and no other rank touches the file system (examples/c/mpi_closure.c). */
DODO_API dodo_status dodo_closure_create_from_memory(const void* bytes, size_t size, const dodo_options* options,
                                                     dodo_closure** closure, char* error_buffer,
                                                     size_t error_buffer_size);

/* dodo_apply, and per cell the growth rate of the instability and the model's uncertainty
 * (docs/runtime.md, "Growth rate and uncertainty"); growth_rate and uncertainty are arrays of
 * n_cells doubles, either may be NULL.
 * growth_rate: in s^-1, comoving frame, for densities in cm^-3 (for densities in units of
 *   k cm^-3, multiply by k). Box3D's proxy max_pairs sqrt(I+ I-) N_tot sqrt(2) G_F / hbar, times
 *   exp(log_growth_ratio) where the model has that output; 0 for stable and rejected cells.
 * uncertainty: the model's estimate of the spread of its correction, in units of the cell's
 *   N_tot; 0 where no correction is applied (stable, rejected or network-nonfinite cells,
 *   Box3D-only handles, models without the output).
 * Neither may overlap the other or any other array of the call (DODO_ERROR_INVALID_ARGUMENT). */
DODO_API dodo_status dodo_apply_diagnostics(dodo_closure* closure, size_t n_cells, const double* F_init,
                                            const ptrdiff_t* F_init_strides, const double* u,
                                            const ptrdiff_t* u_strides, double* F_pred,
                                            const ptrdiff_t* F_pred_strides, uint32_t* cell_status,
                                            double* growth_rate, double* uncertainty);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* DODO_DODO_H */
