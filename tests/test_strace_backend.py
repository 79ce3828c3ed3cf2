"""StraceBackend on real processes: bad input, a process in its own PID namespace signalled from
outside, and real runc pods (sigtrace.lab) recorded with `--backend strace` and reported."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import require_kernel
from strace_fixtures.make_fixtures import children, wait_for
from sigtrace.backends.strace import command
from sigtrace.backends.strace.backend import StraceBackend
from sigtrace.errors import PermissionProblem, UsageProblem
from sigtrace.events import capabilities as C
from sigtrace.events import schema as S

LAB_TOOLS = ("strace", "runc", "nginx", "php-fpm8.2", "ip")


def run_backend(be: StraceBackend, seconds: float, until=None) -> list[dict]:
    events: list[dict] = []
    be.open(events.append)
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (until and until(events)):
            be.poll(0.1)
    finally:
        be.close()
    return events


@pytest.fixture
def sleeper():
    procs: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        p = subprocess.Popen(list(args) or ["sleep", "60"], stdin=subprocess.DEVNULL)
        procs.append(p)
        return p
    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


# ---- bad input ---------------------------------------------------------------------------
def test_usage_errors_need_no_root():
    with pytest.raises(UsageProblem, match="--all is not possible"):
        StraceBackend(all_processes=True)
    with pytest.raises(UsageProblem, match="needs --pid"):
        StraceBackend()
    be = StraceBackend(pids=(1,), strace="/nonexistent/strace")
    with pytest.raises(command.StraceMissing, match="strace not found.*apt-get install strace"):
        be.open(lambda e: None)


def test_ptrace_permission_checks(tmp_path):
    proc = tmp_path / "proc"
    (proc / "sys/kernel/yama").mkdir(parents=True)
    (proc / "self").mkdir()
    (proc / "self/status").write_text("Name:\tx\nCapEff:\t0000000000000000\n")
    (proc / "sys/kernel/yama/ptrace_scope").write_text("3\n")
    with pytest.raises(PermissionProblem, match="ptrace_scope=3"):
        command.check_ptrace_permission(str(proc))
    (proc / "sys/kernel/yama/ptrace_scope").write_text("1\n")
    with pytest.raises(PermissionProblem, match="no CAP_SYS_PTRACE.*SYS_PTRACE"):
        command.check_ptrace_permission(str(proc))
    (proc / "self/status").write_text("Name:\tx\nCapEff:\t000001ffffffffff\n")       # root: every capability
    command.check_ptrace_permission(str(proc))
    assert command.has_cap_sys_ptrace("CapEff:\t0000000000080000\n")


def test_gone_and_already_traced_pids(sleeper):
    require_kernel(tools=("strace",))
    gone = sleeper("true")
    gone.wait()
    with pytest.raises(UsageProblem, match=rf"{gone.pid}: no such process"):
        StraceBackend(pids=(gone.pid,)).open(lambda e: None)
    victim = sleeper()
    holder = sleeper("strace", "-qq", "-o", "/dev/null", "-p", str(victim.pid))
    wait_for(lambda: command.tracer_of(victim.pid) == holder.pid)
    with pytest.raises(UsageProblem, match=rf"already traced by pid {holder.pid} \(strace\)"):
        StraceBackend(pids=(victim.pid,)).open(lambda e: None)
    # partial: one traced elsewhere, one free -> recording runs, meta says what was not attached
    free = sleeper()
    notes: list[str] = []
    be = StraceBackend(pids=(victim.pid, free.pid, gone.pid), note=notes.append)
    run_backend(be, 0.3)
    meta = be.meta()
    assert meta["partial_attach"] is True and meta["attached_pids"] == [free.pid]
    assert meta["attach"][str(victim.pid)]["status"] == "already_traced"
    assert meta["attach"][str(gone.pid)]["status"] == "gone"
    assert notes and "attached to 1 of 3" in notes[0]
    assert command.tracer_of(free.pid) == 0            # detached again on close


def test_cli_exits_nonzero_with_one_line(sigtrace_cli, tmp_path, sleeper):
    require_kernel(tools=("strace",))
    gone = sleeper("true")
    gone.wait()
    p = sigtrace_cli("record", "--backend", "strace", "--pid", str(gone.pid), "--output", str(tmp_path / "r"),
                     "--duration", "1", "--no-live")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0 and "could not attach to any process" in p.stderr


# ---- a real process tree in its own PID namespace ------------------------------------------
def test_namespace_init_signalled_from_outside_and_children_followed(sleeper):
    require_kernel(tools=("strace", "unshare"))
    # PID 1 of a new namespace with a TERM handler (a kernel drops handler-less signals to PID 1)
    ns = sleeper("unshare", "--pid", "--fork", "sh", "-c", "trap 'exit 3' TERM; while :; do sleep 0.1; done")
    wait_for(lambda: children(ns.pid))
    init = children(ns.pid)[0]
    be = StraceBackend(pids=(init,))
    sent = []

    def stop_when(events: list[dict]) -> bool:
        if not sent and sum(1 for e in events if e["kind"] == S.PROCESS_EXEC) >= 2:
            os.kill(init, signal.SIGTERM)               # from outside its PID namespace, like the runtime
            sent.append(time.time())
        return any(e["kind"] == S.PROCESS_EXIT and e["pid"] == init for e in events)
    events = run_backend(be, 15, stop_when)
    term = [e for e in events if e["kind"] == S.SIGNAL_DELIVER and e["sig"] == "SIGTERM"]
    assert len(term) == 1 and term[0]["pid"] == init and term[0]["nspid"] == 1
    assert term[0]["si_pid"] == 0 and term[0]["code"] == 0           # SI_USER from outside the namespace
    assert term[0]["ts"] >= sent[0] - 0.01
    exit_ = [e for e in events if e["kind"] == S.PROCESS_EXIT and e["pid"] == init]
    assert exit_[0]["exit_code"] == 3 and exit_[0]["ts"] >= term[0]["ts"]
    # children born after attach are followed (-f): each `sleep` exec'd, in the namespace, child of init
    execs = [e for e in events if e["kind"] == S.PROCESS_EXEC]
    assert execs and all(e["filename"].endswith("/sleep") and e["ppid"] == init and e["nspid"] > 1 for e in execs)
    meta = be.meta()
    assert meta["backend"] == "strace" and meta["strace"]["version"] and meta["strace_unparsed_lines"] == 0
    assert set(meta["capabilities"]) == {C.SIGNAL_DELIVERY, C.PROCESS_EXEC, C.PROCESS_EXIT, C.SOCKET_CALLS}


# ---- real runc pods through `sigtrace lab --backend strace` --------------------------------
def lab(sigtrace_cli, out: Path, *args: str) -> tuple[dict, list[dict], dict]:
    p = sigtrace_cli("lab", "--backend", "strace", "--output", str(out), "--format", "json", *args, timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    run = json.loads(p.stdout)[0]
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["backend"] == "strace" and meta["partial_attach"] is False and meta["strace_unparsed_lines"] == 0
    assert subprocess.run(["runc", "list", "-q"], capture_output=True, text=True).stdout.count(run["pod_uid"][:8]) == 0
    return run, events, meta


def pid1(events: list[dict], comm: str) -> dict:
    return next(e for e in events if e.get("nspid") == 1 and (e.get("comm") or "").startswith(comm)
                and e["kind"] != S.POD_LIFECYCLE)


def verdicts(run: dict) -> dict[str, dict]:
    assert "error" not in run["report"], run["report"]["error"]
    pods = [p for p in run["report"]["pods"] if p["pod_uid"] == run["pod_uid"]]
    return {v["id"]: v for v in pods[0]["verdicts"]}


@pytest.mark.kernel
def test_article_case_signals_from_prestop_and_runtime(sigtrace_cli, tmp_path):
    require_kernel(tools=LAB_TOOLS)
    run, events, _meta = lab(sigtrace_cli, tmp_path / "article", "--workers", "2", "--grace", "15",
                             "--prestop", "nginx=nginx -s quit", "--stop-signal", "nginx=TERM", "--lb-delay", "1")
    master = pid1(events, "nginx")
    got = [e for e in events if e["kind"] == S.SIGNAL_DELIVER and e["pid"] == master["pid"]]
    quit_ = [e for e in got if e["sig"] == "SIGQUIT"]
    term = [e for e in got if e["sig"] == "SIGTERM"]
    # the preStop's `nginx -s quit` runs inside the container: its own in-namespace pid, not 0, not 1
    assert len(quit_) == 1 and quit_[0]["si_pid"] not in (0, 1, None) and quit_[0]["code"] == 0
    # then the runtime's TERM from outside the PID namespace: si_pid=0, after the QUIT; unless the
    # drain was over first (fpm's 502s end requests at once) and `runc kill` found no master
    m_exit = next(e for e in events if e["kind"] == S.PROCESS_EXIT and e["pid"] == master["pid"])
    if term:
        assert len(term) == 1 and term[0]["si_pid"] == 0 and term[0]["ts"] > quit_[0]["ts"]
        assert quit_[0]["handler"] == "handler"                                  # nginx catches both
        # the handler is read from /proc as strace's line arrives: on a loaded machine the master may
        # have exited by then (it is gone, so none is said), which it does right after the TERM
        assert term[0].get("handler") == "handler" or (
            "handler" not in term[0] and term[0]["ts"] <= m_exit["ts"] <= term[0]["ts"] + 1.0), (term[0], m_exit)
    else:
        stop_sent = run["outcomes"]["nginx"]["stop_sent"]       # None: the lab saw the container gone
        assert m_exit["exit_code"] == 0 and (stop_sent is None or m_exit["ts"] <= stop_sent + 0.05)
    fpm = pid1(events, "php-fpm")
    fpm_term = [e for e in events if e["kind"] == S.SIGNAL_DELIVER and e["pid"] == fpm["pid"] and e["sig"] == "SIGTERM"]
    assert fpm_term and fpm_term[0]["si_pid"] == 0
    # fpm's master terminates its children at once (sent by the traced master: signal_generate)
    to_children = [e for e in events if e["kind"] == S.SIGNAL_GENERATE and e["pid"] == fpm["pid"]
                   and e["target_pid"] != fpm["pid"] and e["sig"] in ("SIGTERM", "SIGKILL")]
    assert to_children and all(e["target_container_id"] == fpm["container_id"] for e in to_children)
    # nginx saw its FastCGI connections reset by the dying children (the client got 502s)
    resets = [e for e in events if e["kind"] == S.TCP_RESET_RECEIVED and e["dport"] == 9000]
    assert run["client"]["counts"]["http_502"] >= 1 and resets
    assert all(e["container_id"] == master["container_id"] for e in resets)
    # the report: what needs evidence strace cannot give is undecidable and says which
    # strace runs in the pod's network namespace, so -yy decodes the pod's socket tuples
    # (a socket whose connect() to the dead php-fpm was refused has no local tuple to decode: no saddr)
    closes = [e for e in events if e["kind"] == S.SOCK_CLOSE and e.get("dport") and 9000 in (e.get("sport"), e["dport"])]
    assert closes and all(e.get("daddr") == "127.0.0.1" for e in closes)
    assert any(e.get("saddr") for e in closes) and all(e.get("saddr") in (None, "127.0.0.1") for e in closes)
    v = verdicts(run)
    assert v["endpoint-race"]["status"] == "undecidable" and C.KERNEL_RESETS in v["endpoint-race"]["missing"]
    # the same cause as the bpf backend names, here from the processes' own socket calls
    assert v["phpfpm-abrupt-stop"]["status"] == "confirmed"
    assert any(":9000" in e["what"] for e in v["phpfpm-abrupt-stop"]["evidence"])
    assert all(x["status"] == "undecidable" or x["evidence"] for x in v.values())


@pytest.mark.kernel
def test_shell_pid1_drops_term_and_is_killed_after_grace(sigtrace_cli, tmp_path):
    require_kernel(tools=LAB_TOOLS)
    run, events, _meta = lab(sigtrace_cli, tmp_path / "wrapped", "--workers", "1", "--shell-wrapper", "--grace", "3",
                             "--lb-delay", "0", "--request-ms", "500", "--stop-signal", "php-fpm=QUIT",
                             "--prestop", "php-fpm=sleep 1", "--process-control-timeout", "10")
    sh = pid1(events, "sh")
    # the runtime's TERM to a PID 1 without handler: under ptrace the kernel does not drop it when
    # generated, strace shows it, and the kernel discards it at delivery; handler=default says so
    term = [e for e in events if e["kind"] == S.SIGNAL_DELIVER and e["pid"] == sh["pid"] and e["sig"] == "SIGTERM"]
    assert len(term) == 1 and term[0]["si_pid"] == 0 and term[0]["handler"] == "default"
    assert not [e for e in events if e["kind"] == S.SIGNAL_DELIVER and e["sig"] == "SIGTERM"
                and e["container_id"] == sh["container_id"] and e["pid"] != sh["pid"]]     # never forwarded
    exit_ = [e for e in events if e["kind"] == S.PROCESS_EXIT and e["pid"] == sh["pid"]]
    assert exit_ and exit_[0]["exit_signal"] == "SIGKILL"
    assert run["outcomes"]["nginx"]["killed"]
    assert exit_[0]["ts"] - run["outcomes"]["nginx"]["stop_sent"] >= 2.9          # waited out the grace
    v = verdicts(run)
    assert v["killed-after-grace"]["status"] != "undecidable" and v["killed-after-grace"]["evidence"]
    # whether the kernel dropped the signal is signal_generate's result: not in a strace recording
    if "pid1-signal-ignored" in v:
        assert v["pid1-signal-ignored"]["status"] == "undecidable"
        assert C.SIGNAL_SENDER in v["pid1-signal-ignored"]["missing"]


@pytest.mark.kernel
def test_fpm_stopped_first_nginx_connect_refused(sigtrace_cli, tmp_path):
    require_kernel(tools=LAB_TOOLS)
    run, events, _meta = lab(sigtrace_cli, tmp_path / "fpm-first", "--workers", "1", "--grace", "15",
                             "--stop-order", "php-fpm,nginx", "--stop-delay", "2", "--stop-signal", "php-fpm=QUIT",
                             "--process-control-timeout", "10", "--stop-signal", "nginx=QUIT", "--request-ms", "300",
                             "--lb-delay", "1.5")
    fpm, master = pid1(events, "php-fpm"), pid1(events, "nginx")
    fpm_exit = next(e for e in events if e["kind"] == S.PROCESS_EXIT and e["pid"] == fpm["pid"])
    refused = [e for e in events if e["kind"] == S.CONNECT_ERROR and e["dport"] == 9000]
    assert refused and {e["reason"] for e in refused} == {"ECONNREFUSED"}
    assert all(e["container_id"] == master["container_id"] and e["comm"] == "nginx" for e in refused)
    assert min(e["ts"] for e in refused) >= fpm_exit["ts"] - 0.5          # after fpm's listener went away
    assert run["client"]["counts"]["http_502"] >= 1
    v = verdicts(run)
    assert v["upstream-exited-first"]["status"] != "undecidable" and v["upstream-exited-first"]["evidence"]
