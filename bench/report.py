"""docs/benchmarks.md from the raw figures (docs/benchmarks.json).

Regenerate without measuring: python -m bench.report docs/benchmarks.json > docs/benchmarks.md
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any

TARGETS = {"ratio": 0.98, "armed_ratio": 0.95, "startup_s": 2.0, "rss_mb": 200, "analysis_eps": 1_000_000,
           "analysis_rss_mb": 1536}


def _f(x: Any, fmt: str = "{:,.0f}") -> str:
    return "–" if x is None else fmt.format(x)


def _ok(flag: bool | None) -> str:
    return "–" if flag is None else ("**met**" if flag else "**not met**")


def targets(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(target, measured, verdict, why) rows."""
    rows = []
    ov = (r.get("overhead") or {}).get("summary") or {}
    bpf = ov.get("bpf") or {}
    if bpf:
        ratio = bpf.get("median_paired_ratio")
        rows.append(("bpf ≥ 0.98 × untraced req/s under churn (pod running)",
                     f"{_f(ratio, '{:.3f}')} (ratio of medians {_f(bpf.get('ratio_of_medians'), '{:.3f}')})",
                     _ok(ratio >= TARGETS["ratio"] if ratio else None),
                     expected_ratio(bpf, ov.get("untraced") or {}, (r.get("machine") or {}).get("cpus"))))
        lost = bpf.get("runs_with_loss")
        rows.append(("zero lost events at that load", f"{lost} of {bpf.get('runs')} runs lost events",
                     _ok(lost == 0), ""))
    armed = ov.get("bpf-armed") or {}
    if armed:
        ratio = armed.get("median_paired_ratio")
        lost = armed.get("runs_with_loss")
        rows.append(("pod stopping (armed; routine closes counted in the kernel): ≥ 0.95 × untraced, 0 lost",
                     f"{_f(ratio, '{:.3f}')}, {lost} of {armed.get('runs')} runs lost events "
                     f"(median {_f(_median(armed.get('lost_events')))} lost)",
                     _ok((ratio or 0) >= TARGETS["armed_ratio"] and lost == 0),
                     armed_note(armed, ov.get("untraced") or {}, r.get("capacity"))))
    st = r.get("startup") or {}
    if st:
        rows.append(("record startup ≤ 2 s (spawn → ready)", f"{_f(st.get('median_ready_s'), '{:.2f}')} s "
                     f"(compile + attach {_f(st.get('median_startup_s'), '{:.2f}')} s)",
                     _ok(st.get("median_ready_s") is not None and st["median_ready_s"] <= TARGETS["startup_s"]), ""))
        rss = (st.get("median_rss_kb") or 0) / 1024
        rows.append(("record RSS ≤ 200 MB", f"{rss:.0f} MB RSS, {(st.get('median_pss_kb') or 0) / 1024:.0f} MB PSS, "
                     f"{(st.get('median_anon_kb') or 0) / 1024:.0f} MB anonymous",
                     _ok(rss <= TARGETS["rss_mb"]),
                     "file-backed pages are mostly bcc's libLLVM/libclang (shared, mapped for the compile); "
                     "pandas adds ~115 MB once a live report runs"))
    an = (r.get("analysis") or {}).get("stages") or []
    for stage in ("read", "report", "export", "analyze"):      # parse has no target: it is their floor
        # the recorder's default layout (columnar) when measured; results of before it: JSONL
        done = [s for s in an if s["stage"] == stage and s.get("events_per_s")
                and s.get("layout", "jsonl") == ("columnar" if any(x.get("layout") == "columnar" for x in an)
                                                 else "jsonl")]
        if done:
            best = max(done, key=lambda s: s["events"])
            note = ""

            def rate(stage: str, layout: str) -> str:
                row = next((s for s in an if s["stage"] == stage and s.get("layout", "jsonl") == layout
                            and s["events"] == best["events"] and s.get("events_per_s")), None)
                return _f(row["events_per_s"] if row else None)
            if stage == "report":
                note = ("compacted segments read as they are (the parse alone: "
                        f"{rate('parse', 'columnar')} events/s) and split by pod in one process, then the parts "
                        "correlated side by side, a worker per CPU (profile below); a JSONL recording "
                        f"(--no-compact): {rate('report', 'jsonl')} events/s, its parse alone "
                        f"{rate('parse', 'jsonl')} events/s")
                one = next((s for s in an if s["stage"] == "report-pod" and s["events"] == best["events"]
                            and s.get("wall_s") and s.get("rc") == 0), None)
                if one:
                    note += (f"; one pod of it (`report --pod`, every file read, that pod alone correlated): "
                             f"{one['wall_s']:.1f} s, {_f(one['events_per_s'])} events/s")
            elif stage == "analyze":
                note = ("read by batch, spilled by node and pod; the time is the same correlation as report: "
                        "the TCP events of ~150k rows at a time, then ~1 ms of rules and timeline per pod")
            elif stage == "read":
                note = "compacted segments and the last JSONL one, Arrow → pandas, stable sort by ts (a full copy)"
            elif stage == "export":
                note = "compacted segments by batch, a spill, written back in ts order chunk by chunk"
            rows.append((f"{stage} ≥ 1M events/s", f"{_f(best['events_per_s'])} events/s at {_f(best['events'])} events",
                         _ok(best["events_per_s"] >= TARGETS["analysis_eps"]), note))
            if stage in ("report", "analyze", "export") and best.get("peak_rss_mb"):
                rows.append((f"{stage} peak memory ≤ 1.5 GB at the largest size",
                             f"{_f(best['peak_rss_mb'])} MB at {_f(best['events'])} events",
                             _ok(best["peak_rss_mb"] <= TARGETS["analysis_rss_mb"]),
                             PEAK_NOTES[stage]))
    rows += soak_targets(r.get("soak"))
    return rows


PEAK_NOTES = {
    "report": "not growing with the recording: a chunk while splitting, then a part of pods per worker and the "
              "reports kept compressed; workers counted (the process group's summed PSS)",
    "analyze": "not growing with the export: a batch while spilling by node, then ~150k rows of a node per worker "
               "and its reports; workers counted (the process group's summed PSS)",
    "export": "not growing with the recording: a chunk of each run in the merge, written chunk by chunk",
}


def soak_targets(soak: dict | None) -> list[tuple[str, str, str, str]]:
    if not soak or "summary" not in soak:
        return []
    m, c = soak["summary"], soak["config"]
    share = m.get("streamed_share")
    cap_mb = _size_mb(c.get("max_disk"))
    return [
        ("soak: TCP events streamed for running pods with exec probes ≤ 1% of their connections",
         f"{_f(share, '{:.3%}')}", _ok(share is not None and share <= 0.01), ""),
        ("soak: agent RSS growth < 50 MB", _f(m.get("rss_growth_mb"), "{:+.1f} MB"),
         _ok(m.get("rss_growth_mb") is not None and m["rss_growth_mb"] < 50),
         "from 30 s after the first live report (which loads pandas once) to the end"),
        ("soak: agent peak RSS ≤ 300 MB", _f(m.get("peak_rss_mb"), "{:.0f} MB"),
         _ok(m.get("peak_rss_mb") is not None and m["peak_rss_mb"] <= 300), "VmHWM, pandas loaded by live reports"),
        ("soak: disk never above --max-disk", f"{_f(m.get('disk_max_mb'), '{:.1f} MB')} (cap {c.get('max_disk') or 'none'})",
         _ok(cap_mb is not None and m.get("disk_max_mb") is not None and m["disk_max_mb"] <= cap_mb), ""),
        ("soak: every stop reported with the right verdicts, 0 lost",
         f"{m['stops_right']} of {m['stops']}, {_f(m.get('lost'))} lost",
         _ok(m["stops"] > 0 and m["stops_right"] == m["stops"] and m.get("lost") == 0), ""),
    ]


def _size_mb(text: str | None) -> float | None:
    """'1GiB' / '500MiB' / '200M' -> MB (2**20 bytes)."""
    if not text:
        return None
    units = {"k": 2**-10, "m": 1, "g": 2**10, "t": 2**20}
    t = text.strip().lower().rstrip("b").rstrip("i")
    try:
        return float(t[:-1]) * units[t[-1]] if t[-1] in units else float(t) / 2**20
    except (ValueError, IndexError):
        return None


def expected_ratio(bpf: dict, untraced: dict, cpus: int | None) -> str:
    """The ratio the tracer's own measured costs predict when the CPUs are saturated: a request
    costs cpus / untraced req/s of CPU; tracing adds BPF time + recorder CPU per request."""
    base_rps = untraced.get("median_rps")
    added = (bpf.get("bpf_us_per_request") or 0) + (bpf.get("tracer_cpu_us_per_request") or 0)
    if not base_rps or not cpus or not added:
        return ""
    base = cpus * 1e6 / base_rps
    return (f"costs measured per request: {bpf.get('bpf_us_per_request') or 0:.2f} µs BPF + "
            f"{bpf.get('tracer_cpu_us_per_request') or 0:.1f} µs recorder CPU on {base:.0f} µs per request "
            f"→ {base / (base + added):.3f} expected on saturated CPUs")


def armed_note(armed: dict, untraced: dict, cap: dict | None) -> str:
    lossless = (cap or {}).get("max_lossless_rate")
    events = [e for e in (armed.get("events") or []) if e]
    lost = [x for x in (armed.get("lost_events") or []) if x]
    if not events:
        return ""
    per_run = _median([e + x for e, x in zip(armed.get("events") or [], armed.get("lost_events") or [])])
    return (f"the kernel produced ~{_f(per_run)} events per run, more than the recorder's user space writes "
            f"({'~' + _f(lossless) + ' events/s lossless' if lossless else 'see capacity'}"
            f"{', %.0f µs recorder CPU per request' % armed['tracer_cpu_us_per_request'] if armed.get('tracer_cpu_us_per_request') else ''})"
            if lost else "")


def _median(xs: list | None) -> float | None:
    xs = sorted(x for x in (xs or []) if x is not None)
    if not xs:
        return None
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def write_docs(r: dict[str, Any]) -> str:
    m = r.get("machine", {})
    cfg = r.get("config", {})
    out = ["# Benchmarks", "",
           "Generated by `make bench` (`python -m bench`, source in `bench/`); raw figures in "
           "`docs/benchmarks.json`. Do not edit by hand: re-run the bench.", "",
           f"Run: {time.strftime('%Y-%m-%d %H:%M', time.localtime(r.get('started', 0)))}, "
           f"{r.get('duration_s')} s.", ""]
    out += ["## Machine", "",
            f"- CPU: {m.get('cpu')} × {m.get('cpus')} ({m.get('hypervisor') or 'bare metal'}), {m.get('memory_gb')} GB RAM",
            f"- {m.get('os')}, kernel {m.get('kernel')}; Python {m.get('python')}, pandas {m.get('pandas')}, "
            f"pyarrow {m.get('pyarrow')}, bcc {m.get('bcc')}, nginx {m.get('nginx')}, runc {m.get('runc')}, "
            f"strace {m.get('strace')}",
            f"- Load average at start {r.get('loadavg_start')}, at end {r.get('loadavg_end')}",
            f"- Other processes busy at start: {', '.join(r.get('busy_at_start') or []) or 'none'}; "
            f"at end: {', '.join(r.get('busy_at_end') or []) or 'none'}"]
    disturbed = [p for p in (r.get("busy_at_start") or []) + (r.get("busy_at_end") or [])
                 if "python" in p or "pytest" in p or "nginx" in p or "php" in p]
    if disturbed:
        out += ["", "**This run was disturbed**: other jobs (other sessions' tests) were using the CPUs "
                "while it ran; ratios come from interleaved runs, but spreads are wider than on a quiet machine."]
    kept = r.get("kept_from_previous") or {}
    if kept:
        out += ["", "Parts not run this time keep their figures from an earlier run: " + ", ".join(
            f"{part} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(ts)) if ts else 'unknown'})"
            for part, ts in kept.items()) + "."]
    out += ["", "## Targets", "", "| target | measured | | note |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in targets(r)]
    out += _overhead(r.get("overhead")) + _capacity(r.get("capacity")) + _startup(r.get("startup"))
    out += _analysis(r.get("analysis")) + _soak(r.get("soak"))
    out += ["", "## Commands", "", "```",
            "make bench                                   # all parts, this file and benchmarks.json",
            "BENCH_PARTS=overhead,startup make bench      # some parts",
            "BENCH_REPORT_EVENTS=1000000 BENCH_STAGE_TIMEOUT=3600 make bench   # report/analyze at 1M",
            "```", "", "Per part, what runs:", ""]
    ov = (r.get("overhead") or {}).get("config") or {}
    if ov:
        out += [f"- load: `nsenter --net=/run/netns/<pod netns> wrk -t{ov['wrk_threads']} -c{ov['wrk_connections']} "
                f"-d{ov['seconds']:g}s -H \"Connection: close\" {ov['url']}` against a LocalPod (runc, "
                f"`/kubepods/burstable/pod<uid>/<id>`), nginx {ov['nginx_workers']} workers (`return 200` "
                "location), idle php-fpm; modes interleaved per round, each tracer started fresh and ready "
                "before wrk starts:"]
        out += [f"  - `{k}`: {v}" for k, v in _in_order(ov["modes"])]
        out += ["  - `sigtrace record --output DIR --no-live` (bpf); tracers stopped with SIGINT; "
                "tcpstates gets the same kernel headers as sigtrace (`BCC_KERNEL_SOURCE`)."]
    out += ["- capacity: `python -m bench.siggen <nginx worker pid> RATE SECONDS` (SIGURG) under "
            "`sigtrace record`; events counted in the recording's segments, losses from meta.json.",
            "- startup: spawn of `sigtrace record` until meta.json exists; RSS from /proc/<pid>/status "
            "and smaps_rollup after 2 s of recording.",
            "- analysis: `python -m bench.synth DIR --events N` (pods cloned from the report's test "
            "recordings, ~400 events per pod), then `sigtrace report DIR --format json`, "
            "`sigtrace export DIR --parquet F`, `sigtrace analyze F --json`, `read_recording(DIR)` "
            "alone and the JSON parse alone (`CleanChunks`: 32 MB chunks, pyarrow, as report and export "
            "read) (report and analyze with their default worker processes, one per CPU up to 4); wall "
            "time and peak memory per command: the larger of its own peak RSS (wait4) and the summed PSS "
            "of its process group, workers included, sampled every 0.1 s.",
            "- soak: `sigtrace agent --no-api` left running (bench/soak.py): running LocalPods under "
            "`python -m bench.churn` (`Connection: close` at a fixed rate, in the pod's netns) and a `runc exec` "
            "into every container every second, a lab pod stopped every BENCH_SOAK_STOP_EVERY seconds; RSS "
            "(VmRSS/VmHWM), output size (every file under the agent's root) and meta.json sampled every 5 s; "
            "each stop judged from the live report the agent wrote (`reports/<uid>.json`).", ""]
    return "\n".join(out) + "\n"


def _in_order(summary: dict) -> list[tuple[str, dict]]:
    """Modes in run order (the JSON file sorts keys)."""
    from .overhead import MODES
    return sorted(summary.items(), key=lambda kv: MODES.index(kv[0]) if kv[0] in MODES else len(MODES))


def _overhead(ov: dict | None) -> list[str]:
    if not ov:
        return []
    out = ["", "## Overhead under connection churn", "",
           "| mode | median req/s | vs untraced (median of per-round ratios) | ratio of medians | spread | "
           "lost events per run | events recorded per run | tracer CPU per request | BPF per request (per run) | "
           "tracer peak RSS |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for mode, s in _in_order(ov["summary"]):
        lost = s.get("lost_events") or []
        out.append(f"| {mode} | {_f(s.get('median_rps'))} | {_f(s.get('median_paired_ratio'), '{:.3f}')} | "
                   f"{_f(s.get('ratio_of_medians'), '{:.3f}')} | {_f(s.get('spread'), '{:.0%}')} | "
                   f"{', '.join(_f(x) for x in lost) if lost else '–'} | "
                   f"{', '.join(_f(x) for x in s.get('events') or []) or '–'} | "
                   f"{_f(s.get('tracer_cpu_us_per_request'), '{:.1f} µs')} | "
                   f"{_f(s.get('bpf_us_per_request'), '{:.2f} µs')} ({_f(s.get('bpf_ns_per_run'), '{:.0f} ns')}) | "
                   f"{_f((s.get('peak_rss_kb') or 0) / 1024 if s.get('peak_rss_kb') else None, '{:.0f} MB')} |")
        if s.get("errors"):
            out.append(f"| | errors: {'; '.join(s['errors'])[:300]} | | | | | | | | |")
    out += ["", "Tracer CPU per request: CPU time of the tracer's processes (user space; BPF programs run "
            "in the kernel on behalf of nginx and wrk and show up as their lost throughput) during wrk, "
            "divided by the requests served: the tracer's own cost, less sensitive to other jobs than req/s. "
            "BPF per request: run time of the tracer's BPF programs (kernel.bpf_stats_enabled on during "
            "wrk, /proc/<pid>/fdinfo run_time_ns), per request and per program run."]
    # bpf on a running pod records nothing by design: TCP detail streams only for stopping pods
    empty = [m for m, s in _in_order(ov["summary"]) if m != "bpf" and s.get("events") and not any(s["events"])]
    if empty:
        why = ""
        out += ["", f"**Recorded no events in any run**: {', '.join(empty)}. Their req/s is the cost of "
                f"tracing, not of a useful recording.{why}"]
    lossy = [m for m, s in _in_order(ov["summary"]) if s.get("runs_with_loss")]
    out += ["", "Runs per mode in order: " + "; ".join(
        f"{m}: {', '.join(_f(x) for x in s['rps'])}" for m, s in _in_order(ov["summary"]))]
    if lossy:
        out += ["", f"**Runs that lost events**: {', '.join(lossy)}. Their req/s are listed but are not a "
                "measure of a complete recording: the tracer dropped events (counted above) to keep up."]
    return out


def _soak(soak: dict | None) -> list[str]:
    if not soak or "summary" not in soak:
        return []
    c, m = soak["config"], soak["summary"]
    out = ["", "## Soak: the agent on a busy node", "",
           f"`sigtrace agent --no-api` for {c['seconds']:g} s while {c['pods']} running pods take "
           f"{c['rate_per_pod']:g} connections/s each (`Connection: close`) and an exec into every container "
           f"every {c['probe_s']:g} s ({soak['probes']} exec probes in all), and a lab pod is stopped every "
           f"{c['stop_every_s']:g} s (exec probes too); max disk {c['max_disk'] or 'not capped'}.", "",
           "![agent RSS and output size over the soak](soak.png)", "",
           "| figure | measured |", "|---|---|",
           f"| agent peak RSS (VmHWM) | {_f(m['peak_rss_mb'], '{:.0f} MB')} |",
           f"| agent RSS growth, from 30 s after the first live report (pandas loaded) to the end | "
           f"{_f(m['rss_growth_mb'], '{:+.1f} MB')} |",
           f"| output on disk, most | {_f(m['disk_max_mb'], '{:.1f} MB')} |",
           f"| events recorded per second | {_f(m['events_per_s'], '{:.1f}')} |",
           f"| lost events | {_f(m['lost'])} |",
           f"| agent CPU | {_f(m['cpu_per_s'], '{:.3f}')} s per second |",
           f"| running pods: TCP events streamed / connections | {_f(soak['running_streamed'])} / "
           f"{_f(soak['running_connections'])} ({_f(m['streamed_share'], '{:.3%}')}) |",
           f"| stops whose live report named the right cause | {m['stops_right']} of {m['stops']} |",
           "", "| t (s) | stop | expected | the live report named | client |", "|---|---|---|---|---|"]
    for s in soak["stops"]:
        fired = s.get("fired")
        named = "–" if fired is None else (", ".join(fired) or "clean")
        mark = "" if s.get("right") else " **(wrong)**"
        client = s.get("error") or ", ".join(f"{k} {v}" for k, v in (s.get("client") or {}).items() if v)
        out.append(f"| {s['t']} | {s['scenario']} | {', '.join(s['expected']) or 'clean'} | {named}{mark} | {client} |")
    return out


def _capacity(cap: dict | None) -> list[str]:
    if not cap:
        return []
    out = ["", "## Capacity of the bcc recorder", "",
           f"Highest rate recorded with zero lost events: **{_f(cap.get('max_lossless_rate'))} events/s** "
           f"({cap['config']['signal']}, {cap['config']['seconds']:g} s per step).", "",
           "| asked/s | sent/s | sent | recorded | lost (meta.json) | sent − recorded − lost | recorded/s | recorder CPU per event |",
           "|---|---|---|---|---|---|---|---|"]
    for s in cap["steps"]:
        if "error" in s:
            out.append(f"| {_f(s['rate_asked'])} | error: {s['error']} | | | | | | |")
            continue
        out.append(f"| {_f(s['rate_asked'])} | {_f(s['rate_sent'])} | {_f(s['sent'])} | {_f(s['recorded'])} | "
                   f"{_f(s['lost_events'])} | {_f(s['unaccounted'])} | {_f(s['recorded_rate'])} | "
                   f"{_f(s.get('cpu_us_per_event'), '{:.1f} µs')} |")
    out += ["", "Past the limit the kernel's ring buffer fills and reservations fail: each failure is "
            "counted per probe (meta.json `lost_by_probe`, the live view, the report). "
            "`sent − recorded − lost` is 0 when every event is either in the file or counted as lost; a "
            "negative value means the lost counter also holds other pods' signals lost in the same window."]
    return out


def _startup(st: dict | None) -> list[str]:
    if not st:
        return []
    out = ["", "## Startup and memory of `sigtrace record`", "",
           "| run | spawn → ready | compile + attach (meta.json startup_s) | RSS | PSS | anonymous | peak RSS | live reports |",
           "|---|---|---|---|---|---|---|---|"]
    for i, s in enumerate(st["runs"]):
        out.append(f"| {i + 1} | {s['ready_s']:.2f} s | {_f(s['startup_s'], '{:.2f}')} s | "
                   f"{_f((s['rss_kb'] or 0) / 1024, '{:.0f}')} MB | {_f((s.get('pss_kb') or 0) / 1024, '{:.0f}')} MB | "
                   f"{_f((s.get('anon_kb') or 0) / 1024, '{:.0f}')} MB | {_f((s['peak_rss_kb'] or 0) / 1024, '{:.0f}')} MB | {s.get('live_reports', '–')} |")
    out += ["", "A live report (a pod on the node stopped while recording, e.g. another job's lab pod) loads "
            "pandas into the recorder: about +115 MB RSS from then on."]
    return out


def _compacted(s: dict) -> str:
    """The compact row's note: the size on disk after, and what stayed JSONL."""
    if s["stage"] != "compact":
        return ""
    kept = s.get("kept") or []
    return (f"{s.get('disk_mb')} MB on disk after (the JSONL: {s['file_mb']} MB)"
            + (f"; {len(kept)} segments kept as JSONL ({kept[0]})" if kept else ""))


def _analysis(an: dict | None) -> list[str]:
    if not an:
        return []
    out = ["", "## Analysis throughput (synthetic recordings)", "",
           "| stage | layout | events | pods | file | wall | events/s | ms per pod | peak memory | note |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for s in an["stages"]:
        out.append(f"| {s['stage']} | {s.get('layout', 'jsonl')} | {_f(s['events'])} | {_f(s['pods'])} | "
                   f"{s['file_mb']} MB | "
                   f"{_f(s.get('wall_s'), '{:.1f} s')} | {_f(s.get('events_per_s'))} | "
                   f"{_f(s.get('ms_per_pod'), '{:.1f}')} | "
                   f"{_f(s.get('peak_rss_mb'), '{:,.0f} MB')} | "
                   f"{s.get('skipped') or s.get('error') or _compacted(s)} |")
    out += ["", "Layouts: `columnar` is what the recorder leaves by default (each closed 64 MiB segment compacted "
            "to an Arrow file by a low-priority child process; the last segment JSONL); `jsonl` is `record "
            "--no-compact` and recordings made before compaction. `file` is the JSONL's size. `compact` is the "
            "compaction of every closed segment by the recorder's own child process, one after the other (the "
            "recorder starts one per closed segment while it records); its peak is the largest child's. "
            "`report-pod` is `report --pod UID` of one pod of the last segment: every file read, that pod "
            "alone correlated. `report-dirty` is `report` of the same recording with one line that is not "
            "JSON in its last segment: that chunk read line by line, the rest as it is."]
    prof = an.get("profile") or {}
    if prof.get("inclusive"):
        out += ["", f"Where `sigtrace report --jobs 1` spends its time ({_f(prof['events'])} events, py-spy, "
                f"{prof['samples']} samples; inclusive share per function; --jobs 1: every part's work in "
                "the one process sampled):", ""]
        out += [f"- {pct}% {name}" for name, pct in prof["inclusive"]]
        out += ["", "Library calls the report's own frames wait in:", ""]
        out += [f"- {pct}% {name}" for name, pct in prof["waiting_in"]]
    elif prof.get("skipped"):
        out += ["", f"Profile: {prof['skipped']}."]
    return out


if __name__ == "__main__":
    sys.stdout.write(write_docs(json.load(open(sys.argv[1]))))
