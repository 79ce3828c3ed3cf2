"""A small process that starts the timed commands and reaps them (`python -m bench.launcher`).

Why not spawn them from the bench itself: the kernel keeps a process's peak RSS across exec
(the peak of the image it replaces, which for a child spawned with vfork is its parent's, goes
into the child's, and wait4 reports it), so a command spawned by the bench after the bench had
held a large table (fleet_copy reads a whole export) reported the bench's peak as its own: `true`
spawned after 3 GB were touched showed 3 GB. The launcher's image is a fresh, small Python that
imports the standard library only: what its children inherit is its own small peak, whenever
it was started.

Protocol: one JSON line per command on stdin ({"cmd", "cwd", "out", "err"}: argv, working
directory and the files for its stdout and stderr); the launcher answers {"pid"} once started,
in its own session, then {"status", "cpu_s", "max_rss_kb"} once reaped. The caller samples,
and on a timeout kills, the command's process group by that pid itself."""
from __future__ import annotations

import json
import os
import subprocess
import sys


def serve() -> None:
    for line in sys.stdin:
        req = json.loads(line)
        with open(req["out"], "wb") as out, open(req["err"], "wb") as err:
            try:
                proc = subprocess.Popen(req["cmd"], cwd=req["cwd"], stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=err, start_new_session=True)
            except OSError as e:
                _answer({"error": f"{req['cmd'][0]}: {e.strerror}"})
                continue
        _answer({"pid": proc.pid})
        _, status, ru = os.wait4(proc.pid, 0)
        _answer({"status": os.waitstatus_to_exitcode(status), "cpu_s": ru.ru_utime + ru.ru_stime,
                 "max_rss_kb": ru.ru_maxrss})


def _answer(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    serve()
