"""Progress on stderr with timings, so a Job's log never looks hung.

`step("export")` prints when a stage starts and ends, and a heartbeat line every
`HEARTBEAT_SECONDS` while it runs (model export or a calibration can take minutes without
printing anything themselves).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

HEARTBEAT_SECONDS = 30.0
_started = time.monotonic()


def log(message: str) -> None:
    elapsed = time.monotonic() - _started
    print(f"[optimize {elapsed:7.1f}s] {message}", file=sys.stderr, flush=True)


@contextmanager
def step(name: str, heartbeat: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    log(f"{name} ...")
    t0 = time.monotonic()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(heartbeat):
            log(f"{name}: still running ({time.monotonic() - t0:.0f}s)")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    except BaseException:
        log(f"{name}: failed after {time.monotonic() - t0:.1f}s")
        raise
    finally:
        stop.set()
        thread.join()
    log(f"{name}: done in {time.monotonic() - t0:.1f}s")
