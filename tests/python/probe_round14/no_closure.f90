! Calls on a dodo_closure that holds no closure: never created, after a failed dodo_create, after
! dodo_destroy. Prints each call's stat and message.
program no_closure
  use dodo
  use, intrinsic :: iso_c_binding
  implicit none
  type(dodo_closure) :: never, failed, destroyed
  real(c_double) :: F(4, 6, 2), G(4, 6, 2)
  type(dodo_counters) :: counters
  character(len=300) :: message
  integer :: stat
  F = 0
  F(1, :, :) = 1
  call dodo_apply(never, F, G, stat=stat, errmsg=message)
  print '(a, i0, 2a)', 'never apply ', stat, ' ', trim(message)
  call dodo_create(failed, "/nonexistent/dodo_model.onnx", stat=stat, errmsg=message)
  call dodo_get_counters(failed, counters, stat=stat, errmsg=message)
  print '(a, i0, 2a)', 'failed counters ', stat, ' ', trim(message)
  call dodo_create(destroyed, "box3d", stat=stat)
  call dodo_destroy(destroyed)
  call dodo_reset_counters(destroyed, stat=stat, errmsg=message)
  print '(a, i0, 2a)', 'destroyed reset ', stat, ' ', trim(message)
  call dodo_self_test(destroyed, stat=stat, errmsg=message)
  print '(a, i0, 2a)', 'destroyed self_test ', stat, ' ', trim(message)
end program no_closure
