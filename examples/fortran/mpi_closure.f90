! Example 5 (Fortran + MPI): one closure per rank, the model read from disk by rank 0 only.
!
! Rank 0 reads the model package as a byte stream, MPI_Bcast sends the bytes, and every rank
! creates its closure from memory (dodo_create_from_memory: the same checks as a file). No
! other rank touches the file system, which matters at 10^4 ranks.
!
! Threads per rank: 1 here (one rank per core, the usual layout). A code with fewer ranks than
! cores gives each rank the node's cores divided by its ranks there, never more than the cores the
! rank is bound to (the C example, examples/c/mpi_closure.c, does both). Devices: with an onnxruntime-gpu library, pass "cuda" and each rank uses device
! (node-local rank mod GPUs per node), here assumed 1 GPU per node.
!
! Build:  mpif90 dodo.f90 mpi_closure.f90 $(pkg-config --libs dodo) -o mpi_closure
! Run:    mpirun -n 4 ./mpi_closure MODEL.onnx [cuda]
program mpi_closure
  use mpi_f08
  use dodo
  use, intrinsic :: iso_fortran_env, only: error_unit
  implicit none
  integer, parameter :: ncell = 2048, gpus_per_node = 1
  integer(c_int8_t), allocatable :: package(:)
  real(c_double), allocatable :: F(:, :, :), F_pred(:, :, :), u(:, :)
  type(dodo_closure) :: closure
  type(MPI_Comm) :: node
  character(len=1024) :: device, message
  character(len=:), allocatable :: model  ! the argument's own length: a fixed length cut a longer path
  integer :: rank, nranks, local_rank, stat, unit, a, c, failed, any_failed, length
  integer(c_int64_t) :: package_size, file_size
  real(c_double) :: x, density, flux, vx, W, violation, worst

  call MPI_Init()
  call MPI_Comm_rank(MPI_COMM_WORLD, rank)
  call MPI_Comm_size(MPI_COMM_WORLD, nranks)
  call MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, node)
  call MPI_Comm_rank(node, local_rank)
  call MPI_Comm_free(node)
  device = ""
  if (command_argument_count() < 1) then
    if (rank == 0) write (error_unit, '(a)') "usage: mpi_closure MODEL.onnx [cuda]"
    call MPI_Finalize()
    stop 2, quiet=.true.  ! gfortran printed "STOP 2" on every rank
  end if
  ! The path at its own length: a character(len=1024) cut a longer one, silently, and rank 0 refused
  ! a package that exists under the cut name (outside probe, C round forty-seven).
  call get_command_argument(1, length=length)
  allocate(character(len=length) :: model)  ! allocated, not assigned: -fno-realloc-lhs hosts too
  call get_command_argument(1, model)
  if (command_argument_count() > 1) call get_command_argument(2, device)

  ! 1. Rank 0 reads the package; its size goes first (-1: could not read). The file's size is
  !    asked before it is opened: a FIFO (size 0) would block the open until a writer came, with
  !    every other rank waiting in MPI_Bcast; an empty package is refused in any case.
  !    A file above DODO_MAX_MODEL_FILE_BYTES (a data file given by mistake) is not read: every rank
  !    received it whole before the library refused it, and one above 2 GiB was called "missing,
  !    empty, unreadable or not a regular file" (outside probe, C round forty-seven).
  package_size = -1
  file_size = -1
  if (rank == 0) then
    inquire(file=model, size=package_size)
    file_size = package_size
    if (package_size > DODO_MAX_MODEL_FILE_BYTES) package_size = -2
    stat = 1
    if (package_size > 0) open(newunit=unit, file=model, access="stream", form="unformatted", status="old", &
                               action="read", iostat=stat)
    if (stat /= 0 .and. package_size /= -2) package_size = -1
    if (stat == 0) then
      inquire(unit=unit, size=package_size)
      allocate(package(package_size))
      read(unit, iostat=stat) package
      if (stat /= 0) package_size = -1
      close(unit)
    end if
  end if
  call MPI_Bcast(package_size, 1, MPI_INTEGER8, 0, MPI_COMM_WORLD)
  if (package_size < 0) then
    if (rank == 0 .and. package_size == -2) then
      print '(3a, i0, a, i0, a)', 'model file "', model, '" is ', file_size, ' bytes; a model package is at most ', &
        DODO_MAX_MODEL_FILE_BYTES, ' bytes (DODO_MAX_MODEL_FILE_BYTES)'
    else if (rank == 0) then
      print '(3a)', 'cannot read the model package "', model, '" (missing, empty, unreadable or not a regular file)'
    end if
    call MPI_Finalize()
    stop 1, quiet=.true.  ! status 1, no "STOP 1" per rank (`error stop` prints a backtrace: reads as a crash)
  end if
  if (rank /= 0) allocate(package(package_size))
  call MPI_Bcast(package, int(package_size), MPI_BYTE, 0, MPI_COMM_WORLD)

  ! 2. Every rank creates its own closure from the bytes, then frees them.
  if (trim(device) == "cuda") then
    call dodo_create_from_memory(closure, package, threads=1, run_self_test=.true., stat=stat, errmsg=message, &
                                 cuda_device=mod(local_rank, gpus_per_node))
  else
    call dodo_create_from_memory(closure, package, threads=1, run_self_test=.true., stat=stat, errmsg=message)
  end if
  deallocate(package)
  failed = merge(1, 0, stat /= DODO_OK)
  call report_failure("dodo_create_from_memory", failed, stat, message)
  call MPI_Allreduce(failed, any_failed, 1, MPI_INTEGER, MPI_MAX, MPI_COMM_WORLD)
  if (any_failed == 1) then
    call dodo_destroy(closure)
    call MPI_Finalize()
    stop 1, quiet=.true.
  end if

  ! 3. This rank's cells, the closure, and the host's own conservation check.
  allocate(F(4, 6, ncell), F_pred(4, 6, ncell), u(4, ncell))
  do c = 1, ncell
    x = (rank * ncell + c - 0.5d0) / (4d0 * ncell)
    do a = 1, 6
      density = 1d32 * (0.4d0 + 0.1d0 * a + 0.3d0 * mod(x, 1d0))
      flux = (0.1d0 + 0.3d0 * mod(3 * x, 1d0)) * density
      if (a == 4) flux = -flux  ! nubar_e against nu_e: an ELN crossing
      F(:, a, c) = [density, flux * cos(0.3d0 * a), flux * sin(0.3d0 * a), 0d0]
    end do
    vx = 0.2d0 * (mod(x, 1d0) - 0.5d0)
    W = 1d0 / sqrt(1d0 - vx * vx)
    u(:, c) = [W, W * vx, 0d0, 0d0]
  end do
  call dodo_apply(closure, F, F_pred, u=u, stat=stat, errmsg=message)
  failed = merge(1, 0, stat /= DODO_OK)
  call report_failure("dodo_apply", failed, stat, message)
  violation = 0
  do c = 1, ncell
    violation = max(violation, abs(sum(F_pred(1, 1:3, c)) - sum(F(1, 1:3, c))) / sum(F(1, 1:3, c)))
  end do
  call MPI_Reduce(violation, worst, 1, MPI_DOUBLE_PRECISION, MPI_MAX, 0, MPI_COMM_WORLD)
  call MPI_Allreduce(failed, any_failed, 1, MPI_INTEGER, MPI_MAX, MPI_COMM_WORLD)
  if (rank == 0) print '(i0, 2a, i0, a, i0, a, es8.1)', nranks, trim(merge(" rank ", " ranks", nranks == 1)), &
      " (model of ", package_size, " bytes broadcast from rank 0): ", nranks * ncell, &
      " cells, largest relative change of the neutrino number ", worst
  call dodo_destroy(closure)
  call MPI_Finalize()
  deallocate(F, F_pred, u, model)  ! by hand: gfortran does not free the main program's arrays (LeakSanitizer)
  if (any_failed == 1 .or. (rank == 0 .and. worst > 1d-12)) stop 1, quiet=.true.

contains

  ! A failed call's error, printed once for the job (collective: every rank calls it). Rank 0 names
  ! every rank whose error is its own (the same status and message: a file that is not a model
  ! package, "cuda" without a CUDA provider) in one line; a rank whose error differs prints its own.
  ! Each rank printed its line before: N copies of one error on N ranks.
  subroutine report_failure(call_name, failed, stat, message)
    character(len=*), intent(in) :: call_name, message
    integer, intent(in) :: failed, stat
    character(len=len(message)) :: first_message
    integer :: first(2), alike, alike_ranks
    first = [failed, stat]
    first_message = message
    call MPI_Bcast(first, 2, MPI_INTEGER, 0, MPI_COMM_WORLD)  ! rank 0's error, to compare with
    call MPI_Bcast(first_message, len(first_message), MPI_CHARACTER, 0, MPI_COMM_WORLD)
    alike = merge(1, 0, failed == 1 .and. first(1) == 1 .and. first(2) == stat .and. first_message == message)
    call MPI_Reduce(alike, alike_ranks, 1, MPI_INTEGER, MPI_SUM, 0, MPI_COMM_WORLD)
    if (rank == 0 .and. failed == 1) then
      if (nranks > 1 .and. alike_ranks == nranks) then
        print '(a, i0, 3a, i0, 2a)', "all ", nranks, " ranks: ", call_name, " failed, status ", stat, ": ", &
                                     trim(message)
      else if (alike_ranks > 1) then
        print '(a, i0, 3a, i0, 2a)', "rank 0 and ", alike_ranks - 1, " other rank(s): ", call_name, &
                                     " failed, status ", stat, ": ", trim(message)
      else
        print '(3a, i0, 2a)', "rank 0: ", call_name, " failed, status ", stat, ": ", trim(message)
      end if
    else if (failed == 1 .and. alike == 0) then
      print '(a, i0, 3a, i0, 2a)', "rank ", rank, ": ", call_name, " failed, status ", stat, ": ", trim(message)
    end if
  end subroutine report_failure
end program mpi_closure
