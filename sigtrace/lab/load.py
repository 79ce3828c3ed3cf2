"""HTTP load from inside a pod's network namespace: the client's view of a pod shutdown.

Runs as its own process (`nsenter --net=/run/netns/<ns> python -m sigtrace.lab.load ...`) so that its
sockets live in the pod's netns and its CPU use stays out of the recorder's process. It sends
requests from `concurrency` closed-loop workers until SIGTERM (the load balancer stops
sending: endpoint propagation has caught up) or --max-duration, lets in-flight requests end
(bounded by --timeout), and prints one JSON object: every request with start, end, outcome
and local port.

With --keepalive-idle-ms the workers are a load balancer's (or a proxy's) pool of upstream
keep-alive connections instead: each keeps one HTTP/1.1 connection open, idles that long between
requests, and sends the next request on it without first checking whether the pod closed it (a
balancer cannot know a FIN is in flight); a failed or closed connection is replaced by a new one.

Outcomes: ok, http_502, http_5xx (other 5xx), http_other, reset (RST while sending or
reading), closed (EOF before a response), refused (RST answering the SYN), timeout.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LabError
from .netns import in_netns

OUTCOMES = ("ok", "http_502", "http_5xx", "http_other", "reset", "closed", "refused", "timeout")
FAILURES = tuple(o for o in OUTCOMES if o != "ok")


@dataclass
class Request:
    start: float
    end: float
    outcome: str
    lport: int | None = None


@dataclass
class LoadResult:
    requests: list[Request] = field(default_factory=list)
    started: float | None = None
    stopped_sending: float | None = None      # when the "load balancer" stopped sending
    ended: float | None = None

    def counts(self) -> dict[str, int]:
        c = Counter(r.outcome for r in self.requests)
        return {o: c.get(o, 0) for o in OUTCOMES}

    def failures(self) -> int:
        return sum(1 for r in self.requests if r.outcome != "ok")

    def timeline(self, origin: float, bucket_s: float = 0.5) -> list[tuple[float, dict[str, int]]]:
        """Counts per outcome in buckets of request END time, relative to origin (e.g. the stop)."""
        buckets: dict[int, Counter] = {}
        for r in self.requests:
            buckets.setdefault(int((r.end - origin) // bucket_s), Counter())[r.outcome] += 1
        return [(k * bucket_s, {o: buckets[k].get(o, 0) for o in OUTCOMES}) for k in sorted(buckets)]

    def as_dict(self) -> dict:
        return {"started": self.started, "stopped_sending": self.stopped_sending, "ended": self.ended,
                "counts": self.counts(), "requests": [[r.start, r.end, r.outcome, r.lport] for r in self.requests]}

    @classmethod
    def from_dict(cls, d: dict) -> "LoadResult":
        return cls([Request(*r) for r in d.get("requests", [])], d.get("started"), d.get("stopped_sending"),
                   d.get("ended"))


# --- the client (runs inside the netns) ---------------------------------------------------
def one_request(host: str, port: int, path: str, timeout: float) -> Request:
    """One HTTP/1.1 request on a new connection, classified by what the socket saw."""
    start = time.time()
    lport = None
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        lport = s.getsockname()[1]
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        if not data:
            outcome = "closed"
        else:
            # Drain the body so the close is orderly (a FIN from us, not an RST).
            while s.recv(65536):
                pass
            parts = data.split(b" ", 2)
            code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            outcome = _outcome(code)
    except ConnectionRefusedError:
        outcome = "refused"
    except (ConnectionResetError, BrokenPipeError):
        outcome = "reset"
    except (socket.timeout, TimeoutError):
        outcome = "timeout"
    except OSError:
        outcome = "reset"
    finally:
        s.close()
    return Request(start, time.time(), outcome, lport)


def _outcome(code: int) -> str:
    return ("ok" if 200 <= code < 300 else "http_502" if code == 502
            else "http_5xx" if 500 <= code < 600 else "http_other")


def pooled_request(conn: http.client.HTTPConnection | None, host: str, port: int, path: str,
                   timeout: float) -> tuple[Request, http.client.HTTPConnection | None]:
    """One HTTP/1.1 keep-alive request on conn (a new connection when None), sent without checking
    whether the server closed conn meanwhile, as a balancer's pool does. Returns the request and the
    connection to reuse (None when it ended: failed, or the server said Connection: close)."""
    start = time.time()
    if conn is None:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    lport = None
    try:
        if conn.sock is None:
            conn.connect()
        lport = conn.sock.getsockname()[1]
        conn.request("GET", path, headers={"Host": "lab"})
        resp = conn.getresponse()
        resp.read()          # the whole body: the connection is ready for the next request
        outcome = _outcome(resp.status)
        if resp.will_close:
            conn.close()
            conn = None
    except ConnectionRefusedError:
        outcome = "refused"
    except (http.client.RemoteDisconnected, http.client.IncompleteRead, http.client.BadStatusLine):
        outcome = "closed"   # EOF (or a cut response) where a response belonged
    except (ConnectionResetError, BrokenPipeError):
        outcome = "reset"
    except (socket.timeout, TimeoutError):
        outcome = "timeout"
    except (OSError, http.client.HTTPException):
        outcome = "reset"
    if outcome != "ok" and conn is not None:
        conn.close()
        conn = None
    return Request(start, time.time(), outcome, lport), conn


def run_client(host: str, port: int, path: str, concurrency: int, timeout: float, max_duration: float,
               stop: threading.Event, keepalive_idle_s: float | None = None) -> LoadResult:
    """concurrency closed-loop workers until stop or max_duration: one new connection per request
    (Connection: close), or with keepalive_idle_s a pool of keep-alive connections that idle that
    long between requests."""
    result = LoadResult(started=time.time())
    lock = threading.Lock()
    deadline = time.monotonic() + max_duration

    def worker() -> None:
        conn: http.client.HTTPConnection | None = None
        while not stop.is_set() and time.monotonic() < deadline:
            if keepalive_idle_s is None:
                r = one_request(host, port, path, timeout)
            else:
                r, conn = pooled_request(conn, host, port, path, timeout)
            with lock:
                result.requests.append(r)
            if r.outcome != "ok":
                # A dead listener or a 502 answers at once: back off like a client would,
                # instead of spinning the CPU (and the recorder) on thousands of failures.
                time.sleep(0.05)
            elif conn is not None:
                stop.wait(keepalive_idle_s)      # the pooled connection idles between requests
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    while not stop.is_set() and time.monotonic() < deadline:
        stop.wait(0.05)
    result.stopped_sending = time.time()
    stop.set()
    for t in threads:
        t.join(timeout + 1)
    result.ended = time.time()
    with lock:
        result.requests.sort(key=lambda r: r.start)
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m sigtrace.lab.load", description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--request-ms", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    ap.add_argument("--max-duration", type=float, default=300.0, help="stop sending after this, seconds")
    ap.add_argument("--keepalive-idle-ms", type=int, default=None,
                    help="a pool of keep-alive connections idling this long between requests")
    a = ap.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print("started", file=sys.stderr, flush=True)
    idle = a.keepalive_idle_ms / 1000 if a.keepalive_idle_ms is not None else None
    result = run_client(a.host, a.port, f"/index.php?ms={a.request_ms}", a.concurrency, a.timeout,
                        a.max_duration, stop, keepalive_idle_s=idle)
    json.dump(result.as_dict(), sys.stdout)
    sys.stdout.flush()


# --- the driver (runs in the lab process) -------------------------------------------------
class LoadClient:
    """Start the client in a netns, stop_sending() when the load balancer would stop, wait()."""

    def __init__(self, netns: str, *, port: int = 8080, request_ms: int = 500, concurrency: int = 4,
                 timeout_s: float = 30.0, max_duration_s: float = 300.0, workdir: Path | None = None,
                 keepalive_idle_ms: int | None = None):
        self.netns = netns
        self.args = ["--port", str(port), "--request-ms", str(request_ms), "--concurrency", str(concurrency),
                     "--timeout", str(timeout_s), "--max-duration", str(max_duration_s)]
        if keepalive_idle_ms is not None:
            self.args += ["--keepalive-idle-ms", str(keepalive_idle_ms)]
        self.timeout_s = timeout_s
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.stopped_sending: float | None = None
        self._out = None

    def start(self, warmup_s: float = 15.0) -> None:
        """Start the client and return once it says it started (within warmup_s: a Python start on
        a loaded 2-core machine can take seconds)."""
        import tempfile
        self._out = tempfile.TemporaryFile(dir=self.workdir)
        self._err = tempfile.TemporaryFile(dir=self.workdir)
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
        # stdout to a file: the JSON may be large and nobody reads a pipe while it runs.
        self.proc = subprocess.Popen(in_netns(self.netns, [sys.executable, "-m", "sigtrace.lab.load", *self.args]),
                                     stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err,
                                     env=env)
        deadline = time.monotonic() + warmup_s
        while time.monotonic() < deadline:      # wait for "started" so load is on before the stop
            if b"started" in self._err_bytes():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise LabError(f"load client did not start in netns {self.netns}: {self._stderr()}")

    def _err_bytes(self) -> bytes:
        # pread, not seek+read: the child writes through the same open file, and a seek here
        # would move the offset its next write lands at (a readiness line read back as "tarted").
        fd = self._err.fileno()
        return os.pread(fd, min(os.fstat(fd).st_size, 1 << 20), 0)

    def _stderr(self) -> str:
        lines = self._err_bytes().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no output"

    def stop_sending(self) -> float:
        self.stopped_sending = time.time()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.stopped_sending

    def wait(self) -> LoadResult:
        assert self.proc is not None
        try:
            # in-flight requests end within timeout_s; the slack is for a loaded machine (2 cores)
            self.proc.wait(self.timeout_s + 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise LabError("load client did not finish in time; killed it") from None
        self._out.seek(0)
        raw = self._out.read()
        if self.proc.returncode != 0 or not raw:
            raise LabError(f"load client failed (exit {self.proc.returncode}): {self._stderr()}")
        return LoadResult.from_dict(json.loads(raw))

    def close(self) -> None:
        """Kill the client if still running (only our own child, by its pid)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for f in (self._out, getattr(self, "_err", None)):
            if f:
                f.close()

    def __enter__(self) -> "LoadClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    main()
