"""Runs `dodo ARGS...` and holds it at a chosen point so a test can SIGKILL it there.

Usage: python held_training.py MARKER EVENT N -- dodo arguments...

EVENT is where the N-th occurrence (counted from this process's start) holds the run:
  step            after the N-th optimizer step (between checkpoints, mid-epoch)
  save-partial    inside the N-th checkpoint write: half of the checkpoint written to its temporary
  replace-before  just before the N-th os.replace (a temporary complete, not yet renamed)
  replace-after   just after the N-th os.replace (e.g. between keeping last.prev.pt and the rename)
On reaching it the run writes MARKER and sleeps until killed, so where it dies does not depend on
how fast the machine is (a kill after a timed wait could miss a run that had already finished).
"""
from __future__ import annotations

import io
import os
import sys
import time


def hold(marker: str, where: str) -> None:
    with open(marker, "w") as handle:
        handle.write(where)
    while True:
        time.sleep(60)


def main() -> int:
    marker, event, count, separator, *arguments = sys.argv[1:]
    assert separator == "--", "usage: held_training.py MARKER EVENT N -- dodo arguments"
    count = int(count)
    seen = 0

    def reached() -> bool:
        nonlocal seen
        seen += 1
        return seen == count

    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    if event == "step":
        def after_step(optimizer, args, kwargs):
            if reached():
                hold(marker, f"after optimizer step {count}")
        register_optimizer_step_post_hook(after_step)
    elif event == "save-partial":
        # The checkpoint writer (serialised in memory, then written: dodo.training.safe_load, round 30).
        import dodo.training.train as training

        real_write = training.write_torch_file

        def partial_write(obj, target):
            if not reached():
                return real_write(obj, target)
            buffer = io.BytesIO()
            torch.save(obj, buffer)
            with open(target, "wb") as handle:
                handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                handle.flush()
                os.fsync(handle.fileno())
            hold(marker, f"half of checkpoint write {count} written to {target}")
        training.write_torch_file = partial_write
    elif event in ("replace-before", "replace-after"):
        real_replace = os.replace

        def held_replace(source, destination, *args, **kwargs):
            if not reached():
                return real_replace(source, destination, *args, **kwargs)
            if event == "replace-before":
                hold(marker, f"before os.replace {count}: {source} -> {destination}")
            real_replace(source, destination, *args, **kwargs)
            hold(marker, f"after os.replace {count}: {source} -> {destination}")
        os.replace = held_replace
    else:
        raise SystemExit(f"unknown event {event!r}")

    from dodo.cli import main as dodo_main
    return dodo_main(arguments)


if __name__ == "__main__":
    sys.exit(main())
