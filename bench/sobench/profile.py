"""py-spy on a running gateway while wrk loads it; where its samples go, from the collapsed stacks."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["NO_FRAME_OF_OURS", "Profile", "record", "summarize_stacks"]

_LINE = re.compile(r":\d+\)$")
_FILE = re.compile(r"\(([^():]+?)(?::\d+)?\)$")
# frames every sample passes through on the way to the event loop: not worth listing as "inclusive"
_ROOT = ("superollama/cli/", "superollama/app.py", "<frozen runpy>", "click/", "uvloop/__init__.py")
NO_FRAME_OF_OURS = "(no Super Ollama frame: the event loop, aiohttp's server, other threads)"


def record(pid: int, out: Path, duration_s: int, pin: Sequence[str] = ()) -> subprocess.Popen[bytes] | None:
    """Start ``py-spy record`` (collapsed stacks, 250 Hz); None without py-spy.

    ``--gil``: only the thread holding the GIL is sampled, so the samples are the Python CPU time that
    serialises the gateway, not threads waiting on a queue. Blocking (py-spy pauses the process for each
    sample): slower under the profiler, but with ``--nonblocking`` about a third of the stacks came back
    torn (frames of one coroutine under another's) and idle waits were counted as work."""
    binary = shutil.which("py-spy")
    if binary is None:
        return None
    cmd = [*pin, binary, "record", "--pid", str(pid), "--duration", str(duration_s), "--rate", "250"]
    cmd += ["--format", "raw", "--output", str(out), "--gil"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@dataclass(frozen=True)
class Profile:
    samples: int
    own: list[tuple[str, int]]  # leaf frames
    packages: list[tuple[str, int]]  # leaf frames grouped by top-level package/module
    ours: list[tuple[str, int]]  # superollama functions, inclusive (each counted once per stack)
    nearest: list[tuple[str, int]]  # each sample to the deepest superollama function in its stack


def package(frame: str) -> str:
    """``func (aiohttp/http_writer.py:116)`` → ``aiohttp``; the event loop's own frame → ``event loop``."""
    if frame.startswith("Runner.run ("):
        return "event loop (uvloop, C)"
    match = _FILE.search(frame)
    if match is None:
        return "?"
    path = match.group(1)
    return path.split("/", 1)[0].removesuffix(".py") if "/" in path else path


def summarize_stacks(collapsed: str, n: int = 12) -> Profile:
    """Summarize py-spy's raw output: each line is ``frame;frame;...;leaf COUNT``."""
    own: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    nearest: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rstrip().rpartition(" ")
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        if not frames or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        own[frames[-1]] += count
        packages[package(frames[-1])] += count
        mine = [_LINE.sub(")", f) for f in frames if "superollama/" in f and not any(r in f for r in _ROOT)]
        for frame in set(mine):  # a function once per stack, any line
            ours[frame] += count
        nearest[mine[-1] if mine else NO_FRAME_OF_OURS] += count
    top = (c.most_common(n) for c in (own, packages, ours, nearest))
    return Profile(total, *top)
