"""Background work that yields to the reader: the scheduling rule of the app's worker threads.

The app's background threads (triage of new cases, pre-embedding of the next cases, AI masks of volume slices) run
the same model as the reader's clicks on the same cores. The triage thread runs under Linux's ``SCHED_IDLE`` policy:
it gets a core only when no normal thread wants it, and a click's threads preempt it as soon as they wake (nice 19
alone still leaves it a share of ~1.5 % and the scheduler's slice before preemption, which measurably lengthened
clicks: ``bench.click_latency --beside-triage``). Where the policy is unavailable it falls back to nice 19.
ONNX Runtime and OpenMP pool threads inherit the policy and priority of the thread that creates them, so each
background thread builds its own sessions (the predictors' lazy sessions do) after calling
:func:`lower_this_thread`.
"""
from __future__ import annotations

import os
import threading

BACKGROUND_NICE = 19


def lower_this_thread(nice: int = BACKGROUND_NICE, idle: bool = True) -> str:
    """Lower the calling thread (only it, and the threads it creates from now on) to ``nice`` and, when ``idle``,
    the ``SCHED_IDLE`` policy. Returns what took effect: "idle", "nice" or "none" (the work still runs)."""
    tid = threading.get_native_id()
    done = "none"
    try:
        os.setpriority(os.PRIO_PROCESS, tid, nice)
        done = "nice"
    except (OSError, AttributeError):
        pass
    if idle:
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            done = "idle"
        except (OSError, AttributeError):
            pass
    return done
