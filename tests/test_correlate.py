"""Correlation details on small hand-written events: roles, trigger, connections, refusals.
Shapes follow what this kernel really emits (checked on lab recordings): SYN_SENT before the
local port is bound (sport 0), sock addresses reused at once, connections first seen already
established when the recorder arms TCP detail at the stop."""
from __future__ import annotations

from pathlib import Path

from sigtrace.correlate.build import capabilities_of
from sigtrace.correlate.build import build_context
from sigtrace.events import capabilities as C
from sigtrace.events.reader import events_frame, read_recording

DATA = Path(__file__).parent / "data"
POD = "7d2c4e8a-0000-4c5d-9e6f-00000000000a"
N = {"pod_uid": POD, "container_id": "aa11aa11aa11"}
ALL = frozenset(C.ALL) - {C.SOCKET_CALLS}


def ctx_of(rows, caps=ALL):
    return build_context(events_frame(rows), POD, caps)


def tcp(ts, sport, dport, old, new, sock, pid=0, comm="x", **kw):
    return dict(ts=ts, kind="tcp_state", pid=pid, comm=comm, pod_uid=POD, saddr="127.0.0.1", sport=sport,
                daddr="127.0.0.1", dport=dport, old_state=old, new_state=new, sock=sock, **kw)


def test_roles_from_the_article_recording():
    rec = read_recording(DATA / "article")
    caps, _ = capabilities_of(rec.meta, rec.events)
    ctx = build_context(rec.events, POD, caps)
    roles = {p.pid: p.role for p in ctx.procs.values()}
    assert roles == {1001: "nginx-master", 1010: "nginx-worker", 3001: "prestop",
                     2001: "fpm-master", 2010: "fpm-child"}
    assert ctx.t0 == 1000.0                   # the preStop exec, before the runtime's TERM
    assert ctx.listeners[9000].upstream and not ctx.listeners[8080].upstream
    assert ctx.containers["aa11aa11aa11"].stop_signal.sig == "SIGTERM"
    assert ctx.containers["aa11aa11aa11"].name == "nginx"


def test_exec_long_before_the_stop_is_not_a_prestop():
    rows = [dict(ts=900.0, kind="process_exec", pid=50, comm="cat", nspid=9, filename="/bin/cat", ppid=7, **N),
            dict(ts=1000.0, kind="signal_generate", pid=7, comm="runc", sig="SIGTERM", target_pid=1001,
                 target_comm="nginx", target_pod_uid=POD, target_container_id="aa11aa11aa11", target_nspid=1,
                 result="delivered")]
    ctx = ctx_of(rows)
    assert ctx.procs[50].role == "exec" and ctx.t0 == 1000.0 and ctx.procs[1001].role == "nginx-master"


def test_reused_sock_address_is_two_connections_and_syn_sent_has_no_port_yet():
    rows = [
        # a client connection (sport 0 at SYN_SENT), refused by a closed port
        tcp(1.0, 0, 8080, "CLOSE", "SYN_SENT", "0xa"),
        tcp(1.0001, 40001, 8080, "SYN_SENT", "CLOSE", "0xa"),
        # the same sock address reused at once by a server-side child of the listener
        tcp(1.1, 8080, 40002, "LISTEN", "SYN_RECV", "0xa"),
        tcp(1.1001, 8080, 40002, "SYN_RECV", "ESTABLISHED", "0xa"),
        tcp(1.5, 8080, 40002, "ESTABLISHED", "CLOSE_WAIT", "0xa"),
    ]
    ctx = ctx_of(rows)
    c = ctx.conns.frame.set_index("key")
    assert set(c.index) == {"0xa#1", "0xa#2"}
    assert (c.loc["0xa#1", "side"], c.loc["0xa#1", "close_kind"], c.loc["0xa#1", "sport"]) == ("client", "refused", 40001)
    assert (c.loc["0xa#2", "side"], c.loc["0xa#2", "port"], c.loc["0xa#2", "closed_by"]) == ("server", 8080, "peer")
    assert list(ctx.refused.frame["client_port"]) == [40001]


def test_reused_sock_address_without_a_visible_start_is_split_by_its_tuple():
    # the recorder does not stream handshakes: a sock address freed by one connection and reused
    # by an accepted FastCGI connection shows no CLOSE -> ... start, only a new 4-tuple
    rows = [
        tcp(1.0, 58358, 9000, "ESTABLISHED", "FIN_WAIT1", "0xb", pid=10, comm="nginx"),
        tcp(2.0, 9000, 38930, "ESTABLISHED", "CLOSE", "0xb", pid=20, comm="php-fpm8.2"),
        dict(ts=2.0001, kind="tcp_reset_sent", pid=20, comm="php-fpm8.2", pod_uid=POD, saddr="127.0.0.1",
             sport=9000, daddr="127.0.0.1", dport=38930, old_state="CLOSE", sock="0xb", reason="TCP_ABORT_ON_CLOSE"),
        tcp(0.5, 9000, 0, "CLOSE", "LISTEN", "0xl", pid=20, comm="php-fpm8.2"),
    ]
    c = ctx_of(rows).conns.frame.set_index("key")
    assert len(c) == 2
    fcgi = c[c["sport"] == 9000].iloc[0]
    assert (fcgi["side"], fcgi["port"], fcgi["port_class"], fcgi["close_kind"], fcgi["closed_by"], fcgi["dport"]) \
        == ("server", 9000, "upstream", "rst", "pod", 38930)
    older = c[c["sport"] == 58358].iloc[0]
    assert (older["side"], older["port"]) == ("client", 9000)


def fpm_child_killed_mid_request():
    """A php-fpm child SIGKILLed with a FastCGI connection open since before the recording."""
    return [
        dict(ts=0.5, kind="process_exit", pid=2010, comm="php-fpm8.2", pod_uid=POD, container_id="bb22", nspid=5,
             exit_signal="SIGKILL"),
        tcp(0.5001, 9000, 40560, "ESTABLISHED", "CLOSE", "0xf", pid=2010, container_id="bb22"),
        dict(ts=0.5002, kind="tcp_reset_sent", pid=2010, comm="php-fpm8.2", pod_uid=POD, saddr="127.0.0.1",
             sport=9000, daddr="127.0.0.1", dport=40560, sock="0xf", reason="TCP_ABORT_ON_CLOSE"),
        tcp(0.6, 9000, 0, "LISTEN", "CLOSE", "0x9000", pid=2001, comm="php-fpm8.2"),
    ]


def test_connection_first_seen_established_was_open_before_and_its_reset_is_matched():
    ctx = ctx_of(fpm_child_killed_mid_request())
    (c,) = ctx.conns.frame.to_dict("records")
    assert c["est_ts"] == float("-inf") and c["close_kind"] == "rst" and c["reset_by"] == "pod"
    assert c["side"] == "server" and c["port"] == 9000 and c["port_class"] == "upstream"
    assert c["at_exit"] and c["closer_pid"] == 2010
    assert len(ctx.conns.open_at(0.4, "upstream")) == 1


def test_connection_questions_answer_with_typed_rows():
    # the verdict rules' view: questions narrow the set, rows come out typed (None, never NaN)
    ctx = ctx_of(fpm_child_killed_mid_request())
    cut = ctx.conns.open_at(0.4).upstream().cut_by_pod()
    (c,) = cut
    assert (c.port, c.closer_pid, c.at_exit, c.fin_row, c.rst_ts) == (9000, 2010, True, None, 0.5002)
    assert c.row == c.close_row and isinstance(c.row, int)
    role = ctx.procs[2010].role
    assert not cut.not_closed_by_roles((role,)) and len(cut.closed_by_roles((role,))) == 1
    assert len(cut.not_closed_by_roles(("nginx-worker",))) == 1
    assert not ctx.conns.open_at(0.4).serving() and not ctx.conns.open_at(0.55)
    assert cut.earliest_end() == 0.5001 and ctx.conns.ended(before=0.5).earliest_end() is None
    assert not ctx.refused and ctx.refused.latest() is None and not ctx.calls.closes()


def test_reset_without_socket_for_a_known_connection_is_not_a_refusal():
    rows = [
        tcp(1.0, 8080, 40002, "LISTEN", "SYN_RECV", "0xb"),
        tcp(1.0001, 8080, 40002, "SYN_RECV", "ESTABLISHED", "0xb"),
        tcp(1.2, 8080, 40002, "ESTABLISHED", "CLOSE", "0xb"),
        # a late segment of that connection answered by a reset without socket
        dict(ts=1.3, kind="tcp_reset_sent", pid=0, comm="swapper/0", pod_uid=POD, saddr="127.0.0.1", sport=8080,
             daddr="127.0.0.1", dport=40002, reason="NO_SOCKET"),
        dict(ts=1.4, kind="tcp_reset_sent", pid=0, comm="swapper/0", pod_uid=POD, saddr="127.0.0.1", sport=8080,
             daddr="127.0.0.1", dport=40003, reason="NO_SOCKET"),
    ]
    ctx = ctx_of(rows)
    assert list(ctx.refused.frame["client_port"]) == [40003]


def test_runc_init_thread_kills_at_exec_are_not_signals():
    rows = [dict(ts=1.0, kind="signal_deliver", pid=3001, tid=3002, comm="runc:[2:INIT]", nspid=8, sig="SIGKILL",
                 code=0, handler="default", **N),
            dict(ts=1.01, kind="process_exec", pid=3001, tid=3001, comm="nginx", nspid=8, filename="/usr/sbin/nginx",
                 ppid=3000, **N)]
    ctx = ctx_of(rows)
    assert ctx.signals == []


def test_capabilities_inferred_without_meta_list():
    rec = read_recording(DATA / "strace_shell")
    caps, notes = capabilities_of({}, rec.events)
    assert caps == {C.SIGNAL_DELIVERY, C.PROCESS_EXIT} and "no capabilities" in notes[0]


def rst(ts, kind, sport, dport, sock, old=None, reason=None, pid=77, comm="python"):
    return dict(ts=ts, kind=kind, pid=pid, comm=comm, pod_uid=POD, saddr="127.0.0.1", sport=sport,
                daddr="127.0.0.1", dport=dport, sock=sock, old_state=old, reason=reason)


LISTEN = tcp(0.5, 8080, 0, "CLOSE", "LISTEN", "0xl", pid=10, comm="nginx")


def test_reset_from_a_time_wait_orphan_joins_the_connection_by_its_4_tuple():
    # nginx closes an idle keep-alive connection (FIN); the client's next request arrives at the
    # TIME_WAIT mini socket, whose kernel address (0xtw) no state change ever showed (this kernel)
    rows = [LISTEN,
            tcp(1.0, 8080, 40001, "ESTABLISHED", "FIN_WAIT1", "0xs", pid=11, comm="nginx"),
            rst(1.2, "tcp_reset_sent", 8080, 40001, "0xtw", old="TIME_WAIT", reason="TCP_TIMEWAIT_SOCKET")]
    ctx = ctx_of(rows + [dict(ts=0.1, kind="process_exec", pid=11, comm="nginx", nspid=7, ppid=10, **N)])
    c = ctx.conns.frame.set_index("dport").loc[40001]
    assert (c["side"], c["close_kind"], c["reset_by"], c["closed_by"]) == ("server", "rst", "pod", "pod")
    assert c["rst_after_close"] and c["rst_ts"] == 1.2 and c["end_ts"] == 1.0
    assert c["closer_pid"] == 11                # who closed it: the FIN's task, not the reset's (the client)
    fin = ctx.events.loc[int(c["fin_row"])]
    assert (fin["kind"], fin["new_state"], fin["sock"]) == ("tcp_state", "FIN_WAIT1", "0xs")
    assert ctx.display.stats["client_resets"] == 1


def test_reset_on_a_reused_sock_address_goes_to_the_connection_of_its_4_tuple():
    # 0xs served 40001 (closed by nginx); the kernel reused the address for a connect() to 8080 from
    # port 33378, refused: its reset is traced microseconds before that socket's own CLOSE
    rows = [LISTEN,
            tcp(1.0, 8080, 40001, "ESTABLISHED", "FIN_WAIT1", "0xs", pid=11, comm="nginx"),
            rst(2.0, "tcp_reset_received", 33378, 8080, "0xs"),
            tcp(2.000005, 33378, 8080, "SYN_SENT", "CLOSE", "0xs")]
    ctx = ctx_of(rows)
    conns = ctx.conns.frame.set_index("dport")
    old = conns.loc[40001]
    assert (old["close_kind"], old["closed_by"], bool(old["rst_after_close"])) == ("fin", "pod", False)
    assert ctx.display.stats.get("client_resets", 0) == 0


def test_a_reset_matching_no_4_tuple_keeps_its_sock():
    # the tuple check only re-keys: a reset whose tuple no state change shows stays with its sock
    rows = [LISTEN, tcp(1.0, 8080, 40001, "ESTABLISHED", "CLOSE_WAIT", "0xs", pid=11, comm="nginx"),
            rst(1.5, "tcp_reset_sent", 8080, 40099, "0xs", old="CLOSE_WAIT")]
    c = ctx_of(rows).conns.frame.set_index("dport").loc[40001]
    assert c["close_kind"] == "rst" and not c["rst_after_close"]


def test_stop_stats_leave_out_resets_before_the_stop():
    # a keep-alive race 10 s before the stop trigger is no stop's doing
    rows = [LISTEN,
            tcp(1.0, 8080, 40001, "ESTABLISHED", "FIN_WAIT1", "0xs", pid=11, comm="nginx"),
            rst(1.2, "tcp_reset_sent", 8080, 40001, "0xtw", old="TIME_WAIT", reason="TCP_TIMEWAIT_SOCKET"),
            tcp(11.0, 8080, 40002, "ESTABLISHED", "FIN_WAIT1", "0xt", pid=11, comm="nginx"),
            rst(11.2, "tcp_reset_sent", 8080, 40002, "0xtw2", old="TIME_WAIT", reason="TCP_TIMEWAIT_SOCKET"),
            dict(ts=11.0, kind="signal_generate", pid=7, comm="runc", sig="SIGQUIT", target_pid=10,
                 target_comm="nginx", target_pod_uid=POD, target_container_id="aa11aa11aa11", target_nspid=1,
                 result="delivered")]
    from sigtrace.report import build_reports
    rs = build_reports(events_frame(rows), {"capabilities": sorted(ALL)})
    (pod,) = rs.pods
    assert pod.stopped and pod.stats["client_resets"] == 1
    assert [v.id for v in pod.verdicts] == ["keepalive-close-race"]
    assert "1 idle keep-alive" in pod.verdicts[0].summary
    (out,) = rs.outside_stop
    assert (out["pod_uid"], out["stopped"], out["client_resets"], out["keepalive_races"]) == (POD, True, 1, 1)
    assert out["first_ts"] == out["last_ts"] == 1.2
    # the node-level summary in every format
    import io
    from rich.console import Console
    from sigtrace.render.html import render_html
    from sigtrace.render.text import render_text
    assert rs.to_dict()["resets_outside_stop"] == [out]
    buf = io.StringIO()
    render_text(rs, Console(file=buf, width=160, force_terminal=False, color_system=None))
    text = buf.getvalue()
    assert "resets outside a stop" in text and f"pod {POD}: 1 client reset(s), 0 FastCGI reset(s) before its stop" in text
    assert "resets outside a stop" in render_html(rs)


def test_exec_probes_around_the_deletion_are_no_prestop_when_the_pod_declares_its_hooks():
    # kubelet exec probes (`true`) every second; the pod declares `sleep 5` as nginx's preStop
    import json as _json
    seen = dict(ts=0.0, kind="pod_lifecycle", event="pod_seen", pod_uid=POD, pod_name="web",
                detail=_json.dumps({"containers": {"aa11aa11aa11": "nginx"}, "prestop": {"nginx": "sleep 5"}}))
    deleted = dict(ts=10.0, kind="pod_lifecycle", event="pod_deleted", pod_uid=POD, detail="{}")
    execs = [dict(ts=ts, kind="process_exec", pid=pid, comm=comm, nspid=9, filename=f"/usr/bin/{comm}", ppid=5, **N)
             for ts, pid, comm in ((9.5, 60, "true"), (10.01, 61, "sleep"), (10.5, 62, "true"))]
    stop = dict(ts=15.02, kind="signal_generate", pid=7, comm="runc", sig="SIGQUIT", target_pid=1001,
                target_comm="nginx", target_pod_uid=POD, target_container_id="aa11aa11aa11", target_nspid=1,
                result="delivered")
    ctx = ctx_of([seen, deleted, *execs, stop])
    assert {p.pid: p.role for p in ctx.procs.values() if p.pid in (60, 61, 62)} == {60: "exec", 61: "prestop", 62: "exec"}
    assert ctx.t0 == 10.01 and [p.pid for p in ctx.prestops] == [61]
