"""Run a module under cProfile timed by process CPU, not wall time, so that waiting for the
database or being preempted on a busy machine is not counted as a function's time.

    .venv/bin/python -m bench.cpu_profile OUT.prof services.ingest [args...]

The profile is written when the module returns or raises (a service stopped by SIGTERM).
"""

from __future__ import annotations

import cProfile
import runpy
import sys
import time


def main() -> None:
    out, module = sys.argv[1], sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    profile = cProfile.Profile(time.process_time)
    try:
        profile.runcall(runpy.run_module, module, run_name="__main__", alter_sys=True)
    finally:
        profile.dump_stats(out)


if __name__ == "__main__":
    main()
