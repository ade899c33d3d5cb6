"""``settle_heap``, run once a server is up: the start-up heap is frozen out of the collector's sight and
the young generation is collected less often. Checked in a child interpreter, so that this test process
keeps its own collector settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from superollama.gateway.loop import YOUNG_THRESHOLD

SRC = Path(__file__).resolve().parents[2] / "src"

CHILD = """
import gc, json
import superollama.app  # the start-up heap of a server process
from superollama.gateway.loop import settle_heap
before = (gc.get_freeze_count(), gc.get_threshold())
settle_heap()
print(json.dumps({"before": before, "after": (gc.get_freeze_count(), gc.get_threshold())}))
"""


def test_settle_heap_freezes_start_up_and_raises_the_young_threshold() -> None:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    (frozen_before, threshold_before), (frozen_after, threshold_after) = seen["before"], seen["after"]
    assert frozen_before == 0
    assert frozen_after > 10_000  # the imported modules' objects, at the very least
    assert threshold_after == [YOUNG_THRESHOLD, threshold_before[1], threshold_before[2]]
