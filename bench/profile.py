"""Profile Stepwise's worker processes with py-spy while a benchmark drives them.

    python -m bench.versus --scenario 1000@0 --runs 1 --profile /tmp/prof   # during a burst
    python -m bench.profile --pid 12345 --duration 20 --out /tmp/w.txt     # any running worker
    python -m bench.profile --summarise /tmp/w.txt                         # top frames again

`py-spy record --subprocesses --gil` samples the dramatiq parent and its worker
processes, counting only the thread that holds the GIL: where the CPU of a worker
goes. The raw (collapsed) stacks are kept; the summary lists the frames with the
most samples on top of the stack (self) and anywhere in it (inclusive), with the
idle waits of dramatiq's consumer threads left out by `--gil`.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

RATE = 50  # samples per second: low enough not to slow the worker it watches
# "process 123:"python ..."" frames that --subprocesses adds, and per-thread frames.
NOISE = re.compile(r"^(process \d+|thread \(0x[0-9A-Fa-f]+\))")
LINE = re.compile(r":\d+\)$")  # one entry per function, not per line
SITE = re.compile(r"\(/\S*?(site-packages|lib/python3\.\d+|wt-[\w-]+|stepwise)/")


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise RuntimeError("py-spy is not installed: pip install -e '.[dev]'")
    return found


class Profiler:
    """`py-spy record` on process `pid` and its children until `stop()`; writes to `out`."""

    def __init__(self, pid: int, out: Path) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        self.raw = out.with_suffix(".txt")
        self.process = subprocess.Popen(
            [
                py_spy(),
                "record",
                "--pid",
                str(pid),
                "--subprocesses",
                "--gil",
                "--nonblocking",
                "--rate",
                str(RATE),
                "--format",
                "raw",
                "--output",
                str(self.raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            self.process.wait(60)
        if self.raw.exists():
            summary = summarise(self.raw)
            self.raw.with_suffix(".summary.md").write_text(summary)
            print(summary, flush=True)


def frames(raw: Path) -> Iterator[tuple[list[str], int]]:
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            kept = [f for f in stack.split(";") if not NOISE.match(f)]
            yield [SITE.sub("(", LINE.sub(")", f)) for f in kept], int(count)


OURS = ("core/", "db/", "tasks/", "stepwise/")
FILE = re.compile(r"\((.*)\)$")


def package(frame: str) -> str:
    """`sqlalchemy` for `f (sqlalchemy/sql/x.py)`, `stdlib` for `f (queue.py)`."""
    found = FILE.search(frame)
    path = found.group(1) if found else ""
    return path.split("/", 1)[0] if "/" in path else "stdlib"


def summarise(raw: Path, top: int = 12) -> str:
    """Markdown: where the GIL-holding samples were, by package (top of stack), by our
    functions (anywhere in the stack) and by frame (top of stack), in % of all samples."""
    own: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = 0
    for stack, count in frames(raw):
        total += count
        if stack:
            own[stack[-1]] += count
            packages[package(stack[-1])] += count
        for frame in set(stack):
            if any(f"({p}" in frame for p in OURS):
                ours[frame] += count
    if not total:
        return f"{raw}: no samples\n"
    lines = [f"py-spy `--gil`, {total:,} samples at {RATE} Hz ({raw.name})", ""]
    tables = (
        ("self % by package", packages),
        ("inclusive % (our code)", ours),
        ("self % by frame", own),
    )
    for title, counter in tables:
        lines += [f"| {title} | |", "| --- | --- |"]
        lines += [f"| {100 * c / total:.1f} | `{f}` |" for f, c in counter.most_common(top)]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pid", type=int)
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--out", type=Path, default=Path("worker-profile.txt"))
    parser.add_argument("--summarise", type=Path)
    args = parser.parse_args()
    if args.summarise:
        print(summarise(args.summarise))
        return
    if args.pid is None:
        parser.error("--pid or --summarise")
    profiler = Profiler(args.pid, args.out)
    with contextlib.suppress(subprocess.TimeoutExpired):
        profiler.process.wait(args.duration)
    profiler.stop()


if __name__ == "__main__":
    main()
