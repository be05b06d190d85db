"""What a newcomer waits for: a finished build run again, and a mistyped folder with the Hub unreachable.

Builds the demo once (``build --recipe demo`` into ``WORK``), then times, each in a fresh process
``--repeat`` times (median and fastest wall time):

- ``build --recipe demo`` again into the finished folder (the manifest check: no model loads);
- ``inspect out/digits-d2cc`` (the folder is ``out/digits-d2c``) with ``HF_ENDPOINT`` on a closed port
  and ``HF_HUB_OFFLINE=0``, so that a name taken for a Hub repository would be retried;
- ``d2c-pack --help``, the interpreter and CLI start-up both of them include.

A command that runs past ``--timeout`` seconds is stopped and recorded as such. Run it with
``PYTHONPATH`` set to another checkout to time that code (``python -m d2c_pack`` runs what it finds first).

    python benchmarks/first_hour.py [--repeat 3] [--timeout 300] [--out benchmarks/results/first_hour.json] [--work DIR] [--tiny]
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import timing_parser

D2C_PACK = [sys.executable, "-m", "d2c_pack"]
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens there, connections are refused


def wall_time(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[float, int | None, str]:
    """Seconds, exit status (None: stopped at ``timeout``) and the last line of stderr of one run of ``command``."""
    tic = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return time.perf_counter() - tic, None, f"stopped after {timeout:.0f} s"
    return time.perf_counter() - tic, done.returncode, (done.stderr.strip().splitlines() or [""])[-1]


def main() -> None:
    parser = timing_parser(__doc__.splitlines()[0], repeat=3, out="benchmarks/results/first_hour.json")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--work", help="Folder for the demo build (default: a temporary one, removed after).")
    parser.add_argument("--tiny", action="store_true", help="One run of each, the demo scored at one timestep: checks the benchmark works.")
    args = parser.parse_args()
    repeat = 1 if args.tiny else args.repeat
    work = Path(tempfile.mkdtemp(dir=args.work))
    try:
        env = os.environ | {"COLUMNS": "120"}
        build = [*D2C_PACK, "build", "--recipe", "demo", "--out", "out/digits-d2c", "--work", "cache", *(["--timesteps", "1"] if args.tiny else [])]
        seconds, status, last = wall_time(build, work, env, timeout=1800)
        if status != 0:
            raise SystemExit(f"the first build failed: {last}")
        commands = {
            "build --recipe demo, again": (build, env),
            "inspect out/digits-d2cc, Hub unreachable": ([*D2C_PACK, "inspect", "out/digits-d2cc"], env | {"HF_ENDPOINT": UNREACHABLE, "HF_HUB_OFFLINE": "0"}),
            "d2c-pack --help": ([*D2C_PACK, "--help"], env),
        }
        rows = [{"command": "build --recipe demo, first", "median_s": seconds, "min_s": seconds, "runs": [seconds], "exit": status, "last_line": last}]
        for name, (command, command_env) in commands.items():
            runs = [wall_time(command, work, command_env, args.timeout) for _ in range(repeat)]
            times = [seconds for seconds, _, _ in runs]
            rows.append({"command": name, "median_s": statistics.median(times), "min_s": min(times), "runs": times, "exit": runs[-1][1], "last_line": runs[-1][2]})
    finally:
        shutil.rmtree(work)
    for row in rows:
        print(f"{row['command']:45s} {row['median_s']:7.1f} s median, {row['min_s']:7.1f} s fastest, exit {row['exit']}: {row['last_line'][:120]}")
    report = {"machine": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(), "repeat": repeat, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
