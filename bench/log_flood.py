"""The cost of LIVE_PULL_LOG_FORMAT=json on a flood: a program under a real supervisord
writes N lines of 100 bytes as fast as it can; how long until the last one is in the
container's output (a file here), the agent's CPU meanwhile, and how many lines got
there (the relay drops what its bounded backlog cannot hold). `text`: supervisord
writes to the output itself; `json`: through the relay (named pipe, reader, writer).

Each mode runs in a process of its own, its stdout the output file.

    .venv/bin/python bench/log_flood.py [--lines 500000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from entrypoint.logs import Masker, append_to_output_files
from entrypoint.relay import app_output
from entrypoint.supervisor import Supervisor
from entrypoint.supervisor_config import ProgramSpec, Timings

FLOOD = (
    "import sys, time\n"
    "line = 'f' * 99 + '\\n'\n"
    "for _ in range({lines}): sys.stdout.write(line)\n"
    "while True:  # again and again: under a flood the relay may drop a line\n"
    "    sys.stdout.write('flood-done\\n'); sys.stdout.flush(); time.sleep(0.05)\n"
)


def run_one(mode: str, lines: int, work: Path, result: Path) -> None:
    """In the child: supervisord, one flooding program, wait for its last line."""
    output_file = Path("/proc/self/fd/1").resolve()
    (work / "flood.py").write_text(FLOOD.format(lines=lines))
    append_to_output_files()  # as the agent does
    output = app_output(mode, Masker([]))
    output.start()
    supervisor = Supervisor(work / "run", Timings(0, 0, 5.0), "bench", output=output)
    supervisor.start()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    supervisor.apply([ProgramSpec("flood", f"{sys.executable} flood.py", work, {})])
    while b"flood-done" not in _tail(output_file):
        time.sleep(0.01)
    seconds = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    supervisor.stop()
    output.stop()
    written = sum(1 for line in output_file.open("rb") if b"f" * 99 in line)
    agent_cpu = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
    result.write_text(json.dumps({"seconds": seconds, "agent_cpu": agent_cpu, "out": written}))


def _tail(path: Path) -> bytes:
    with path.open("rb") as file:
        file.seek(max(0, path.stat().st_size - 4096))
        return file.read()


def measure(mode: str, lines: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="log-flood-") as tmp:
        out, result = Path(tmp) / "out", Path(tmp) / "result.json"
        with out.open("wb") as stdout:
            subprocess.run(
                [sys.executable, __file__, "--child", mode, "--lines", str(lines), tmp],
                stdout=stdout,
                check=True,
                timeout=600,
            )
        return dict(json.loads(result.read_text()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=500_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", choices=["text", "json"])
    parser.add_argument("work", nargs="?")
    args = parser.parse_args()
    if args.child:
        run_one(args.child, args.lines, Path(args.work), Path(args.work) / "result.json")
        return
    print(f"{args.lines} lines of 100 bytes, {args.runs} runs each")
    print("| mode | lines/s (median) | seconds (median) | agent CPU s | lines out (min) |")
    print("| --- | --- | --- | --- | --- |")
    for mode in ("text", "json"):
        runs = [measure(mode, args.lines) for _ in range(args.runs)]
        seconds = statistics.median(run["seconds"] for run in runs)
        cpu = statistics.median(run["agent_cpu"] for run in runs)
        out = min(int(run["out"]) for run in runs)
        print(f"| {mode} | {args.lines / seconds:,.0f} | {seconds:.2f} | {cpu:.2f} | {out} |")


if __name__ == "__main__":
    main()
