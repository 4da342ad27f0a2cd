! Example 3 (Fortran): the closure over a grid whose moments live in F(4, 6, ncell) — component,
! species, cell — the layout Dodo reads without copies.
!
! Build:  gfortran dodo.f90 grid_closure.f90 $(pkg-config --libs dodo) -o grid_closure
!         (dodo.f90 is installed in $(pkg-config --variable=includedir dodo)/dodo/)
!         (dodo.f90 is Fortran 2018: with your -std=f2008, compile it apart with -std=f2018)
! Run:    ./grid_closure MODEL.onnx      (no argument: Box3D only)
program grid_closure
  use dodo
  use, intrinsic :: iso_fortran_env, only: error_unit
  implicit none
  integer, parameter :: nx = 12, ny = 12, nz = 6, ncell = nx * ny * nz
  real(c_double), allocatable :: F(:, :, :), F_pred(:, :, :), u(:, :)
  integer(c_int32_t), allocatable :: cell_status(:)
  type(dodo_closure) :: closure
  type(dodo_counters) :: counters
  character(len=:), allocatable :: model  ! the argument's own length: a fixed length cut a longer path
  ! errmsg takes the message cut to its length: the list of ONNX Runtime libraries tried can pass 512
  ! characters, and lost its end (the reason) in one of 512
  character(len=4096) :: message
  integer :: i, j, k, a, c, stat, length
  real(c_double) :: x, density, flux, worst, vx, W

  allocate(F(4, 6, ncell), F_pred(4, 6, ncell), u(4, ncell), cell_status(ncell))
  do k = 1, nz
    do j = 1, ny
      do i = 1, nx
        c = i + nx * ((j - 1) + ny * (k - 1))
        x = (i - 0.5d0) / nx
        do a = 1, 6
          density = 1d32 * (0.4d0 + 0.1d0 * a + 0.2d0 * x)
          flux = (0.1d0 + 0.3d0 * x) * density
          if (a == 4) flux = -flux          ! nubar_e against nu_e: an ELN crossing
          F(:, a, c) = [density, flux * cos(0.3d0 * a), flux * sin(0.3d0 * a), 0d0]
        end do
        vx = 0.05d0 * (j - ny / 2) / ny
        W = 1d0 / sqrt(1d0 - vx * vx)
        u(:, c) = [W, W * vx, 0d0, 0d0]
      end do
    end do
  end do

  ! No argument: Box3D alone; dodo_default_model_path() is the shipped model. The argument is read
  ! at its own length: into a character(len=512) a longer path was cut, silently, and a model that
  ! exists was refused as "does not exist" under the cut name (outside probe, C round forty-seven).
  if (command_argument_count() > 0) then
    call get_command_argument(1, length=length)
    allocate(character(len=length) :: model)  ! allocated, not assigned: -fno-realloc-lhs hosts too
    call get_command_argument(1, model)
  else
    allocate(character(len=len(DODO_BOX3D_ONLY)) :: model)
    model = DODO_BOX3D_ONLY
  end if
  call dodo_create(closure, model, threads=2, run_self_test=.true., stat=stat, errmsg=message)
  if (stat /= DODO_OK) then
    write (error_unit, '(a, i0, 2a)') "dodo_create failed, status ", stat, ": ", trim(message)
    flush (error_unit)
    stop 1  ! exit status 1 (gfortran's `error stop` also prints a backtrace, which reads as a crash)
  end if

  call dodo_apply(closure, F, F_pred, u=u, cell_status=cell_status, stat=stat, errmsg=message)
  if (stat /= DODO_OK) then
    write (error_unit, '(2a)') "dodo_apply failed: ", trim(message)
    flush (error_unit)
    stop 1
  end if

  ! Total neutrino four-flux is conserved in every cell (flavour sum of the change = 0).
  worst = 0
  do c = 1, ncell
    worst = max(worst, maxval(abs(sum(F_pred(:, 1:3, c) - F(:, 1:3, c), dim=2))) / sum(F(1, :, c)))
  end do
  call dodo_get_counters(closure, counters)
  print '(3a, i0, a, i0, a, es9.2)', "dodo ", dodo_version_string(), ": ", int(counters%cells), &
        " cells, rejected ", int(counters%rejected), ", flavour-sum violation ", worst
  call dodo_destroy(closure)
  ! The main program's arrays are freed by hand: gfortran does not free them at its end, and a host
  ! built with -fsanitize=address (LeakSanitizer) or run under valgrind saw them as leaks, exit 1
  ! from LeakSanitizer (outside probe, C round forty-nine).
  deallocate(F, F_pred, u, cell_status, model)
  if (worst > 1d-12 .or. counters%cells /= ncell) error stop 1
end program grid_closure
