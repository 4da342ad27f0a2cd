! gfortran test of the Fortran module: no-copy (4, 6, ncell) arrays, stat/errmsg error paths,
! self-test, counters; with three more arguments the growth rate and uncertainty (a model with
! the optional outputs, one that declares an output it lacks, and a file that receives the cells
! and results for the Python parity test).
! Usage: test_fortran_api MODEL.onnx [DIAGNOSTICS_MODEL.onnx MISDECLARED.onnx DUMP]
!        (prints "N passed, N failed").
program test_fortran_api
  use dodo
  implicit none
  integer :: passed = 0, failed = 0
  character(len=512) :: model, message
  type(dodo_closure) :: closure, box_only, missing, stale
  type(dodo_counters) :: counters
  real(c_double) :: F(4, 6, 50), F_pred(4, 6, 50), F_box(4, 6, 50), worst
  integer(c_int32_t) :: cell_status(50), grid_status(5, 2, 5)
  real(c_double) :: grid(4, 6, 5, 2, 5), grid_pred(4, 6, 5, 2, 5), grid_u(4, 5, 2, 5)
  integer :: stat, c, a

  call get_command_argument(1, model)
  if (command_argument_count() == 4) call test_diagnostics()

  ! Errors come back through stat and errmsg.
  call dodo_create(missing, "/no/such/model.onnx", stat=stat, errmsg=message)
  call check(stat == DODO_ERROR_FILE, "missing file gives DODO_ERROR_FILE")
  call check(index(message, "/no/such/model.onnx") > 0, "errmsg names the file")
  call dodo_create(missing, DODO_BOX3D_ONLY, chunk_size=0, stat=stat, errmsg=message)
  call check(stat == DODO_ERROR_INVALID_ARGUMENT, "chunk_size=0 is refused")
  ! A blank path (an unset parameter) is refused, never read as Box3D-only (issue 11, item 15).
  call dodo_create(missing, "   ", stat=stat, errmsg=message)
  call check(stat == DODO_ERROR_INVALID_ARGUMENT .and. index(message, "empty model path") > 0, "blank model path refused")
  ! The shipped default model is found next to libdodo (issue 11, item 21).
  call check(len(dodo_default_model_path()) > 0, "dodo_default_model_path finds the default model")

  do c = 1, 50
    do a = 1, 6
      F(:, a, c) = [1d0 + 0.1d0 * a, 0.3d0 * cos(0.2d0 * c + a), 0.3d0 * sin(0.2d0 * c + a), 0.1d0]
    end do
    F(2:4, 4, c) = -F(2:4, 1, c)
  end do

  call dodo_create(closure, trim(model), run_self_test=.true., stat=stat, errmsg=message)
  call check(stat == DODO_OK, "model loads and passes its self-test")
  if (stat /= DODO_OK) print *, trim(message)
  call dodo_create(box_only, DODO_BOX3D_ONLY, stat=stat)
  call check(stat == DODO_OK, "Box3D-only closure")

  call dodo_apply(closure, F, F_pred, cell_status=cell_status, stat=stat)
  call check(stat == DODO_OK, "apply without u (rest frame)")
  call check(all(iand(cell_status, DODO_CELL_REJECTED_MASK) == 0), "no cell rejected")
  worst = 0
  do c = 1, 50
    worst = max(worst, maxval(abs(sum(F_pred(:, 4:6, c) - F(:, 4:6, c), dim=2))) / sum(F(1, :, c)))
    worst = max(worst, maxval(abs((F_pred(1, 1:3, c) - F(1, 1:3, c)) - (F_pred(1, 4:6, c) - F(1, 4:6, c)))) &
                / sum(F(1, :, c)))
  end do
  call check(worst < 1d-13, "antineutrino four-flux and lepton number conserved")

  call dodo_apply(box_only, F, F_box, stat=stat)
  call check(stat == DODO_OK .and. any(F_box /= F_pred), "Box3D-only differs from the closure")

  call dodo_apply(closure, F, F_pred(:, :, 1:10), stat=stat, errmsg=message)
  call check(stat == DODO_ERROR_INVALID_ARGUMENT, "mismatched shapes are refused")

  ! A grid F(4, 6, nx, ny, nz) without pointer remapping gives the (4, 6, ncell) result.
  grid = reshape(F, shape(grid))
  grid_u = 0
  grid_u(1, :, :, :) = 1
  call dodo_apply(closure, grid, grid_pred, u=grid_u, cell_status=grid_status, stat=stat)
  call check(stat == DODO_OK .and. all(reshape(grid_pred, shape(F_pred)) == F_pred), "rank-5 grid equals rank 3")
  call check(all(reshape(grid_status, [50]) == cell_status), "grid cell_status equals rank 3")

  call dodo_self_test(closure, worst, stat=stat)
  call check(stat == DODO_OK .and. worst < 1d-5, "self-test within tolerance")
  call dodo_self_test(box_only, stat=stat, errmsg=message)
  call check(stat == DODO_ERROR_NO_MODEL, "self-test needs a model")

  call dodo_get_counters(closure, counters, stat=stat)
  call check(stat == DODO_OK .and. counters%cells >= 50, "counters count cells")

  ! A copy of the type kept after dodo_destroy (round nine: stat 1 with an empty errmsg).
  stale = closure
  call dodo_destroy(closure)
  message = ""
  call dodo_apply(stale, F, F_pred, stat=stat, errmsg=message)
  call check(stat == DODO_ERROR_INVALID_ARGUMENT .and. index(message, "not live") > 0, &
             "a stale copy of a destroyed closure is refused with a message")
  call dodo_destroy(closure)  ! a second destroy is harmless
  call dodo_apply(closure, F, F_pred, stat=stat)
  call check(stat == DODO_ERROR_INVALID_ARGUMENT, "use after destroy is refused")
  call dodo_destroy(box_only)

  print '(i0, a, i0, a)', passed, " passed, ", failed, " failed"
  if (failed > 0) error stop 1

contains

  ! Growth rate and uncertainty through dodo_apply's optional arguments.
  subroutine test_diagnostics()
    character(len=512) :: diagnostics_model, misdeclared, dump
    type(dodo_closure) :: learned, plain, box
    real(c_double) :: G(4, 6, 50), G_pred(4, 6, 50), G_plain(4, 6, 50), rate(50), spread(50), proxy(50), &
                      box_spread(50), plain_rate(50), short(49)
    integer(c_int32_t) :: flags(50)
    integer :: unit
    call get_command_argument(2, diagnostics_model)
    call get_command_argument(3, misdeclared)
    call get_command_argument(4, dump)
    do c = 1, 50
      do a = 1, 6
        G(:, a, c) = [1d0 + 0.1d0 * a, 0.3d0 * cos(0.2d0 * c + a), 0.3d0 * sin(0.2d0 * c + a), 0.1d0]
      end do
      G(2:4, 4, c) = -G(2:4, 1, c)
    end do
    G(2:4, :, 1) = 0  ! isotropic: stable
    G(1, 5, 2) = -1   ! negative density: rejected

    call dodo_create(learned, trim(diagnostics_model), stat=stat, errmsg=message)
    call check(stat == DODO_OK, "model with optional outputs loads")
    call dodo_create(plain, trim(model), stat=stat)
    call dodo_create(box, stat=stat)
    call dodo_apply(learned, G, G_pred, cell_status=flags, growth_rate=rate, uncertainty=spread, stat=stat)
    call check(stat == DODO_OK, "apply with growth_rate and uncertainty")
    call dodo_apply(learned, G, G_plain, stat=stat)
    call check(all(G_plain == G_pred), "the optional arguments leave F_pred unchanged")
    call check(flags(1) == DODO_CELL_NO_CROSSING .and. rate(1) == 0 .and. spread(1) == 0, "stable cell: zeros")
    call check(iand(flags(2), DODO_CELL_NEGATIVE_DENSITY) /= 0 .and. rate(2) == 0 .and. spread(2) == 0, &
               "rejected cell: zeros")
    call dodo_apply(box, G, G_plain, growth_rate=proxy, uncertainty=box_spread, stat=stat)
    call check(stat == DODO_OK .and. all(box_spread == 0) .and. all(proxy(3:) > 0), "Box3D only: proxy, no spread")
    call check(all(rate(3:) > 0) .and. any(abs(rate(3:) / proxy(3:) - 1) > 1d-3) .and. any(spread(3:) > 0), &
               "the model's growth rate and spread")
    call dodo_apply(plain, G, G_plain, growth_rate=plain_rate, uncertainty=box_spread, stat=stat)
    call check(stat == DODO_OK .and. all(abs(plain_rate - proxy) <= 1d-12 * proxy) .and. all(box_spread == 0), &
               "model without the outputs: the proxy, no spread")
    call dodo_apply(learned, G, G_pred, growth_rate=short, stat=stat, errmsg=message)
    call check(stat == DODO_ERROR_INVALID_ARGUMENT .and. index(message, "growth_rate") > 0, &
               "a growth_rate of the wrong size is refused")
    call dodo_create(missing, trim(misdeclared), stat=stat, errmsg=message)
    call check(stat == DODO_ERROR_MODEL_FORMAT .and. index(message, trim(misdeclared)) > 0, &
               "a package declaring an output it lacks is refused, naming the file")
    open(newunit=unit, file=trim(dump), access="stream", form="unformatted", status="replace", action="write")
    write(unit) G, rate, spread, proxy
    close(unit)
    call dodo_destroy(learned)
    call dodo_destroy(plain)
    call dodo_destroy(box)
  end subroutine test_diagnostics

  subroutine check(condition, what)
    logical, intent(in) :: condition
    character(len=*), intent(in) :: what
    if (condition) then
      passed = passed + 1
    else
      failed = failed + 1
      print '(2a)', "FAILED: ", what
    end if
  end subroutine check

end program test_fortran_api
