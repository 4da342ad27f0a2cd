! Fortran interface to the Dodo closure (the C API of dodo.h through iso_c_binding).
!
!   use dodo
!   type(dodo_closure) :: closure
!   real(c_double) :: F(4, 6, ncell), F_pred(4, 6, ncell), u(4, ncell)
!   integer :: stat
!   call dodo_create(closure, "model.onnx", stat=stat, threads=2)   ! or dodo_create_from_memory(closure, bytes, ...)
!   call dodo_apply(closure, F, F_pred, u=u, stat=stat)
!   call dodo_apply(closure, F, F_pred, u=u, growth_rate=rate, uncertainty=spread)  ! rate, spread: (ncell)
!   call dodo_destroy(closure)
!
! Contiguous arrays (also POINTER arrays and a caller's assumed-shape dummies) are passed without
! copies: a Fortran array F(4, 6, ncell) (component, species, cell) has exactly the memory layout
! of C's double F[ncell][6][4]. A non-contiguous section is copied here, into a contiguous array
! and back (SELECT RANK: gfortran 10 or later). Components are (t, x, y, z),
! species (nu_e, nu_mu, nu_tau, nubar_e, nubar_mu, nubar_tau). Every routine takes optional
! `stat` (DODO_OK = 0 on success) and `errmsg`; when `stat` is absent an error stops the program
! with the message, like an ALLOCATE without STAT=. The library itself never prints or stops.
! That stop is ERROR STOP, Fortran's error termination (a nonzero exit status; in a coarray
! program it stops every image), deliberately: gfortran prints "Error termination. Backtrace:"
! after the message, as for a failed ALLOCATE (GFORTRAN_ERROR_BACKTRACE=0 turns that off). A
! program that wants to end quietly passes stat and stops itself (the examples: `stop 1`).
!
! Compile this file with your Fortran compiler (module files are compiler-specific) and link
! libdodo: CMake gives its path as ${Dodo_FORTRAN_MODULE_SOURCE}; pkg-config as
! $(pkg-config --variable=includedir dodo)/dodo/dodo.f90. Compilers checked: gfortran 12 (10 or
! later: SELECT RANK). LLVM flang 16 (flang-new-16, Debian 12's flang-16) cannot compile it: it
! refuses C_LOC of an assumed-rank dummy and then stops at "not yet implemented: assumed rank in
! procedure interface"; use gfortran there (later flang versions not checked).
!
! Standard: Fortran 2018 (Fortran 2008 with TS 29113): the array arguments are assumed-rank
! dummies, F_init(..), so that F(4, 6, ncell) and F(4, 6, nx, ny, nz) pass alike without copies.
! Compile this file with -std=f2018 (gfortran; or -std=f2008ts, or no -std option) even when
! your own code is compiled with -std=f2008: under -std=f2008 this file stops with "Fortran 2018:
! Assumed-rank array". The calls a host writes are Fortran 2008, so a host's -std=f2008 sources
! use the module as they are. CMake, for a host whose CMAKE_Fortran_FLAGS hold -std=f2008:
!   set_source_files_properties(${Dodo_FORTRAN_MODULE_SOURCE} PROPERTIES COMPILE_OPTIONS
!                               "$<$<Fortran_COMPILER_ID:GNU>:-std=f2018>")
! (set in the directory that adds the module's library; the option comes after the host's flags).
! A host whose flags hold -fno-automatic (gfortran): the module's calls work under it, but gfortran
! 12 then returns dodo_get_metadata, dodo_version_string, dodo_build_id_string and
! dodo_default_model_path as "" (it drops a deferred-length function result's length): add
! -fautomatic above ("...:-std=f2018;-fautomatic>").
module dodo
  use, intrinsic :: iso_c_binding, only: c_ptr, c_null_ptr, c_null_char, c_char, c_int, c_double, c_size_t, &
                                         c_int8_t, c_int32_t, c_int64_t, c_long, c_associated, c_loc, c_f_pointer, &
                                         c_sizeof, c_intptr_t
  implicit none
  private

  public :: dodo_closure, dodo_counters
  public :: dodo_create, dodo_create_from_memory, dodo_destroy, dodo_apply, dodo_self_test, dodo_get_counters, &
            dodo_reset_counters, dodo_has_model, dodo_get_metadata, dodo_version_string, dodo_default_model_path, &
            dodo_build_id_string
  public :: c_double, c_int8_t, c_int32_t

  ! Model path meaning Box3D alone (dodo.h DODO_BOX3D_ONLY).
  character(len=*), parameter, public :: DODO_BOX3D_ONLY = "box3d"
  ! Largest model package the library reads, in bytes (dodo.h DODO_MAX_MODEL_FILE_BYTES, 256 MiB):
  ! a host that reads a package itself (rank 0 before MPI_Bcast) refuses a larger file unread.
  integer(c_int64_t), parameter, public :: DODO_MAX_MODEL_FILE_BYTES = 268435456_c_int64_t

  ! Status codes (dodo.h DODO_STATUS_LIST).
  integer, parameter, public :: DODO_OK = 0, DODO_ERROR_INVALID_ARGUMENT = 1, DODO_ERROR_FILE = 2, &
                                DODO_ERROR_MODEL_FORMAT = 3, DODO_ERROR_MODEL_METADATA = 4, &
                                DODO_ERROR_ONNXRUNTIME_UNAVAILABLE = 5, DODO_ERROR_ONNXRUNTIME = 6, &
                                DODO_ERROR_SELF_TEST = 7, DODO_ERROR_OUT_OF_MEMORY = 8, DODO_ERROR_NO_MODEL = 9, &
                                DODO_ERROR_INTERNAL = 10
  ! Per-cell status bits (dodo.h DODO_CELL_*).
  integer(c_int32_t), parameter, public :: DODO_CELL_OK = 0, DODO_CELL_NO_CROSSING = 1, DODO_CELL_FLUX_FACTOR = 2, &
                                           DODO_CELL_NEGATIVE_DENSITY = 4, DODO_CELL_NONFINITE = 8, &
                                           DODO_CELL_ZERO_DENSITY = 16, DODO_CELL_BAD_VELOCITY = 32, &
                                           DODO_CELL_BOX3D_LIMITED = 64, DODO_CELL_NETWORK_NONFINITE = 128, &
                                           DODO_CELL_CORRECTION_LIMITED = 256, DODO_CELL_REJECTED_MASK = 62

  ! Owns one dodo_closure* handle; copy the type only as a reference (destroy once).
  type :: dodo_closure
    type(c_ptr) :: handle = c_null_ptr
  end type dodo_closure

  type, bind(c) :: dodo_counters
    integer(c_int64_t) :: cells = 0, rejected = 0, no_crossing = 0, box3d_limited = 0, network_nonfinite = 0, &
                          correction_limited = 0
  end type dodo_counters

  ! struct dodo_options (dodo.h), same field order. C's padding (on a 64-bit target: 4 bytes before
  ! z_method, 4 at the end) is spelled out as the components hole_1 and hole_2, so that the layout
  ! is C's under gfortran's -fpack-derived too, which packs BIND(C) types as well: packed, z_method
  ! lay at byte 20 where libdodo reads byte 24, and dodo_create with a z_method crashed in strlen
  ! (outside probe, C round forty-eight). check_c_kinds refuses a target whose pointers or size_t
  ! are not 8 bytes, where these holes are not C's.
  type, bind(c) :: options_c
    integer(c_size_t) :: struct_size
    integer(c_int) :: threads, chunk_size, lebedev_order
    integer(c_int) :: hole_1
    type(c_ptr) :: z_method
    real(c_double) :: max_flux_factor
    type(c_ptr) :: onnxruntime_library
    integer(c_int) :: run_self_test
    integer(c_int) :: device, device_id
    integer(c_int) :: hole_2
  end type options_c
  integer(c_int), parameter :: DEVICE_CUDA = 1  ! dodo.h DODO_DEVICE_CUDA

  interface
    subroutine c_options_init(options, size) bind(c, name="dodo_options_init_sized")
      import :: options_c, c_size_t
      type(options_c), intent(inout) :: options
      integer(c_size_t), value :: size
    end subroutine
    function c_create(model_path, options, closure, error_buffer, error_size) bind(c, name="dodo_closure_create")
      import :: c_ptr, c_int, c_char, c_size_t, options_c
      type(c_ptr), value :: model_path
      type(options_c), intent(in) :: options
      type(c_ptr), intent(out) :: closure
      character(kind=c_char), intent(inout) :: error_buffer(*)
      integer(c_size_t), value :: error_size
      integer(c_int) :: c_create
    end function
    function c_create_from_memory(bytes, size, options, closure, error_buffer, error_size) &
        bind(c, name="dodo_closure_create_from_memory")
      import :: c_ptr, c_int, c_char, c_size_t, options_c
      type(c_ptr), value :: bytes
      integer(c_size_t), value :: size
      type(options_c), intent(in) :: options
      type(c_ptr), intent(out) :: closure
      character(kind=c_char), intent(inout) :: error_buffer(*)
      integer(c_size_t), value :: error_size
      integer(c_int) :: c_create_from_memory
    end function
    subroutine c_destroy(closure) bind(c, name="dodo_closure_destroy")
      import :: c_ptr
      type(c_ptr), value :: closure
    end subroutine
    function c_apply_diagnostics(closure, n_cells, F_init, F_init_strides, u, u_strides, F_pred, F_pred_strides, &
                                 cell_status, growth_rate, uncertainty) bind(c, name="dodo_apply_diagnostics")
      import :: c_ptr, c_int, c_size_t
      type(c_ptr), value :: closure, F_init, F_init_strides, u, u_strides, F_pred, F_pred_strides, cell_status, &
                            growth_rate, uncertainty
      integer(c_size_t), value :: n_cells
      integer(c_int) :: c_apply_diagnostics
    end function
    function c_self_test(closure, max_error) bind(c, name="dodo_self_test")
      import :: c_ptr, c_int, c_double
      type(c_ptr), value :: closure
      real(c_double), intent(out) :: max_error
      integer(c_int) :: c_self_test
    end function
    function c_get_counters(closure, counters) bind(c, name="dodo_get_counters")
      import :: c_ptr, c_int, dodo_counters
      type(c_ptr), value :: closure
      type(dodo_counters), intent(out) :: counters
      integer(c_int) :: c_get_counters
    end function
    function c_reset_counters(closure) bind(c, name="dodo_reset_counters")
      import :: c_ptr, c_int
      type(c_ptr), value :: closure
      integer(c_int) :: c_reset_counters
    end function
    function c_has_model(closure) bind(c, name="dodo_has_model")
      import :: c_ptr, c_int
      type(c_ptr), value :: closure
      integer(c_int) :: c_has_model
    end function
    function c_get_metadata(closure, key, buffer, buffer_size) bind(c, name="dodo_get_metadata")
      import :: c_ptr, c_char, c_size_t, c_long
      type(c_ptr), value :: closure
      character(kind=c_char), intent(in) :: key(*)
      character(kind=c_char), intent(inout) :: buffer(*)
      integer(c_size_t), value :: buffer_size
      integer(c_long) :: c_get_metadata
    end function
    function c_last_error(closure, buffer, buffer_size) bind(c, name="dodo_last_error")
      import :: c_ptr, c_char, c_size_t
      type(c_ptr), value :: closure
      character(kind=c_char), intent(inout) :: buffer(*)
      integer(c_size_t), value :: buffer_size
      integer(c_size_t) :: c_last_error
    end function
    function c_version() bind(c, name="dodo_version")
      import :: c_ptr
      type(c_ptr) :: c_version
    end function
    function c_build_id() bind(c, name="dodo_build_id")
      import :: c_ptr
      type(c_ptr) :: c_build_id
    end function
    function c_default_model_path() bind(c, name="dodo_default_model_path")
      import :: c_ptr
      type(c_ptr) :: c_default_model_path
    end function
    function c_strlen(text) bind(c, name="strlen")
      import :: c_ptr, c_size_t
      type(c_ptr), value :: text
      integer(c_size_t) :: c_strlen
    end function
  end interface

  ! The addresses of an array's elements (below), for the two types the module's arrays have.
  interface element_addresses
    module procedure real_element_addresses, int32_element_addresses
  end interface element_addresses

contains

  ! Every procedure is RECURSIVE, so that a host's flags, which compile this file too, cannot make
  ! it unsafe for threads (outside probe, C round thirty-eight): gfortran's -fno-automatic (legacy
  ! codes') gives the locals of any other procedure static storage (an allocatable local stayed
  ! allocated after a call, so a program's second failed call stopped it: "Attempting to allocate
  ! already allocated variable 'buffer'"; OpenMP threads shared every local), and -fcheck=all on a
  ! file built without -fopenmp stopped two threads inside one procedure at once ("Recursive call
  ! to nonrecursive procedure"). No local is character(len=:): under -fno-automatic its length
  ! stays static even in a RECURSIVE procedure.

  ! Creates a closure from a model package; model_path DODO_BOX3D_ONLY ("box3d") or absent gives a
  ! Box3D-only closure; a blank model_path is refused (DODO_ERROR_INVALID_ARGUMENT), so that an
  ! unset parameter never drops the learned correction silently. run_self_test defaults to .true.
  ! cuda_device present: the network runs on that CUDA device (needs an onnxruntime-gpu library;
  ! one device per rank: cuda_device = node-local rank mod devices per node).
  ! z_method: "exact" or "jedynak" (blank or absent: the model's, "exact" without one);
  ! onnxruntime_library: path of libonnxruntime (blank or absent: the search of docs/runtime.md).
  ! A model_path, z_method or onnxruntime_library holding a NUL before its end is refused (C would
  ! read it cut at the NUL); a trailing C-style terminator (NULs and blanks only) ends it.
  recursive subroutine dodo_create(closure, model_path, threads, chunk_size, lebedev_order, max_flux_factor, &
                         run_self_test, stat, errmsg, cuda_device, z_method, onnxruntime_library)
    type(dodo_closure), intent(inout) :: closure
    character(len=*), intent(in), optional :: model_path, z_method, onnxruntime_library
    integer, intent(in), optional :: threads, chunk_size, lebedev_order, cuda_device
    real(c_double), intent(in), optional :: max_flux_factor
    logical, intent(in), optional :: run_self_test
    integer, intent(out), optional :: stat
    character(len=*), intent(inout), optional :: errmsg
    type(options_c) :: options
    character(kind=c_char), allocatable, target :: path_c(:), z_method_c(:), library_c(:)
    character(kind=c_char) :: message(1024)
    character(len=200) :: problem  ! fixed length: no deferred-length local (see after `contains`)
    type(c_ptr) :: path_pointer, fresh
    integer :: status

    options = make_options(threads, chunk_size, lebedev_order, max_flux_factor, run_self_test, cuda_device)
    problem = ""
    path_pointer = c_null_ptr
    ! C reads a string up to its first NUL: "box3d" // c_null_char // "model.onnx" was a Box3D-only
    ! closure without a word (probe round twelve of the C side; dodo.hpp refuses it likewise).
    if (present(model_path)) then
      ! trailing blanks dropped; a blank path becomes "" (refused by C)
      if (checked_c_string(model_path, "model_path", path_c, problem)) path_pointer = c_loc(path_c)
    end if
    call check_c_kinds(problem)
    call text_options(options, z_method, onnxruntime_library, z_method_c, library_c, problem)
    if (len_trim(problem) > 0) then
      call report(DODO_ERROR_INVALID_ARGUMENT, trim(problem), stat, errmsg)
      return
    end if
    message = c_null_char
    fresh = c_null_ptr
    status = int(c_create(path_pointer, options, fresh, message, int(size(message), c_size_t)))
    call replace_handle(closure, fresh, status)
    call report_call(status, closure, stat, errmsg)
  end subroutine dodo_create

  ! Creates a closure from a model package already in memory (e.g. received with MPI_Bcast), with
  ! the same checks as a file. bytes: the package file's bytes; only read during the call.
  ! z_method, onnxruntime_library: as for dodo_create.
  ! bytes is not `contiguous`: for such a dummy gfortran (12) copied a POINTER actual (a host's
  ! `integer(c_int8_t), pointer :: bytes(:)`, MPI_Bcast's buffer) into a temporary on every create,
  ! contiguous or not: one heap copy of the whole package a call (outside probe, C round forty). A
  ! contiguous array now reaches C where it lies; a non-contiguous section is copied here.
  recursive subroutine dodo_create_from_memory(closure, bytes, threads, chunk_size, lebedev_order, max_flux_factor, &
                                     run_self_test, stat, errmsg, cuda_device, z_method, onnxruntime_library)
    type(dodo_closure), intent(inout) :: closure
    integer(c_int8_t), intent(in), target :: bytes(:)
    integer, intent(in), optional :: threads, chunk_size, lebedev_order, cuda_device
    real(c_double), intent(in), optional :: max_flux_factor
    logical, intent(in), optional :: run_self_test
    integer, intent(out), optional :: stat
    character(len=*), intent(inout), optional :: errmsg
    character(len=*), intent(in), optional :: z_method, onnxruntime_library
    type(options_c) :: options
    character(kind=c_char) :: message(1024)
    character(kind=c_char), allocatable, target :: z_method_c(:), library_c(:)
    character(len=200) :: problem
    integer(c_int8_t), target :: no_bytes(1)
    integer(c_int8_t), allocatable, target :: bytes_flat(:)  ! a non-contiguous section's copy
    type(c_ptr) :: bytes_pointer, fresh
    integer :: status
    integer(c_size_t) :: i

    options = make_options(threads, chunk_size, lebedev_order, max_flux_factor, run_self_test, cuda_device)
    problem = ""
    call check_c_kinds(problem)
    call text_options(options, z_method, onnxruntime_library, z_method_c, library_c, problem)
    if (len_trim(problem) > 0) then
      call report(DODO_ERROR_INVALID_ARGUMENT, trim(problem), stat, errmsg)
      return
    end if
    ! An empty array (a file read as 0 bytes) is an empty package, not a NULL pointer: C's refusal
    ! then says "model in memory is empty" instead of suggesting DODO_BOX3D_ONLY (probe round fourteen)
    bytes_pointer = c_loc(no_bytes)
    if (size(bytes, kind=c_size_t) > 0) then
      if (is_contiguous(bytes)) then
        bytes_pointer = c_loc(bytes)
      else
        allocate(bytes_flat(size(bytes, kind=c_size_t)), stat=status)
        if (status /= 0) then
          call report_no_room("for dodo.f90's copy of the non-contiguous section given as the package's bytes (" // &
                              trim(count_text(size(bytes, kind=c_size_t))) // " bytes)", stat, errmsg)
          return
        end if
        do i = 1, size(bytes, kind=c_size_t)  ! a loop: an array assignment made a temporary (stack at -Ofast)
          bytes_flat(i) = bytes(i)
        end do
        bytes_pointer = c_loc(bytes_flat)
      end if
    end if
    message = c_null_char
    fresh = c_null_ptr
    status = int(c_create_from_memory(bytes_pointer, size(bytes, kind=c_size_t), options, fresh, message, &
                                      int(size(message), c_size_t)))
    call replace_handle(closure, fresh, status)
    call report_call(status, closure, stat, errmsg)
  end subroutine dodo_create_from_memory

  recursive subroutine dodo_destroy(closure)
    type(dodo_closure), intent(inout) :: closure
    call c_destroy(closure%handle)
    closure%handle = c_null_ptr
  end subroutine dodo_destroy

  ! F_init, F_pred: (4, 6, ...) of any rank: (4, 6, ncell), a grid (4, 6, nx, ny, nz) or one cell
  ! (4, 6); F_pred the same shape (it may be the same array as F_init). Contiguous arrays are passed
  ! to C where they lie; a non-contiguous section is copied here into a contiguous array and back.
  ! The dummies are not `contiguous`: gfortran (12) then copied every POINTER or assumed-shape actual
  ! (a host's step routine's F(:, :, :)) into a temporary on every call, contiguous or not (an
  ! allocation and a copy of each array per call), and a disassociated pointer given for an optional
  ! array, which Fortran makes absent, was read for that copy: SIGSEGV; under -Ofast (-fstack-arrays)
  ! the compiler's copy of a non-contiguous section went on the host's stack, where 100,000 cells
  ! overflowed 8 MiB (outside probe, C round thirty-nine). The copies here are allocatables (heap).
  ! Sections sharing an element with another argument are refused as C refuses such arrays
  ! (find_overlap); the same section as F_init and F_pred is in-place use.
  ! Assumed-size arrays (F(4, 6, *) in the caller) carry no cell count and are refused: pass a
  ! section that gives it, F(:, :, 1:ncell) (likewise u(:, 1:ncell), cell_status(1:ncell)).
  ! u: (4, ...) with one column per cell (e.g. (4, nx, ny, nz)), absent = every cell at rest;
  ! cell_status: one entry per cell, bits DODO_CELL_*. u and the per-cell outputs may be flat
  ! ((4, ncell), (ncell)) for any grid; with as many cell dimensions as F they must be F's.
  ! growth_rate: one entry per cell: the growth rate of the instability in s^-1 in the
  ! comoving frame, for densities in cm^-3 (the model's where it has one, else Box3D's proxy; 0
  ! for stable and rejected cells); uncertainty: one entry per cell, the model's spread of its correction in
  ! units of N_tot (0 where no correction is applied). See dodo_apply_diagnostics in dodo.h.
  recursive subroutine dodo_apply(closure, F_init, F_pred, u, cell_status, stat, errmsg, growth_rate, uncertainty)
    type(dodo_closure), intent(in) :: closure
    real(c_double), intent(in), target :: F_init(..)
    real(c_double), intent(inout), target :: F_pred(..)
    real(c_double), intent(in), optional, target :: u(..)
    integer(c_int32_t), intent(out), optional, target :: cell_status(..)
    integer, intent(out), optional :: stat
    character(len=*), intent(inout), optional :: errmsg
    real(c_double), intent(out), optional, target :: growth_rate(..), uncertainty(..)
    type(c_ptr) :: F_init_pointer, F_pred_pointer, u_pointer, status_pointer, growth_pointer, uncertainty_pointer
    ! Contiguous copies of the non-contiguous arguments (allocated only for those)
    real(c_double), allocatable, target :: F_init_flat(:), F_pred_flat(:), u_flat(:), growth_flat(:), uncertainty_flat(:)
    integer(c_int32_t), allocatable, target :: status_flat(:)
    integer(c_intptr_t), allocatable :: at(:)  ! the addresses of a copied argument's elements
    integer :: status
    integer(c_size_t) :: ncell
    character(len=120) :: problem
    logical :: no_room

    ! An assumed-size array (a host's F(4, 6, *), u(4, *), cell_status(*): the F77 style of many
    ! transport codes) reaches an assumed-rank dummy with its last extent -1: the cell count came
    ! out as -1, and C refused "F_init with 18446744073709551615 cells ... beyond the address
    ! space", u and the per-cell outputs "has -1 for 3 cell(s)" (outside probe, C round
    ! thirty-two). Each is named as what it is, with the section that gives its count.
    if (refused_as_assumed_size("F_init", "F_init(:, :, 1:n)", stat, errmsg, F_init)) return
    if (refused_as_assumed_size("F_pred", "F_pred(:, :, 1:n)", stat, errmsg, F_pred)) return
    if (refused_as_assumed_size("u", "u(:, 1:n)", stat, errmsg, u)) return
    if (refused_as_assumed_size("cell_status", "cell_status(1:n)", stat, errmsg, cell_status)) return
    if (refused_as_assumed_size("growth_rate", "growth_rate(1:n)", stat, errmsg, growth_rate)) return
    if (refused_as_assumed_size("uncertainty", "uncertainty(1:n)", stat, errmsg, uncertainty)) return
    ! Refusals say what was given (probe round thirteen of the C side: "must both have shape
    ! (4, 6, ...)" for two arrays that both had it, of different ranks, left the host guessing).
    if (.not. cells_shaped(F_init)) then
      call report(DODO_ERROR_INVALID_ARGUMENT, "F_init and F_pred must both have shape (4, 6, ...) (component, " // &
                  "species, cells): F_init has " // trim(shape_text(shape(F_init, kind=c_size_t))), stat, errmsg)
      return
    end if
    if (rank(F_pred) /= rank(F_init)) then
      call report(DODO_ERROR_INVALID_ARGUMENT, "F_init and F_pred must both have shape (4, 6, ...), the same: " // &
                  "F_init has " // trim(shape_text(shape(F_init, kind=c_size_t))) // ", F_pred " // &
                  trim(shape_text(shape(F_pred, kind=c_size_t))), stat, errmsg)
      return
    end if
    if (any(shape(F_pred, kind=c_size_t) /= shape(F_init, kind=c_size_t))) then
      call report(DODO_ERROR_INVALID_ARGUMENT, "F_init and F_pred must both have shape (4, 6, ...), the same: " // &
                  "F_init has " // trim(shape_text(shape(F_init, kind=c_size_t))) // ", F_pred " // &
                  trim(shape_text(shape(F_pred, kind=c_size_t))), stat, errmsg)
      return
    end if
    ! size() of kind c_size_t: a default-integer size() wraps past 2**31 - 1 values (89,478,485
    ! cells), so that 178,956,971 cells were taken for one (probe round fourteen)
    ncell = size(F_init, kind=c_size_t) / 24_c_size_t
    u_pointer = c_null_ptr
    status_pointer = c_null_ptr
    if (present(u)) then
      if (rank(u) < 1) then
        call report(DODO_ERROR_INVALID_ARGUMENT, "u must have shape (4, ...) with one column per cell: u is a " // &
                    "scalar, for " // trim(count_text(ncell)) // " cell(s)", stat, errmsg)
        return
      end if
      if (size(u, 1) /= 4 .or. size(u, kind=c_size_t) /= 4 * ncell) then
        call report(DODO_ERROR_INVALID_ARGUMENT, "u must have shape (4, ...) with one column per cell: u has " // &
                    trim(shape_text(shape(u, kind=c_size_t))) // " for " // trim(count_text(ncell)) // " cell(s)", stat, errmsg)
        return
      end if
      ! Counting values alone let a grid u(4, ny, nx) pass for F(4, 6, nx, ny): each cell read
      ! another cell's four-velocity, silently (probe C round thirty). A u whose cell dimensions
      ! are as many as F_init's must have F_init's; a flat u(4, ncell) still passes any grid.
      if (grid_differs(u, 2, F_init)) then
        call report(DODO_ERROR_INVALID_ARGUMENT, "u must have shape (4, ...) with one column per cell, its cell " // &
                    "dimensions F_init's: u has " // trim(shape_text(shape(u, kind=c_size_t))) // ", F_init " // &
                    trim(shape_text(shape(F_init, kind=c_size_t))) // " (a flat u(4, ncell) is taken in F_init's " // &
                    "cell order)", stat, errmsg)
        return
      end if
      if (is_contiguous(u)) then
        u_pointer = c_loc(u)
      else
        call element_addresses(u, at)
        if (allocated(at)) allocate(u_flat(size(at, kind=c_size_t)), stat=status)
        if (.not. allocated(u_flat)) then
          call report_no_room_to_copy("u", 16_c_size_t * size(u, kind=c_size_t), stat, errmsg)
          return
        end if
        call copy_elements(at, u_flat, .true.)
        u_pointer = c_loc(u_flat)
      end if
    end if
    if (present(cell_status)) then
      if (size(cell_status, kind=c_size_t) /= ncell) then
        call report(DODO_ERROR_INVALID_ARGUMENT, "cell_status must have one entry per cell: it has " // &
                    trim(count_text(size(cell_status, kind=c_size_t))) // " for " // trim(count_text(ncell)) // &
                    " cell(s)", stat, errmsg)
        return
      end if
      if (grid_differs(cell_status, 1, F_init)) then
        call report(DODO_ERROR_INVALID_ARGUMENT, "cell_status must have one entry per cell, its dimensions " // &
                    "F_init's cell dimensions: cell_status has " // trim(shape_text(shape(cell_status, kind=c_size_t))) // &
                    ", F_init " // trim(shape_text(shape(F_init, kind=c_size_t))), stat, errmsg)
        return
      end if
      if (is_contiguous(cell_status)) then
        status_pointer = c_loc(cell_status)
      else
        call element_addresses(cell_status, at)
        if (allocated(at)) allocate(status_flat(size(at, kind=c_size_t)), stat=status)
        if (.not. allocated(status_flat)) then
          call report_no_room_to_copy("cell_status", 12_c_size_t * size(cell_status, kind=c_size_t), stat, errmsg)
          return
        end if
        call copy_elements(at, status_flat, .true.)  ! copied in too: a refused call leaves it as it was
        status_pointer = c_loc(status_flat)
      end if
    end if
    growth_pointer = c_null_ptr
    uncertainty_pointer = c_null_ptr
    if (present(growth_rate)) then
      if (size(growth_rate, kind=c_size_t) /= ncell) then
        call report(DODO_ERROR_INVALID_ARGUMENT, "growth_rate must have one entry per cell: it has " // &
                    trim(count_text(size(growth_rate, kind=c_size_t))) // " for " // trim(count_text(ncell)) // &
                    " cell(s)", stat, errmsg)
        return
      end if
      if (grid_differs(growth_rate, 1, F_init)) then
        call report(DODO_ERROR_INVALID_ARGUMENT, "growth_rate must have one entry per cell, its dimensions " // &
                    "F_init's cell dimensions: growth_rate has " // trim(shape_text(shape(growth_rate, kind=c_size_t))) // &
                    ", F_init " // trim(shape_text(shape(F_init, kind=c_size_t))), stat, errmsg)
        return
      end if
      if (is_contiguous(growth_rate)) then
        growth_pointer = c_loc(growth_rate)
      else
        call element_addresses(growth_rate, at)
        if (allocated(at)) allocate(growth_flat(size(at, kind=c_size_t)), stat=status)
        if (.not. allocated(growth_flat)) then
          call report_no_room_to_copy("growth_rate", 16_c_size_t * size(growth_rate, kind=c_size_t), stat, errmsg)
          return
        end if
        call copy_elements(at, growth_flat, .true.)
        growth_pointer = c_loc(growth_flat)
      end if
    end if
    if (present(uncertainty)) then
      if (size(uncertainty, kind=c_size_t) /= ncell) then
        call report(DODO_ERROR_INVALID_ARGUMENT, "uncertainty must have one entry per cell: it has " // &
                    trim(count_text(size(uncertainty, kind=c_size_t))) // " for " // trim(count_text(ncell)) // &
                    " cell(s)", stat, errmsg)
        return
      end if
      if (grid_differs(uncertainty, 1, F_init)) then
        call report(DODO_ERROR_INVALID_ARGUMENT, "uncertainty must have one entry per cell, its dimensions " // &
                    "F_init's cell dimensions: uncertainty has " // trim(shape_text(shape(uncertainty, kind=c_size_t))) // &
                    ", F_init " // trim(shape_text(shape(F_init, kind=c_size_t))), stat, errmsg)
        return
      end if
      if (is_contiguous(uncertainty)) then
        uncertainty_pointer = c_loc(uncertainty)
      else
        call element_addresses(uncertainty, at)
        if (allocated(at)) allocate(uncertainty_flat(size(at, kind=c_size_t)), stat=status)
        if (.not. allocated(uncertainty_flat)) then
          call report_no_room_to_copy("uncertainty", 16_c_size_t * size(uncertainty, kind=c_size_t), stat, errmsg)
          return
        end if
        call copy_elements(at, uncertainty_flat, .true.)
        uncertainty_pointer = c_loc(uncertainty_flat)
      end if
    end if
    if (ncell == 0) then
      ! No array to pass, but the handle is still checked, as C checks it: a NULL or destroyed
      ! handle is refused with its message whatever the cell count.
      status = int(c_apply_diagnostics(closure%handle, 0_c_size_t, c_null_ptr, c_null_ptr, c_null_ptr, c_null_ptr, &
                                       c_null_ptr, c_null_ptr, c_null_ptr, c_null_ptr, c_null_ptr))
      call report_call(status, closure, stat, errmsg)
      return
    end if
    call find_overlap(F_init, F_pred, u, cell_status, growth_rate, uncertainty, problem, no_room)
    if (no_room) then
      call report_no_room("to check whether the non-contiguous sections overlap (" // trim(problem) // ")", stat, errmsg)
      return
    end if
    if (len_trim(problem) > 0) then
      call report(DODO_ERROR_INVALID_ARGUMENT, trim(problem), stat, errmsg)
      return
    end if
    if (is_contiguous(F_init)) then
      F_init_pointer = c_loc(F_init)
    else
      call element_addresses(F_init, at)
      if (allocated(at)) allocate(F_init_flat(size(at, kind=c_size_t)), stat=status)
      if (.not. allocated(F_init_flat)) then
        call report_no_room_to_copy("F_init", 16_c_size_t * size(F_init, kind=c_size_t), stat, errmsg)
        return
      end if
      call copy_elements(at, F_init_flat, .true.)
      F_init_pointer = c_loc(F_init_flat)
    end if
    if (is_contiguous(F_pred)) then
      F_pred_pointer = c_loc(F_pred)
    else
      call element_addresses(F_pred, at)
      if (allocated(at)) allocate(F_pred_flat(size(at, kind=c_size_t)), stat=status)
      if (.not. allocated(F_pred_flat)) then
        call report_no_room_to_copy("F_pred", 16_c_size_t * size(F_pred, kind=c_size_t), stat, errmsg)
        return
      end if
      call copy_elements(at, F_pred_flat, .true.)
      F_pred_pointer = c_loc(F_pred_flat)
    end if
    status = int(c_apply_diagnostics(closure%handle, ncell, F_init_pointer, c_null_ptr, u_pointer, c_null_ptr, &
                                     F_pred_pointer, c_null_ptr, status_pointer, growth_pointer, uncertainty_pointer))
    ! The copies back, as the compiler's copy-out did: a refused call wrote nothing into them.
    if (allocated(F_init_flat)) deallocate(F_init_flat)  ! room for the lists of addresses below
    if (allocated(F_pred_flat)) then
      call element_addresses(F_pred, at)
      if (.not. allocated(at)) go to 90
      call copy_elements(at, F_pred_flat, .false.)
    end if
    if (allocated(status_flat)) then
      call element_addresses(cell_status, at)
      if (.not. allocated(at)) go to 90
      call copy_elements(at, status_flat, .false.)
    end if
    if (allocated(growth_flat)) then
      call element_addresses(growth_rate, at)
      if (.not. allocated(at)) go to 90
      call copy_elements(at, growth_flat, .false.)
    end if
    if (allocated(uncertainty_flat)) then
      call element_addresses(uncertainty, at)
      if (.not. allocated(at)) go to 90
      call copy_elements(at, uncertainty_flat, .false.)
    end if
    call report_call(status, closure, stat, errmsg)
    return
90  call report_no_room("to copy the results back into the non-contiguous sections given (the outputs are partly " // &
                        "written, as after a failed call of dodo.h's)", stat, errmsg)
  end subroutine dodo_apply

  ! A non-contiguous section reaches C as the module's copy, where C's overlap checks cannot see it:
  ! growth_rate = G(1, 1, :) of the F_pred G, one g(1:2*n:2) given as both growth_rate and
  ! uncertainty, F_init and F_pred two strided sections of one array that share cells were computed
  ! on the copies, and the later copy back won, silently (outside probe, C rounds thirty-nine and
  ! forty), where the same arrays contiguous were refused. Each pair C checks, when one of the two
  ! is copied, is compared element by element (by address) and refused in C's words; F_init and
  ! F_pred the same section (each element at the same address) is in-place use. Interleaved
  ! sections that share no element (F(:, :, 1:n:2) and F(:, :, 2:n:2)) pass. Blank problem: none.
  ! Nothing is allocated when every array is contiguous (C checks those itself).
  ! no_room: a list could not be allocated; problem then names the arguments.
  recursive subroutine find_overlap(F_init, F_pred, u, cell_status, growth_rate, uncertainty, problem, no_room)
    real(c_double), intent(in), target :: F_init(..), F_pred(..)
    real(c_double), intent(in), optional, target :: u(..), growth_rate(..), uncertainty(..)
    integer(c_int32_t), intent(in), optional, target :: cell_status(..)
    character(len=*), intent(out) :: problem
    logical, intent(out) :: no_room
    type :: address_list
      integer(c_intptr_t), allocatable :: at(:)
    end type address_list
    type(address_list) :: lists(6)
    logical :: given(6), copied(6)
    integer :: k, i, j
    problem = ""
    no_room = .false.
    given = .true.
    given(3) = present(u)
    given(4) = present(cell_status)
    given(5) = present(growth_rate)
    given(6) = present(uncertainty)
    copied = .false.
    copied(1) = .not. is_contiguous(F_init)
    copied(2) = .not. is_contiguous(F_pred)
    if (given(3)) copied(3) = .not. is_contiguous(u)
    if (given(4)) copied(4) = .not. is_contiguous(cell_status)
    if (given(5)) copied(5) = .not. is_contiguous(growth_rate)
    if (given(6)) copied(6) = .not. is_contiguous(uncertainty)
    if (.not. any(copied)) return
    call element_addresses(F_init, lists(1)%at)
    call element_addresses(F_pred, lists(2)%at)
    if (given(3)) call element_addresses(u, lists(3)%at)
    if (given(4)) call element_addresses(cell_status, lists(4)%at)
    if (given(5)) call element_addresses(growth_rate, lists(5)%at)
    if (given(6)) call element_addresses(uncertainty, lists(6)%at)
    do k = 1, 6
      if (given(k) .and. .not. allocated(lists(k)%at)) then
        no_room = .true.
        problem = "the list of " // trim(argument_name(k)) // "'s element addresses"
        return
      end if
    end do
    do k = 1, 14
      call overlap_pair(k, i, j)
      if (.not. (given(i) .and. given(j))) cycle
      if (.not. (copied(i) .or. copied(j))) cycle
      if (i == 2 .and. j == 1) then
        if (all(lists(1)%at == lists(2)%at)) cycle  ! in place: the same elements in the same order
      end if
      if (.not. shares(lists(i)%at, element_bytes(i), lists(j)%at, element_bytes(j), no_room)) then
        if (no_room) problem = "comparing " // trim(argument_name(i)) // " with " // trim(argument_name(j))
        if (no_room) return
        cycle
      end if
      problem = trim(argument_name(i)) // " overlaps " // trim(argument_name(j))
      if (i == 2 .and. j == 1) problem = trim(problem) // ": pass the same array or section for in-place use, " // &
                                         "or separate arrays"
      if (i == 2 .and. j == 3) problem = trim(problem) // ": the output would change the four-velocities while " // &
                                         "they are read"
      return
    end do
  end subroutine find_overlap

  ! find_overlap's tables as procedures: a named constant array, or an array constructor, of a
  ! procedure is a static array in gfortran's translation (round thirty-eight's test keeps the module
  ! free of them). The arguments are 1 F_init, 2 F_pred, 3 u, 4 cell_status, 5 growth_rate,
  ! 6 uncertainty; pair k (1 to 14) is the k-th C checks, in its order: i overlaps j.
  recursive subroutine overlap_pair(k, i, j)
    integer, intent(in) :: k
    integer, intent(out) :: i, j
    select case (k)
    case (1:2); i = 2; j = 2 * k - 1           ! F_pred: F_init, u
    case (3); i = 4; j = 2                     ! cell_status: F_pred, F_init, u
    case (4); i = 4; j = 1
    case (5); i = 4; j = 3
    case (6:9); i = 5; j = k - 5               ! growth_rate: F_init, F_pred, u, cell_status
    case default; i = 6; j = k - 9             ! uncertainty: F_init, F_pred, u, cell_status, growth_rate
    end select
  end subroutine overlap_pair

  recursive character(len=11) function argument_name(k) result(name)
    integer, intent(in) :: k
    select case (k)
    case (1); name = "F_init"
    case (2); name = "F_pred"
    case (3); name = "u"
    case (4); name = "cell_status"
    case (5); name = "growth_rate"
    case default; name = "uncertainty"
    end select
  end function argument_name

  ! The size of one element of find_overlap's argument k (cell_status's are 4 bytes).
  recursive integer(c_intptr_t) function element_bytes(k)
    integer, intent(in) :: k
    element_bytes = 8
    if (k == 4) element_bytes = 4
  end function element_bytes

  ! True when an element of a (each of size_a bytes) and one of b share a byte. Only the spans'
  ! intersection is looked at: lists in address order (increasing or decreasing: a transport code's
  ! sections) are walked together, others marked in a bitmap of it (one bit a byte) where that is
  ! no larger than sorted copies of the lists, and sorted otherwise (sparse sections of a large
  ! array): linear but for that last case.
  ! no_room: its bitmap or sorted copies could not be allocated (then .false.).
  recursive logical function shares(a, size_a, b, size_b, no_room)
    integer(c_intptr_t), intent(in) :: a(:), b(:), size_a, size_b
    logical, intent(out) :: no_room
    integer(c_intptr_t), allocatable :: x(:), y(:)
    integer(c_int64_t), allocatable :: bits(:)
    integer(c_intptr_t) :: low, high, byte, k
    integer(c_size_t) :: i, j
    integer :: failed
    shares = .false.
    no_room = .false.
    low = max(minval(a), minval(b))
    high = min(maxval(a) + size_a, maxval(b) + size_b)
    if (low >= high) return
    if (.not. (in_address_order(a) .and. in_address_order(b)) .and. &
        (high - low) / 8 <= 8 * (size(a, kind=c_intptr_t) + size(b, kind=c_intptr_t))) then
      allocate(bits(0:(high - low) / 64), stat=failed)
      no_room = failed /= 0
      if (no_room) return
      bits(:) = 0
      do i = 1, size(a, kind=c_size_t)
        do byte = max(a(i), low), min(a(i) + size_a, high) - 1
          k = byte - low
          bits(k / 64) = ibset(bits(k / 64), int(mod(k, 64_c_intptr_t)))
        end do
      end do
      do j = 1, size(b, kind=c_size_t)
        do byte = max(b(j), low), min(b(j) + size_b, high) - 1
          k = byte - low
          shares = btest(bits(k / 64), int(mod(k, 64_c_intptr_t)))
          if (shares) return
        end do
      end do
      return
    end if
    allocate(x(size(a, kind=c_size_t)), y(size(b, kind=c_size_t)), stat=failed)
    no_room = failed /= 0
    if (no_room) return
    x(:) = a
    y(:) = b
    call sort_addresses(x)
    call sort_addresses(y)
    i = 1
    j = 1
    do while (i <= size(x, kind=c_size_t) .and. j <= size(y, kind=c_size_t))
      if (x(i) + size_a <= y(j)) then
        i = i + 1
      else if (y(j) + size_b <= x(i)) then
        j = j + 1
      else
        shares = .true.
        return
      end if
    end do
  end function shares

  ! True for addresses strictly increasing or strictly decreasing.
  recursive logical function in_address_order(x)
    integer(c_intptr_t), intent(in) :: x(:)
    integer(c_size_t) :: i
    logical :: increasing, decreasing
    increasing = .true.
    decreasing = .true.
    do i = 2, size(x, kind=c_size_t)
      increasing = increasing .and. x(i - 1) < x(i)
      decreasing = decreasing .and. x(i - 1) > x(i)
    end do
    in_address_order = increasing .or. decreasing
  end function in_address_order

  ! Into increasing order: nothing to do for increasing addresses, a reversal for decreasing ones
  ! (F(:, :, n:1:-1) has neither), a heap sort otherwise.
  recursive subroutine sort_addresses(x)
    integer(c_intptr_t), intent(inout) :: x(:)
    integer(c_intptr_t) :: swap
    integer(c_size_t) :: n, i
    logical :: increasing, decreasing
    n = size(x, kind=c_size_t)
    increasing = .true.
    decreasing = .true.
    do i = 2, n
      increasing = increasing .and. x(i - 1) < x(i)
      decreasing = decreasing .and. x(i - 1) > x(i)
    end do
    if (increasing) return
    if (decreasing) then  ! swapped in place: x(:) = x(n:1:-1) made a temporary (on the stack under -Ofast)
      do i = 1, n / 2
        swap = x(i)
        x(i) = x(n + 1 - i)
        x(n + 1 - i) = swap
      end do
      return
    end if
    do i = n / 2, 1, -1
      call sift_down(x, i, n)
    end do
    do i = n, 2, -1
      swap = x(1)
      x(1) = x(i)
      x(i) = swap
      call sift_down(x, 1_c_size_t, i - 1)
    end do
  end subroutine sort_addresses

  recursive subroutine sift_down(x, first, last)
    integer(c_intptr_t), intent(inout) :: x(:)
    integer(c_size_t), intent(in) :: first, last
    integer(c_intptr_t) :: swap
    integer(c_size_t) :: root, child
    root = first
    do while (2 * root <= last)
      child = 2 * root
      if (child < last) then
        if (x(child) < x(child + 1)) child = child + 1
      end if
      if (x(root) >= x(child)) return
      swap = x(root)
      x(root) = x(child)
      x(child) = swap
      root = child
    end do
  end subroutine sift_down

  ! The address of each element of x, in array element order: an elemental call passes each element
  ! where it lies, and writes its address through a view of `at` of x's shape, so that no temporary
  ! of x's size is made (an elemental function's result array was one, which -Ofast's
  ! -fstack-arrays put on the stack: round thirty-nine's 100,000-cell section overflowed 8 MiB).
  ! Every rank a Fortran array may have (15), and a scalar. One specific a type: x was one unlimited
  ! polymorphic assumed-rank dummy (C round forty-one), and gfortran 12 passes an assumed-rank array
  ! to such a dummy by copying a descriptor of rank 15 (400 bytes) from the caller's, of x's rank
  ! (64 bytes for a rank-1 section): an over-read of the host's stack, for which AddressSanitizer
  ! stopped a host built with -fsanitize=address at its first non-contiguous section (C round
  ! forty-two). An array of known rank passed to the elemental class(*) helper makes no such copy.
  recursive subroutine real_element_addresses(x, at)
    real(c_double), intent(in), target :: x(..)
    integer(c_intptr_t), allocatable, target, intent(out) :: at(:)
    integer(c_intptr_t), pointer :: at2(:, :)
    integer(c_intptr_t), pointer :: at3(:, :, :)
    integer(c_intptr_t), pointer :: at4(:, :, :, :)
    integer(c_intptr_t), pointer :: at5(:, :, :, :, :)
    integer(c_intptr_t), pointer :: at6(:, :, :, :, :, :)
    integer(c_intptr_t), pointer :: at7(:, :, :, :, :, :, :)
    integer(c_intptr_t), pointer :: at8(:, :, :, :, :, :, :, :)
    integer(c_intptr_t), pointer :: at9(:, :, :, :, :, :, :, :, :)
    integer(c_intptr_t), pointer :: at10(:, :, :, :, :, :, :, :, :, :)
    integer(c_intptr_t), pointer :: at11(:, :, :, :, :, :, :, :, :, :, :)
    integer(c_intptr_t), pointer :: at12(:, :, :, :, :, :, :, :, :, :, :, :)
    integer(c_intptr_t), pointer :: at13(:, :, :, :, :, :, :, :, :, :, :, :, :)
    integer(c_intptr_t), pointer :: at14(:, :, :, :, :, :, :, :, :, :, :, :, :, :)
    integer(c_intptr_t), pointer :: at15(:, :, :, :, :, :, :, :, :, :, :, :, :, :, :)
    integer :: failed
    allocate(at(size(x, kind=c_size_t)), stat=failed)
    if (failed /= 0) return  ! at left unallocated: the caller reports the want of memory
    select rank (x)
    rank (0); call element_address(x, at(1))
    rank (1); call element_address(x, at)
    rank (2); call c_f_pointer(c_loc(at), at2, shape(x)); call element_address(x, at2)
    rank (3); call c_f_pointer(c_loc(at), at3, shape(x)); call element_address(x, at3)
    rank (4); call c_f_pointer(c_loc(at), at4, shape(x)); call element_address(x, at4)
    rank (5); call c_f_pointer(c_loc(at), at5, shape(x)); call element_address(x, at5)
    rank (6); call c_f_pointer(c_loc(at), at6, shape(x)); call element_address(x, at6)
    rank (7); call c_f_pointer(c_loc(at), at7, shape(x)); call element_address(x, at7)
    rank (8); call c_f_pointer(c_loc(at), at8, shape(x)); call element_address(x, at8)
    rank (9); call c_f_pointer(c_loc(at), at9, shape(x)); call element_address(x, at9)
    rank (10); call c_f_pointer(c_loc(at), at10, shape(x)); call element_address(x, at10)
    rank (11); call c_f_pointer(c_loc(at), at11, shape(x)); call element_address(x, at11)
    rank (12); call c_f_pointer(c_loc(at), at12, shape(x)); call element_address(x, at12)
    rank (13); call c_f_pointer(c_loc(at), at13, shape(x)); call element_address(x, at13)
    rank (14); call c_f_pointer(c_loc(at), at14, shape(x)); call element_address(x, at14)
    rank (15); call c_f_pointer(c_loc(at), at15, shape(x)); call element_address(x, at15)
    end select
  end subroutine real_element_addresses

  recursive subroutine int32_element_addresses(x, at)
    integer(c_int32_t), intent(in), target :: x(..)
    integer(c_intptr_t), allocatable, target, intent(out) :: at(:)
    integer(c_intptr_t), pointer :: at2(:, :)
    integer(c_intptr_t), pointer :: at3(:, :, :)
    integer(c_intptr_t), pointer :: at4(:, :, :, :)
    integer(c_intptr_t), pointer :: at5(:, :, :, :, :)
    integer(c_intptr_t), pointer :: at6(:, :, :, :, :, :)
    integer(c_intptr_t), pointer :: at7(:, :, :, :, :, :, :)
    integer(c_intptr_t), pointer :: at8(:, :, :, :, :, :, :, :)
    integer(c_intptr_t), pointer :: at9(:, :, :, :, :, :, :, :, :)
    integer(c_intptr_t), pointer :: at10(:, :, :, :, :, :, :, :, :, :)
    integer(c_intptr_t), pointer :: at11(:, :, :, :, :, :, :, :, :, :, :)
    integer(c_intptr_t), pointer :: at12(:, :, :, :, :, :, :, :, :, :, :, :)
    integer(c_intptr_t), pointer :: at13(:, :, :, :, :, :, :, :, :, :, :, :, :)
    integer(c_intptr_t), pointer :: at14(:, :, :, :, :, :, :, :, :, :, :, :, :, :)
    integer(c_intptr_t), pointer :: at15(:, :, :, :, :, :, :, :, :, :, :, :, :, :, :)
    integer :: failed
    allocate(at(size(x, kind=c_size_t)), stat=failed)
    if (failed /= 0) return  ! at left unallocated: the caller reports the want of memory
    select rank (x)
    rank (0); call element_address(x, at(1))
    rank (1); call element_address(x, at)
    rank (2); call c_f_pointer(c_loc(at), at2, shape(x)); call element_address(x, at2)
    rank (3); call c_f_pointer(c_loc(at), at3, shape(x)); call element_address(x, at3)
    rank (4); call c_f_pointer(c_loc(at), at4, shape(x)); call element_address(x, at4)
    rank (5); call c_f_pointer(c_loc(at), at5, shape(x)); call element_address(x, at5)
    rank (6); call c_f_pointer(c_loc(at), at6, shape(x)); call element_address(x, at6)
    rank (7); call c_f_pointer(c_loc(at), at7, shape(x)); call element_address(x, at7)
    rank (8); call c_f_pointer(c_loc(at), at8, shape(x)); call element_address(x, at8)
    rank (9); call c_f_pointer(c_loc(at), at9, shape(x)); call element_address(x, at9)
    rank (10); call c_f_pointer(c_loc(at), at10, shape(x)); call element_address(x, at10)
    rank (11); call c_f_pointer(c_loc(at), at11, shape(x)); call element_address(x, at11)
    rank (12); call c_f_pointer(c_loc(at), at12, shape(x)); call element_address(x, at12)
    rank (13); call c_f_pointer(c_loc(at), at13, shape(x)); call element_address(x, at13)
    rank (14); call c_f_pointer(c_loc(at), at14, shape(x)); call element_address(x, at14)
    rank (15); call c_f_pointer(c_loc(at), at15, shape(x)); call element_address(x, at15)
    end select
  end subroutine int32_element_addresses

  ! One element's address, of either type the lists are made of (a double of the four-fluxes, u and
  ! the diagnostics, an int32 of cell_status); v is unlimited polymorphic, so both list makers share
  ! it (C round forty-one).
  ! C_LOC takes the nonpolymorphic name of a TYPE IS block. No other type is passed (the module's
  ! own calls); it would get 0, never a stop: the library does not end its host.
  recursive impure elemental subroutine element_address(v, at)
    class(*), intent(in), target :: v
    integer(c_intptr_t), intent(out) :: at
    select type (v)
    type is (real(c_double))
      at = transfer(c_loc(v), at)
    type is (integer(c_int32_t))
      at = transfer(c_loc(v), at)
    class default
      at = 0
    end select
  end subroutine element_address

  ! A non-contiguous argument's elements, at the addresses `at` (element_addresses, array element
  ! order), copied into its contiguous copy flat (to_flat), or back from it. One helper for both
  ! types and both directions (they were four, flatten_real, store_real, flatten_int32 and
  ! store_int32, a select rank of 15 ranks each; C round forty-two).
  recursive subroutine copy_elements(at, flat, to_flat)
    integer(c_intptr_t), intent(in) :: at(:)
    class(*), intent(inout) :: flat(:)
    logical, intent(in) :: to_flat
    real(c_double), pointer :: real_element
    integer(c_int32_t), pointer :: int32_element
    integer(c_size_t) :: i
    select type (flat)
    type is (real(c_double))
      do i = 1, size(at, kind=c_size_t)
        call c_f_pointer(transfer(at(i), c_null_ptr), real_element)
        if (to_flat) then
          flat(i) = real_element
        else
          real_element = flat(i)
        end if
      end do
    type is (integer(c_int32_t))
      do i = 1, size(at, kind=c_size_t)
        call c_f_pointer(transfer(at(i), c_null_ptr), int32_element)
        if (to_flat) then
          flat(i) = int32_element
        else
          int32_element = flat(i)
        end if
      end do
    end select
  end subroutine copy_elements

  ! "(4, 6, 10)": an array's shape for a message ("()" for a scalar), blank-padded (callers trim).
  ! This and count_text give fixed-length results: gfortran (12 at least) keeps the length of a
  ! deferred-length (character(len=:), allocatable) function result in a static variable of the
  ! caller, so that two threads failing at once wrote each other's lengths: a heap overflow (an
  ! OpenMP host's malloc aborted, C round 35's private(closure) test; the same data race as
  ! NOAA-OWP/ngen pull request 1026). No function here returns a deferred-length result.
  recursive character(len=400) function shape_text(dims) result(text)
    integer(c_size_t), intent(in) :: dims(:)
    integer :: i, last
    text = "("
    last = 1  ! text(1:last) is the text so far (trim would drop the blank of ", ")
    do i = 1, min(size(dims), 15)  ! Fortran ranks stop at 15: 15 extents of 20 digits fit
      text = text(1:last) // trim(count_text(dims(i)))
      last = len_trim(text)
      if (i < size(dims)) then
        text = text(1:last) // ", "
        last = last + 2
      end if
    end do
    text = text(1:last) // ")"
  end function shape_text

  recursive character(len=24) function count_text(count) result(text)
    integer(c_size_t), intent(in) :: count
    write (text, '(i0)') count
  end function count_text

  ! True when x, from its dimension `first` on, has as many dimensions as F's cells (F's from the
  ! third) but not their extents: a grid given in another order (u(4, ny, nx) for F(4, 6, nx, ny)).
  ! Extents compared one by one (no shape() temporary: a call that succeeds allocates nothing).
  recursive logical function grid_differs(x, first, F) result(differs)
    type(*), intent(in) :: x(..)
    integer, intent(in) :: first
    real(c_double), intent(in) :: F(..)
    integer :: k
    differs = .false.
    if (rank(x) - first + 1 /= rank(F) - 2) return
    do k = 3, rank(F)
      if (size(x, k - 3 + first, kind=c_size_t) /= size(F, k, kind=c_size_t)) differs = .true.
    end do
  end function grid_differs

  ! .true. (and the refusal reported) when x is present and associated with an assumed-size
  ! array: its last extent is then -1 (Fortran 2018, SIZE), which no array of known shape has, so
  ! the number of cells it holds is unknown here. A call that passes allocates nothing.
  recursive logical function refused_as_assumed_size(name, section, stat, errmsg, x) result(refused)
    character(len=*), intent(in) :: name, section
    integer, intent(out), optional :: stat
    character(len=*), intent(inout), optional :: errmsg
    type(*), intent(in), optional :: x(..)
    refused = .false.
    if (.not. present(x)) return
    if (rank(x) < 1) return
    if (size(x, rank(x), kind=c_size_t) >= 0) return
    refused = .true.
    call report(DODO_ERROR_INVALID_ARGUMENT, name // " is an assumed-size array (its last dimension declared *): " // &
                "the dodo module cannot know how many cells it holds; pass a section that gives its last extent, " // &
                "e.g. " // section, stat, errmsg)
  end function refused_as_assumed_size

  ! True for an array of shape (4, 6, ...).
  recursive logical function cells_shaped(F)
    real(c_double), intent(in) :: F(..)
    cells_shaped = .false.
    if (rank(F) < 2) return
    cells_shaped = size(F, 1) == 4 .and. size(F, 2) == 6
  end function cells_shaped

  ! Runs the model's embedded test vectors; max_error in units of N_tot.
  recursive subroutine dodo_self_test(closure, max_error, stat, errmsg)
    type(dodo_closure), intent(in) :: closure
    real(c_double), intent(out), optional :: max_error
    integer, intent(out), optional :: stat
    character(len=*), intent(inout), optional :: errmsg
    real(c_double) :: worst
    integer :: status
    worst = 0
    status = int(c_self_test(closure%handle, worst))
    if (present(max_error)) max_error = worst
    call report_call(status, closure, stat, errmsg)
  end subroutine dodo_self_test

  recursive subroutine dodo_get_counters(closure, counters, stat, errmsg)
    type(dodo_closure), intent(in) :: closure
    type(dodo_counters), intent(out) :: counters
    integer, intent(out), optional :: stat
    character(len=*), intent(inout), optional :: errmsg
    integer :: status
    status = int(c_get_counters(closure%handle, counters))
    call report_call(status, closure, stat, errmsg)
  end subroutine dodo_get_counters

  ! Sets the counters to zero (e.g. at each time step, to read that step's counts).
  recursive subroutine dodo_reset_counters(closure, stat, errmsg)
    type(dodo_closure), intent(in) :: closure
    integer, intent(out), optional :: stat
    character(len=*), intent(inout), optional :: errmsg
    call report_call(int(c_reset_counters(closure%handle)), closure, stat, errmsg)
  end subroutine dodo_reset_counters

  ! .true. if the closure carries a model, .false. if it is Box3D-only (or not created).
  recursive logical function dodo_has_model(closure)
    type(dodo_closure), intent(in) :: closure
    dodo_has_model = c_has_model(closure%handle) /= 0_c_int
  end function dodo_has_model

  ! The model's metadata value for key (e.g. "dodo.model_kind"); "" and found = .false. when the
  ! key is absent, the closure Box3D-only or not created. Trailing blanks of key are dropped, and a
  ! trailing C-style terminator (NULs and blanks only, key // c_null_char), as model_path's is; a
  ! key holding a NUL before its end is absent (C would read it cut at the NUL: another key), as in
  ! dodo.hpp.
  recursive function dodo_get_metadata(closure, key, found) result(value)
    type(dodo_closure), intent(in) :: closure
    character(len=*), intent(in) :: key
    logical, intent(out), optional :: found
    character(len=:), allocatable :: value
    character(kind=c_char), allocatable :: key_c(:)
    character(kind=c_char), allocatable :: buffer(:)
    character(kind=c_char) :: probe(1)
    integer(c_long) :: length
    integer :: i, n, nul
    allocate(character(len=0) :: value)  ! not value = "": a RECURSIVE result is not yet allocated (-Wall)
    if (present(found)) found = .false.
    n = len_trim(key)
    nul = index(key, c_null_char)
    if (nul > 0) then
      if (verify(key(nul:), c_null_char // " ") /= 0) return
      n = len_trim(key(1:nul - 1))
    end if
    allocate(key_c(n + 1))
    do i = 1, n
      key_c(i) = key(i:i)
    end do
    key_c(n + 1) = c_null_char
    length = c_get_metadata(closure%handle, key_c, probe, 0_c_size_t)
    if (length < 0) return
    allocate(buffer(length + 1))
    buffer = c_null_char
    length = c_get_metadata(closure%handle, key_c, buffer, int(size(buffer), c_size_t))
    if (length < 0 .or. length >= size(buffer, kind=c_long)) return  ! c_long: -Wconversion-extra -Werror hosts
    deallocate(value)
    allocate(character(len=length) :: value)
    do i = 1, int(length)  ! the whole value, NUL characters included
      value(i:i) = buffer(i)
    end do
    if (present(found)) found = .true.
  end function dodo_get_metadata

  recursive function dodo_version_string() result(version)
    character(len=:), allocatable :: version
    call copy_c_string(c_version(), version)
  end function dodo_version_string

  ! The commit libdodo was built from (dodo.h's dodo_build_id): 40 hex digits, "-dirty" added for
  ! uncommitted changes to its sources, or "unknown".
  recursive function dodo_build_id_string() result(id)
    character(len=:), allocatable :: id
    call copy_c_string(c_build_id(), id)
  end function dodo_build_id_string

  ! Path of the default model shipped with Dodo (the one Python's dodo.Closure() loads); "" if
  ! it is not installed next to libdodo.
  recursive function dodo_default_model_path() result(path)
    character(len=:), allocatable :: path
    call copy_c_string(c_default_model_path(), path)
  end function dodo_default_model_path

  ! --- helpers -------------------------------------------------------------------------------

  recursive function make_options(threads, chunk_size, lebedev_order, max_flux_factor, run_self_test, cuda_device) &
      result(options)
    integer, intent(in), optional :: threads, chunk_size, lebedev_order, cuda_device
    real(c_double), intent(in), optional :: max_flux_factor
    logical, intent(in), optional :: run_self_test
    type(options_c) :: options
    call c_options_init(options, c_sizeof(options))
    if (present(threads)) options%threads = to_c_int(threads)
    if (present(chunk_size)) options%chunk_size = to_c_int(chunk_size)
    if (present(lebedev_order)) options%lebedev_order = to_c_int(lebedev_order)
    if (present(max_flux_factor)) options%max_flux_factor = max_flux_factor
    if (present(run_self_test)) then
      options%run_self_test = merge(1_c_int, 0_c_int, run_self_test)
    end if
    if (present(cuda_device)) then
      options%device = DEVICE_CUDA
      options%device_id = to_c_int(cuda_device)
    end if
  end function make_options

  ! Refuses (in `problem`) a module compiled with a flag that changes the size of C's kinds:
  ! gfortran's -finteger-4-integer-8 makes c_int and c_int32_t 8 bytes, -freal-8-real-16 (or -10)
  ! c_double 16 (10), so dodo_options and the arrays no longer match dodo.h. The create was refused
  ! by C as "dodo_options.struct_size 80 is larger than this library's (64 bytes): the program was
  ! built against a newer dodo.h", which blamed the wrong thing (outside probe, C round thirty-nine).
  recursive subroutine check_c_kinds(problem)
    character(len=*), intent(inout) :: problem
    character(len=12) :: sizes
    if (len_trim(problem) > 0) return
    if (c_sizeof(0_c_size_t) /= 8 .or. c_sizeof(c_null_ptr) /= 8) then
      problem = "dodo.f90 describes dodo_options for a 64-bit target (8-byte pointers and size_t), and this " // &
                "compiler's are not: use the C API from a 64-bit build"
      return
    end if
    if (c_sizeof(0_c_int) == 4 .and. c_sizeof(0_c_int32_t) == 4 .and. c_sizeof(0_c_int64_t) == 8 .and. &
        c_sizeof(0.0_c_double) == 8) return
    write (sizes, '(i0, a, i0)') c_sizeof(0_c_int), ", ", c_sizeof(0.0_c_double)
    problem = "dodo.f90 was compiled with a flag that changes C's kinds (c_int, c_double: " // trim(sizes) // &
              " bytes, not 4, 8), e.g. -finteger-4-integer-8 or -freal-8-real-16: compile dodo.f90 without it"
  end subroutine check_c_kinds

  ! The string options as C strings in z_method_c and library_c (which must outlive the C call),
  ! their pointers in options; a refusal goes to `problem` (left as it is when there is none).
  recursive subroutine text_options(options, z_method, onnxruntime_library, z_method_c, library_c, problem)
    type(options_c), intent(inout) :: options
    character(len=*), intent(in), optional :: z_method, onnxruntime_library
    character(kind=c_char), allocatable, target, intent(inout) :: z_method_c(:), library_c(:)
    character(len=*), intent(inout) :: problem
    if (present(z_method)) then
      if (checked_c_string(z_method, "z_method", z_method_c, problem)) options%z_method = c_loc(z_method_c)
    end if
    if (present(onnxruntime_library)) then
      if (checked_c_string(onnxruntime_library, "onnxruntime_library", library_c, problem)) &
        options%onnxruntime_library = c_loc(library_c)
    end if
  end subroutine text_options

  ! text as a C string in c_text, trailing blanks dropped; .false. (and `problem` set, when it is
  ! still empty) if text holds a NUL before its end: C would read only the part before it. A NUL
  ! followed only by NULs and blanks (a C-style terminator) ends the text.
  recursive logical function checked_c_string(text, name, c_text, problem) result(ok)
    character(len=*), intent(in) :: text, name
    character(kind=c_char), allocatable, intent(inout) :: c_text(:)
    character(len=*), intent(inout) :: problem
    integer :: nul
    nul = index(text, c_null_char)
    ok = .true.
    if (nul == 0) then
      call to_c_string(text, c_text)
    else if (verify(text(nul:), c_null_char // " ") == 0) then
      call to_c_string(text(1:nul - 1), c_text)
    else
      ok = .false.
      if (len_trim(problem) == 0) &
        problem = name // " contains a NUL character before its end (C would read only the part before it)"
    end if
  end function checked_c_string

  ! An integer option as C's int. A value beyond its range (possible in a code compiled with
  ! -fdefault-integer-8) becomes +-huge(0_c_int), which the library refuses naming the option,
  ! instead of wrapping silently (threads = 2**32 + 1 used to give one thread).
  recursive integer(c_int) function to_c_int(value)
    integer, intent(in) :: value
    if (value > huge(0_c_int)) then
      to_c_int = huge(0_c_int)
    else if (value < -huge(0_c_int)) then
      to_c_int = -huge(0_c_int)
    else
      to_c_int = int(value, c_int)
    end if
  end function to_c_int

  ! A call's status: its message (this thread's last error) is read only on failure. Read on every
  ! call, it cost three heap allocations per dodo_apply in a time loop that succeeds (probe round
  ! twelve of the C side), where the library itself allocates nothing per call after warm-up.
  ! A created closure replaces the one the variable held (destroyed only now); a failed creation
  ! leaves the variable's closure as it was, as C++'s move assignment does (probe round twelve of
  ! the C side: the old one was destroyed first, so a failed re-creation left the host with none).
  recursive subroutine replace_handle(closure, fresh, status)
    type(dodo_closure), intent(inout) :: closure
    type(c_ptr), intent(in) :: fresh
    integer, intent(in) :: status
    if (status /= DODO_OK) then
      if (c_associated(fresh)) call c_destroy(fresh)
      return
    end if
    if (c_associated(closure%handle)) call c_destroy(closure%handle)
    closure%handle = fresh
  end subroutine replace_handle

  recursive subroutine report_call(status, closure, stat, errmsg)
    integer, intent(in) :: status
    type(dodo_closure), intent(in) :: closure
    integer, intent(out), optional :: stat
    character(len=*), intent(inout), optional :: errmsg
    character(kind=c_char), allocatable :: buffer(:)
    character(kind=c_char) :: probe(1)
    integer(c_size_t) :: length
    integer :: n
    if (status == DODO_OK) then
      if (present(stat)) stat = DODO_OK
      return
    end if
    ! This thread's own last error (a NULL handle asks for it): another thread sharing the handle
    ! cannot replace it, and a destroyed handle (a copy of the type kept after dodo_destroy) has one.
    ! Its length first, then the whole text: a fixed buffer of 1,024 cut long messages (a model
    ! path of some thousand characters), losing the reason at their end.
    length = c_last_error(c_null_ptr, probe, 1_c_size_t)
    allocate(buffer(length + 1))
    buffer = c_null_char
    length = c_last_error(c_null_ptr, buffer, int(size(buffer), c_size_t))
    n = 0
    do while (n < size(buffer) - 1)
      if (buffer(n + 1) == c_null_char) exit
      n = n + 1
    end do
    call report_last_error(status, closure, buffer, n, stat, errmsg)
  end subroutine report_call

  ! The message in buffer(1:n) as text of length n: an automatic object, where a deferred-length
  ! (character(len=:), allocatable) local kept its length in static storage under -fno-automatic
  ! even in a RECURSIVE procedure (gfortran 12: outside probe, C round thirty-eight).
  recursive subroutine report_last_error(status, closure, buffer, n, stat, errmsg)
    integer, intent(in) :: status, n
    type(dodo_closure), intent(in) :: closure
    character(kind=c_char), intent(in) :: buffer(:)
    integer, intent(out), optional :: stat
    character(len=*), intent(inout), optional :: errmsg
    character(len=n) :: message
    integer :: i
    do i = 1, n
      message(i:i) = buffer(i)
    end do
    if (n == 0 .and. .not. c_associated(closure%handle)) then
      call report(status, "closure handle is not created", stat, errmsg)
    else if (.not. c_associated(closure%handle) .and. message == "closure handle is NULL") then
      ! C's words for its NULL pointer, which a Fortran host never saw: it holds a type(dodo_closure)
      ! (outside probe of the C side, round fourteen; the failure path only).
      call report(status, "this dodo_closure holds no closure (never created, its dodo_create failed, or " // &
                  "dodo_destroy destroyed it): call dodo_create first", stat, errmsg)
    else
      call report(status, message, stat, errmsg)
    end if
  end subroutine report_last_error

  ! A non-contiguous argument is copied, and its elements' addresses listed (8 bytes each), in arrays
  ! of the module's own: with too little memory for them gfortran's runtime ended the host ("Error
  ! allocating N bytes: Cannot allocate memory", error termination) even where the call had stat=
  ! (outside probe, C round fifty-one). Now DODO_ERROR_OUT_OF_MEMORY, as from C.
  recursive subroutine report_no_room(what, stat, errmsg)
    character(len=*), intent(in) :: what
    integer, intent(out), optional :: stat
    character(len=*), intent(inout), optional :: errmsg
    call report(DODO_ERROR_OUT_OF_MEMORY, "out of memory " // what // ": pass contiguous arrays, which are " // &
                "not copied, or give the process more memory", stat, errmsg)
  end subroutine report_no_room

  recursive subroutine report_no_room_to_copy(name, bytes, stat, errmsg)
    character(len=*), intent(in) :: name
    integer(c_size_t), intent(in) :: bytes  ! the copy's and the addresses'
    integer, intent(out), optional :: stat
    character(len=*), intent(inout), optional :: errmsg
    call report_no_room("for dodo.f90's copy of the non-contiguous section given as " // name // " (" // &
                        trim(count_text(bytes)) // " bytes with its elements' addresses)", stat, errmsg)
  end subroutine report_no_room_to_copy

  recursive subroutine report(status, message, stat, errmsg)
    integer, intent(in) :: status
    character(len=*), intent(in) :: message
    integer, intent(out), optional :: stat
    character(len=*), intent(inout), optional :: errmsg
    if (present(stat)) stat = status
    if (status /= DODO_OK .and. present(errmsg)) call copy_whole_characters(message, errmsg)
    if (status /= DODO_OK .and. .not. present(stat)) error stop "dodo: " // message
  end subroutine report

  ! text into errmsg, blank-padded, cut if longer before a character, not inside one (messages
  ! are UTF-8; an errmsg shorter than the message took it cut inside a character: probe round
  ! seventeen of the C side).
  recursive subroutine copy_whole_characters(text, errmsg)
    character(len=*), intent(in) :: text
    character(len=*), intent(out) :: errmsg
    integer :: k
    k = min(len(text), len(errmsg))
    if (k < len(text)) then
      do while (k > 0)
        if (iand(ichar(text(k + 1:k + 1)), 192) /= 128) exit
        k = k - 1
      end do
    end if
    errmsg = text(1:k)
  end subroutine copy_whole_characters

  ! Copy of a static NUL-terminated C string ("" for NULL).
  recursive subroutine copy_c_string(pointer, text)
    type(c_ptr), intent(in) :: pointer
    character(len=:), allocatable, intent(out) :: text
    character(kind=c_char), pointer :: chars(:)
    integer :: i, n
    if (.not. c_associated(pointer)) then
      allocate(character(len=0) :: text)  ! not text = "": see to_c_string
      return
    end if
    n = int(c_strlen(pointer))
    call c_f_pointer(pointer, chars, [n])
    allocate(character(len=n) :: text)
    do i = 1, n
      text(i:i) = chars(i)
    end do
  end subroutine copy_c_string

  ! text, trailing blanks dropped, as a C string in c_text. A subroutine that allocates c_text
  ! itself: no allocatable here is given its size by an assignment (F2003's reallocation on
  ! assignment), which gfortran's -fno-realloc-lhs (ifort's old default, a flag of codes built by
  ! both) turns off: c_text = to_c_string(text) on the unallocated c_text then wrote through a null
  ! pointer, and every dodo_create with a model path died of SIGSEGV (outside probe, C round
  ! thirty-nine).
  recursive subroutine to_c_string(text, c_text)
    character(len=*), intent(in) :: text
    character(kind=c_char), allocatable, intent(inout) :: c_text(:)
    integer :: i, n
    n = len_trim(text)
    if (allocated(c_text)) deallocate(c_text)
    allocate(c_text(n + 1))
    do i = 1, n
      c_text(i) = text(i:i)
    end do
    c_text(n + 1) = c_null_char
  end subroutine to_c_string

end module dodo
