"""Run ``d2c-pack`` and SIGKILL it at a chosen point, as a crash would: ``python killpoint.py TARGET N WHEN[:SIGNAL] -- ARGS``.

TARGET is ``module:attribute`` (``module:Class.method`` for a method); the process kills itself
with SIGKILL on the N-th call of that callable, ``before`` it runs or ``after`` it returned.
Nothing is flushed or cleaned up: the files are left exactly as a power cut or OOM kill leaves them.
With ``:SIGINT`` or ``:SIGTERM`` (``after:SIGINT``) it sends itself that signal instead, as Ctrl-C or a
job scheduler would, and the program handles it as it does.
A run that never reaches the N-th call finishes normally (the harness treats that as a wrong kill point).
"""

from __future__ import annotations

import functools
import importlib
import os
import signal
import sys


def arm(target: str, nth: int, when: str, signum: int = signal.SIGKILL) -> None:
    module_name, _, attribute = target.partition(":")
    owner = importlib.import_module(module_name)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    calls = 0

    @functools.wraps(original)
    def killing(*args, **kwargs):
        nonlocal calls
        calls += 1
        number = calls  # this call's own number: other threads (parallel uploads) may call meanwhile
        if number == nth and when == "before":
            os.kill(os.getpid(), signum)
        result = original(*args, **kwargs)
        if number == nth and when == "after":
            os.kill(os.getpid(), signum)
        return result

    setattr(owner, name, killing)


if __name__ == "__main__":
    target, nth, when, separator, *args = sys.argv[1:]
    when, _, name = when.partition(":")
    assert separator == "--" and when in ("before", "after") and name in ("", "SIGINT", "SIGTERM"), sys.argv
    arm(target, int(nth), when, signal.Signals[name or "SIGKILL"])
    from d2c_pack.cli import main

    sys.argv = ["d2c-pack", *args]
    main()
