"""Run ``d2c-pack`` and SIGKILL it at a chosen point, as a crash would: ``python killpoint.py TARGET N WHEN[:SIGNAL] -- ARGS``.

TARGET is ``module:attribute`` (``module:Class.method`` for a method); the process kills itself
with SIGKILL on the N-th call of that callable, ``before`` it runs or ``after`` it returned.
Nothing is flushed or cleaned up: the files are left exactly as a power cut or OOM kill leaves them.
With ``:SIGINT`` or ``:SIGTERM`` (``after:SIGINT``) it sends itself that signal instead, as Ctrl-C or a
job scheduler would, and the program handles it as it does.
A run that never reaches the N-th call finishes normally (the harness treats that as a wrong kill point).

``python killpoint.py --serve`` (driven by :class:`Server`) runs many such commands without importing
torch and the tool for each: it imports them once, then forks a process per command, which runs
the command as the line above does and exits (or is killed) as that process would.
"""

from __future__ import annotations

import functools
import gc
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path

# What build and train runs import, and most of the time a short run would spend importing: imported once by the server
# (the encoders' and figures' modules too, which the commands import only when they get there).
PRELOAD = (
    "d2c_pack.cli", "d2c_pack.pipeline.build", "d2c_pack.training.loop", "d2c_pack.demo", "transformers", "transformers.modeling_utils",
    "transformers.models.auto.modeling_auto", "transformers.models.auto.tokenization_auto", "transformers.image_processing_utils",
    "transformers.models.bert.modeling_bert", "transformers.models.bert.tokenization_bert", "transformers.models.dinov2.modeling_dinov2",
    "matplotlib", "matplotlib.pyplot", "matplotlib.backends.backend_agg", "pydantic.main", "pydantic.type_adapter",
)  # fmt: skip


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


def arm_at(target: str, nth: int, when: str) -> None:
    """:func:`arm` from a kill point's spelling: ``when`` is ``before`` or ``after``, optionally ``:SIGINT`` / ``:SIGTERM``."""
    when, _, name = when.partition(":")
    assert when in ("before", "after") and name in ("", "SIGINT", "SIGTERM"), (target, nth, when, name)
    arm(target, nth, when, signal.Signals[name or "SIGKILL"])


def serve() -> dict:
    """Answers each request line on stdin with ``{"returncode": …}`` once the process forked for it has ended.

    Returns only in a forked process, with its request: the caller then runs the command there.
    """
    for module in PRELOAD:
        importlib.import_module(module)
    assert threading.active_count() == 1, "a fork copies this thread alone: another one could hold a lock it needs"
    for line in sys.stdin:
        sys.stdout.flush(), sys.stderr.flush()  # nothing buffered here is written twice
        request = json.loads(line)
        # What exists now is shared with the child and lives as long as it: out of the collector's sight, the child's
        # collections (and the one at its exit) do not write to every object it inherited, copying each page of them.
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            return request
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)
    sys.exit(0)


def enter(request: dict) -> None:
    """Gives this forked process the request's working folder, environment and output files, as a new process has."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        with open(path, "wb") as file:
            os.dup2(file.fileno(), fd)


class Server:
    """A ``killpoint.py --serve`` process: :meth:`run` is ``subprocess.run`` of ``killpoint.py`` or ``-m d2c_pack``.

    The environment of each command is the caller's at the time of the call, but modules the server
    imported (``PRELOAD``) read theirs when it started: use it for commands that need nothing else.
    """

    def __init__(self, scratch: Path):
        self.scratch, self.runs = scratch, 0
        # A session of its own: a command that runs past its timeout is killed with the server (os.killpg).
        command = [sys.executable, __file__, "--serve"]
        # One torch thread unless OMP_NUM_THREADS says otherwise (torch reads it when imported): on a 2-core machine
        # shared with other jobs, a second thread of these small models mostly spins, waiting for a core.
        env = os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True, env=env)

    def run(self, args: list[str], kill: tuple[str, int, str] | None = None, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        self.runs += 1
        stdout, stderr = self.scratch / f"{self.runs}.out", self.scratch / f"{self.runs}.err"
        request = {"args": args, "kill": kill, "cwd": str(cwd or Path.cwd()), "env": dict(os.environ), "stdout": str(stdout), "stderr": str(stderr)}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        if not select.select([self.process.stdout], [], [], timeout)[0]:  # one answer a request: nothing is left buffered
            os.killpg(self.process.pid, signal.SIGKILL)
            raise subprocess.TimeoutExpired(args, timeout, stdout.read_text(), stderr.read_text())
        answer = self.process.stdout.readline()
        assert answer, f"the killpoint server ended (exit {self.process.wait()})"
        return subprocess.CompletedProcess(args, json.loads(answer)["returncode"], stdout.read_text(), stderr.read_text())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        request = serve()
        enter(request)
        kill, args = request["kill"], request["args"]
    else:
        target, nth, when, separator, *args = sys.argv[1:]
        assert separator == "--", sys.argv
        kill = (target, int(nth), when)
    if kill:
        arm_at(*kill)
    from d2c_pack.cli import main

    sys.argv = ["d2c-pack", *args]
    main()
