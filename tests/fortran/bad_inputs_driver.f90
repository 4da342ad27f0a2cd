! Driver of tests/python/test_bad_inputs.py: applies the closure to the cells in a binary file
! (stream: int64 ncell, F(4,6,ncell), u(4,ncell)) and writes F_pred, cell_status and the stat
! codes of the wrong-shape and zero-length calls to another binary file.
program bad_inputs_driver
  use dodo
  use, intrinsic :: iso_c_binding, only: c_int64_t
  implicit none
  type(dodo_closure) :: closure
  character(len=4096) :: model, input, output
  character(len=512) :: message
  integer(c_int64_t) :: ncell
  real(c_double), allocatable :: F(:, :, :), F_pred(:, :, :), u(:, :), wrong(:, :, :), empty(:, :, :)
  integer(c_int32_t), allocatable :: cell_status(:)
  integer :: unit, stat, stats(4)

  call get_command_argument(1, model)
  call get_command_argument(2, input)
  call get_command_argument(3, output)
  open(newunit=unit, file=trim(input), access="stream", form="unformatted", status="old")
  read(unit) ncell
  allocate(F(4, 6, ncell), F_pred(4, 6, ncell), u(4, ncell), cell_status(ncell))
  read(unit) F, u
  close(unit)

  call dodo_create(closure, trim(model), threads=1, stat=stat, errmsg=message)
  if (stat /= DODO_OK) then
    print '(a)', "create failed: " // trim(message)
    stop 1
  end if
  F_pred = -1.0_c_double
  call dodo_apply(closure, F, F_pred, u=u, cell_status=cell_status, stat=stat, errmsg=message)
  stats(1) = stat
  allocate(wrong(4, 5, ncell), empty(4, 6, 0))
  message = ""
  call dodo_apply(closure, F, wrong, stat=stat, errmsg=message)             ! wrong shape of F_pred
  stats(2) = stat
  print '(a)', "wrong shape: " // trim(message)
  message = ""
  call dodo_apply(closure, F, F_pred, u=u(:, 1:1), stat=stat, errmsg=message)  ! u of the wrong length
  stats(3) = stat
  print '(a)', "wrong u: " // trim(message)
  call dodo_apply(closure, empty, empty, stat=stat)                          ! zero cells
  stats(4) = stat
  call dodo_destroy(closure)

  open(newunit=unit, file=trim(output), access="stream", form="unformatted", status="replace")
  write(unit) F_pred, cell_status, stats
  close(unit)
end program bad_inputs_driver
