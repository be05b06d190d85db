"""How long ``--help`` takes: ``d2c-pack --help``, ``build --help`` and ``verify --help`` against
huggingface_hub's own ``hf --help`` on the same machine (the goal: ``d2c-pack --help`` no slower).

Each command runs in a fresh process ``--repeat`` times; the table gives the median and the
fastest wall time. ``d2c-pack`` runs as ``python -m d2c_pack`` from the repository root (this
checkout's code, whatever the venv has installed); ``hf`` is the entry point beside this interpreter.

    python benchmarks/cli_help.py [--repeat 7] [--out benchmarks/results/cli_help.json] [--tiny]
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _report import timing_parser
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
D2C_PACK = [sys.executable, "-m", "d2c_pack"]
COMMANDS = {
    "d2c-pack --help": [*D2C_PACK, "--help"],
    "d2c-pack build --help": [*D2C_PACK, "build", "--help"],
    "d2c-pack verify --help": [*D2C_PACK, "verify", "--help"],
    "hf --help": [str(Path(sys.executable).parent / "hf"), "--help"],
}


def wall_times(command: list[str], repeat: int) -> list[float]:
    """Seconds of each of ``repeat`` runs of ``command`` in a fresh process (its output discarded)."""
    times = []
    for _ in range(repeat):
        tic = time.perf_counter()
        subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ | {"COLUMNS": "120"})
        times.append(time.perf_counter() - tic)
    return times


def main() -> None:
    parser = timing_parser(__doc__.splitlines()[0], repeat=7, out="benchmarks/results/cli_help.json")
    parser.add_argument("--work", help="Unused: the benchmark writes no files but its report (kept for the --tiny test harness).")
    parser.add_argument("--tiny", action="store_true", help="One run per command: checks the benchmark works.")
    args = parser.parse_args()
    repeat = 1 if args.tiny else args.repeat

    rows = []
    for name, command in COMMANDS.items():
        times = wall_times(command, repeat)
        rows.append({"command": name, "median_s": statistics.median(times), "min_s": min(times), "runs": times})
    reference = next(row["median_s"] for row in rows if row["command"] == "hf --help")
    table = Table(title=f"--help wall time, median of {repeat} fresh processes")
    for column in ("command", "median", "fastest", "vs hf --help"):
        table.add_column(column, justify="left" if column == "command" else "right")
    for row in rows:
        table.add_row(row["command"], f"{row['median_s']:.2f} s", f"{row['min_s']:.2f} s", f"{row['median_s'] / reference:.2f}×")
    Console().print(table)
    machine = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(), "load": os.getloadavg()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"repeat": repeat, "machine": machine, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
