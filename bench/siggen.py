"""Signal generator for the capacity benchmark: SIGURG to one process at a fixed rate.

SIGURG's default action is to ignore it and nginx installs no handler for it, so each kill()
is exactly one signal_generate event (result "ignored") and changes nothing in the target.
Paced in 1 ms steps; prints {"sent", "elapsed_s", "rate"} as JSON.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time


def generate(pid: int, rate: float, seconds: float) -> dict:
    kill, sig = os.kill, signal.SIGURG
    sent = 0
    t0 = time.monotonic()
    while True:
        elapsed = time.monotonic() - t0
        if elapsed >= seconds:
            break
        due = int(rate * elapsed) - sent
        for _ in range(min(due, 5000)):
            kill(pid, sig)
        sent += min(due, 5000) if due > 0 else 0
        if due <= 0:
            time.sleep(0.001)
    elapsed = time.monotonic() - t0
    return {"sent": sent, "elapsed_s": elapsed, "rate": sent / elapsed}


if __name__ == "__main__":
    print(json.dumps(generate(int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]))))
