"""Synthetic recordings for the analysis benchmark: many pods, each a copy of a real shutdown story.

The stories are the report's test recordings (tests/data/<case>: the article's case, a clean
drain, the endpoint race, nginx/fpm TERM, the shell PID 1, a wrapper that never forwards...).
Each pod is one story with its own pod uid, container ids, pids, sockets and time, and with its
client and upstream connections cloned so that a pod has a few hundred events (a busy pod
stopping with connections open). Every line therefore has the schema's fields and values the
recorder writes, and the report finds the story's verdicts in every pod.

Fast on purpose (10M events must fit in the benchmark's time): each template event becomes a
%-format string once; a pod is then a dict of values and one `%` per event.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from sigtrace.events.segments import segment_name
from sigtrace.events.writer import EVENTS_FILE, META_FILE

REPO = Path(__file__).resolve().parent.parent
TEMPLATE_DIR = REPO / "tests" / "data"
# weights: most pods stop cleanly or with the common mistakes; the rare cases are rare
STORIES = {"clean": 4, "article": 3, "nginx_term": 2, "fpm_term": 2, "endpoint_race": 2,
           "upstream_first": 1, "shell_pid1": 1, "wrapper_trap": 1}
PID_FIELDS = ("pid", "tid", "ppid", "target_pid")
SERVICE_PORTS = {0, 8080, 9000}
POD_SPACING_S = 0.25          # a new pod stops every 250 ms (a node with rolling updates all day)
CHUNK_PODS = 64               # pods written together, sorted by time (the recorder's file is ~sorted)
FORMAT_VERSION = 2            # bump when the output changes (cached files are keyed by it)


@dataclass
class Line:
    rel: float               # seconds from the story's first event
    fmt: str                 # the event as a %-format string with named fields
    conn: int | None         # index of the connection group it belongs to, None for the story


@dataclass
class Story:
    name: str
    lines: list[Line]
    n_pids: int
    n_conns: int
    conn_sizes: list[int]    # events per connection group
    n_socks: int


def _placeholder(token: str) -> str:
    return f"@@{token}@@"


def load_story(name: str, directory: Path = TEMPLATE_DIR) -> Story:
    """Turn a one-pod recording into format strings: uid, container ids, pids, sockets and
    client/upstream ports become named fields."""
    events = [json.loads(line) for line in (directory / name / EVENTS_FILE).read_text().splitlines() if line.strip()]
    uids = sorted({e[k] for e in events for k in ("pod_uid", "target_pod_uid") if e.get(k)})
    if len(uids) != 1:
        raise ValueError(f"story {name}: expected one pod, found {uids}")
    uid = uids[0]
    cids = sorted({e[k] for e in events for k in ("container_id", "target_container_id") if e.get(k)})
    pids = sorted({e[k] for e in events for k in PID_FIELDS if e.get(k)})
    socks = sorted({e["sock"] for e in events if e.get("sock")})
    ports = sorted({e[k] for e in events for k in ("sport", "dport") if e.get(k) not in SERVICE_PORTS and e.get(k)})
    start = min(e["ts"] for e in events)
    lines = []
    for e in events:
        e = dict(e)
        conn = None
        for k in ("sport", "dport"):
            if e.get(k) in ports:
                conn = ports.index(e[k])
                e[k] = _placeholder("port")
        for k in PID_FIELDS:
            if e.get(k):
                e[k] = _placeholder(f"p{pids.index(e[k])}")
        if e.get("sock"):
            e["sock"] = _placeholder(f"s{socks.index(e['sock'])}")
        rel = e.pop("ts") - start
        text = json.dumps({"ts": _placeholder("ts"), **e}, separators=(",", ":")).replace("%", "%%")
        text = text.replace(uid, "%(uid)s").replace("web-7d9f", "%(name)s")
        for i, cid in enumerate(cids):
            text = text.replace(cid, f"%(c{i})s")
        text = text.replace('"@@ts@@"', "%(ts).6f").replace('"@@port@@"', "%(port)d")
        for i in range(len(pids)):
            text = text.replace(f'"@@p{i}@@"', f"%(p{i})d")
        for i in range(len(socks)):
            text = text.replace(f'"@@s{i}@@"', f'"%(s{i})s"')
        if "@@" in text:
            raise ValueError(f"story {name}: unreplaced placeholder in {text}")
        lines.append(Line(rel, text, conn))
    sizes = [sum(1 for ln in lines if ln.conn == c) for c in range(len(ports))]
    return Story(name, lines, len(pids), len(ports), sizes, len(socks))


def load_stories(directory: Path = TEMPLATE_DIR) -> list[tuple[Story, int]]:
    return [(load_story(name, directory), w) for name, w in STORIES.items()]


def _hex(rng: random.Random, n: int) -> str:
    return "%0*x" % (n, rng.getrandbits(4 * n))


def pod_lines(story: Story, index: int, rng: random.Random, clones: int, t0: float) -> Iterator[tuple[float, int, str]]:
    """(ts, order, line) of one pod: the story once, each connection group `clones` more times."""
    values: dict = {"uid": "%08x-%04x-4%03x-8%03x-%012x" % (index, rng.getrandbits(16), rng.getrandbits(12),
                                                            rng.getrandbits(12), rng.getrandbits(48)),
                    "name": f"web-{index:x}-{_hex(rng, 5)}"}
    for i in range(4):
        values[f"c{i}"] = _hex(rng, 64)
    # pids unique per concurrently stopping pod (pid_max is 4194304)
    base_pid = 100_000 + (index % 30_000) * 128
    for i in range(story.n_pids):
        values[f"p{i}"] = base_pid + i
    sock_base = 0xffff888000000000 + (index << 20)
    order = 0
    for copy in range(clones + 1):
        jitter = 0.0 if copy == 0 else rng.uniform(-0.0005, 0.0005)
        v = dict(values)
        for i in range(story.n_socks):
            v[f"s{i}"] = "%x" % (sock_base + copy * 64 + i)
        for line in story.lines:
            if copy and line.conn is None:
                continue
            v["port"] = 32768 + (copy * max(story.n_conns, 1) + (line.conn or 0)) % 28000
            v["ts"] = t0 + line.rel + (jitter if line.conn is not None else 0.0)
            yield v["ts"], order, line.fmt % v
            order += 1


def clones_for(story: Story, events_per_pod: int) -> int:
    """Copies of the story's connection groups that bring a pod near events_per_pod."""
    per_copy = sum(story.conn_sizes)
    if not per_copy:
        return 0
    return max(0, round((events_per_pod - len(story.lines)) / per_copy))


def generate(out_dir: Path, n_events: int, *, events_per_pod: int = 400, seed: int = 7,
             node: str = "bench-node", start: float = 1_760_000_000.0, segment_bytes: int | None = None) -> dict:
    """Write DIR/events.jsonl (about n_events lines) and DIR/meta.json; returns counts. segment_bytes:
    start a new segment (events-000002.jsonl, ...) past this size, as the recorder does."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    stories = load_stories()
    population = [s for s, _ in stories]
    weights = [w for _, w in stories]
    written = pods = 0
    pending: list[tuple[float, int, str]] = []
    end = start
    segments = _Segments(out_dir, segment_bytes)
    with segments:
        while written < n_events:
            story = rng.choices(population, weights)[0]
            # busy and quiet pods: 0.25x to 1.75x the mean number of connections
            clones = clones_for(story, int(events_per_pod * rng.uniform(0.25, 1.75)))
            t0 = start + pods * POD_SPACING_S
            for ts, order, line in pod_lines(story, pods, rng, clones, t0):
                pending.append((ts, pods * 10_000_000 + order, line))
                written += 1
                if written >= n_events:
                    break
            pods += 1
            if pods % CHUNK_PODS == 0 or written >= n_events:
                pending.sort()
                end = max(end, pending[-1][0])
                segments.write("\n".join(p[2] for p in pending) + "\n")
                pending.clear()
    meta = {"schema_version": 1, "node": node, "kernel": "6.18.0", "backend": "bpf", "start": start - 1.0,
            "end": end + 1.0, "events": written, "lost_events": 0, "lost_by_probe": {},
            "capabilities": ["signal_sender", "signal_delivery", "process_exec", "process_exit",
                             "tcp_states", "kernel_resets"], "synthetic": {"pods": pods, "seed": seed,
                                                                          "events_per_pod": events_per_pod}}
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return {"events": written, "pods": pods, "bytes": segments.bytes, "segments": segments.seq}


class _Segments:
    """The recorder's file layout: events.jsonl, then events-000002.jsonl... past segment_bytes,
    each ending with a whole line (a chunk of pods is written whole, as a backend batch is)."""

    def __init__(self, out_dir: Path, segment_bytes: int | None) -> None:
        self.out_dir, self.limit = out_dir, segment_bytes
        self.seq, self.size, self.bytes = 0, 0, 0
        self.fh = None

    def __enter__(self) -> "_Segments":
        self._next()
        return self

    def _next(self) -> None:
        if self.fh is not None:
            self.fh.close()
        self.seq += 1
        self.fh = open(self.out_dir / segment_name(self.seq), "w", encoding="utf-8", buffering=1 << 20)
        self.size = 0

    def write(self, text: str) -> None:
        if self.limit is not None and self.size >= self.limit:
            self._next()
        n = len(text.encode())
        self.fh.write(text)
        self.size += n
        self.bytes += n

    def __exit__(self, *exc) -> None:
        self.fh.close()


def columnar_copy(src: Path, dst: Path) -> dict:
    """dst: src as the recorder leaves it with compaction on: every segment but the last one
    compacted by the recorder's own child process (`python -m sigtrace.events.compact`), one after
    the other. The JSONL segments are hard links (no copy); src keeps its own. The peak memory is the
    largest child's (getrusage of the children)."""
    import os
    import resource
    import subprocess
    import sys
    import time
    from sigtrace.events.segments import list_segments
    dst.mkdir(parents=True, exist_ok=True)
    segs = list_segments(src)
    for _, path in segs:
        os.link(path, dst / path.name)
    (dst / META_FILE).write_bytes((src / META_FILE).read_bytes())
    fd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY)
    started, events, columnar_bytes, kept = time.monotonic(), 0, 0, []
    try:
        for _, path in segs[:-1]:
            out = subprocess.run([sys.executable, "-m", "sigtrace.events.compact", str(fd), path.name],
                                 pass_fds=(fd,), capture_output=True, check=True).stdout
            r = json.loads(out)
            events, columnar_bytes = events + r["events"], columnar_bytes + r["columnar_bytes"]
            if r["kept"]:
                kept.append(f"{path.name}: {r['kept']}")
    finally:
        os.close(fd)
    last = segs[-1][1].stat().st_size if segs else 0
    return {"compacted_events": events, "compact_s": round(time.monotonic() - started, 2), "kept": kept,
            "bytes": columnar_bytes + last, "child_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024}


def main() -> None:
    import argparse
    ap = argparse.ArgumentParser(description="write a synthetic sigtrace recording")
    ap.add_argument("out", type=Path)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--events-per-pod", type=int, default=400)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--segment-bytes", type=int, default=None, help="rotate segments as the recorder does")
    ap.add_argument("--columnar-from", type=Path, default=None,
                    help="instead: make OUT a copy of this recording with its closed segments compacted")
    a = ap.parse_args()
    if a.columnar_from is not None:
        print(json.dumps(columnar_copy(a.columnar_from, a.out)))
        return
    print(json.dumps(generate(a.out, a.events, events_per_pod=a.events_per_pod, seed=a.seed,
                              segment_bytes=a.segment_bytes)))


if __name__ == "__main__":
    main()
