"""CPU per access line, with nothing else in the process: the telemetry thread's side and the log writer's.

    python bench/access_lines.py                 # 50,000 lines, batches of 70, 5 rounds a way
    python bench/access_lines.py --lines 100000 --batch 40

``configure_logging`` as ``serve`` sets it up (JSON lines, INFO, to /dev/null), then the same records
written two ways, in alternating rounds: ``one``, each line through ``AccessLog.__call__`` (``logging``
and a queue hand-over per line: how lines went before ``AccessLog.many``), and ``many``, a batch at a
time through ``AccessLog.many`` (how the telemetry thread hands them over now). A batch is followed by
1 ms of sleep, as the telemetry thread gets one batch every 20 ms under load and the writer catches up in
between. The number is the process's CPU time (user + system, every thread) over the lines written,
measured once the writer's queue is empty; the medians of the rounds.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from superollama.core import RequestRecord
from superollama.settings import Settings
from superollama.telemetry import AccessLog, configure_logging


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _records(count: int) -> list[RequestRecord]:
    start = time.time()
    return [
        RequestRecord(
            request_id=f"req-{i:08d}",
            protocol="openai",
            operation="chat",
            model="fake/bench",
            status=200,
            started_at=start + i / 1000,
            duration=0.0021,
            key_id="k_bench",
            key_prefix="so-ab12cd34",
            connection="fake",
            node="local",
            ttft=0.0009,
            prompt_tokens=12,
            completion_tokens=34,
            client="127.0.0.1",
            user_agent="wrk",
        )
        for i in range(count)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=70)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    records = _records(args.lines)
    batches = [records[i : i + args.batch] for i in range(0, len(records), args.batch)]
    with open(os.devnull, "w") as sink:
        handle = configure_logging(Settings(log_json=True, log_level="INFO"), stream=sink)
        log = AccessLog()
        queue = handle.listener.queue
        results: dict[str, list[float]] = {"one": [], "many": []}
        try:
            for _ in range(args.rounds):
                for way in ("one", "many"):
                    before = _cpu()
                    for batch in batches:
                        if way == "many":
                            log.many(batch)
                        else:
                            for record in batch:
                                log(record)
                        time.sleep(0.001)
                    while not queue.empty():
                        time.sleep(0.005)
                    time.sleep(0.05)  # the writer's last write
                    results[way].append(1e6 * (_cpu() - before) / len(records))
        finally:
            handle.close()
    for way, values in results.items():
        rounds = " ".join(f"{v:.1f}" for v in values)
        print(f"{way:>4}: {statistics.median(values):5.1f} µs CPU a line (median; rounds {rounds})")
    print(f"many / one: {statistics.median(results['many']) / statistics.median(results['one']):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
