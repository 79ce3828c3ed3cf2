"""build_reports groups the recording once for all pods (connections aggregated in one pass, one
exec map): the result must be exactly what the pod alone, aggregated on its own, gives. And
sockets without a kernel identity (strace backend, old recordings) still correlate."""
from __future__ import annotations

import pandas as pd
import pytest

from bench import synth
from sigtrace.report.build import build_reports, report_recording
from sigtrace.events.reader import events_frame, read_recording

POD = "7d2c4e8a-0000-4c5d-9e6f-00000000000b"


def tcp(ts, sport, dport, old, new, pid=7, **kw):
    # no "sock" key at all: what the strace backend and old recorders write
    return dict(ts=ts, kind="tcp_state", pid=pid, comm="nginx", pod_uid=POD, saddr="10.0.0.1", sport=sport,
                daddr="10.0.0.2", dport=dport, old_state=old, new_state=new, **kw)


NO_SOCK = [tcp(1.0, 8080, 0, "CLOSE", "LISTEN"),
           tcp(2.0, 8080, 40001, "SYN_RECV", "ESTABLISHED"),
           tcp(2.5, 8080, 40002, "SYN_RECV", "ESTABLISHED"),
           tcp(3.0, 8080, 40001, "ESTABLISHED", "FIN_WAIT1"),
           tcp(3.5, 8080, 40002, "ESTABLISHED", "CLOSE")]


@pytest.mark.parametrize("sock", ["missing", "float-nan", "numbers"])
def test_tcp_state_without_sock(sock):
    ev = events_frame(NO_SOCK)
    if sock == "float-nan":
        ev["sock"] = float("nan")           # an all-null column read back from CSV/Parquet
    elif sock == "numbers":
        ev["sock"] = pd.Series([None, 11, 12, 11, 12], dtype="Int64")   # numeric-looking ids from CSV
    (rep,) = build_reports(ev, {}).pods
    st = rep.to_dict()["stats"]
    assert st["client_connections"] == 2
    assert st["client_resets"] == 1          # 40002: ESTABLISHED -> CLOSE, reset by the pod
    lanes = sorted((c["start_t"], c["close_kind"], c["closed_by"]) for c in rep.connections)
    assert [x[1:] for x in lanes] == [("fin", "pod"), ("rst", "pod")]


def test_grouped_reports_equal_per_pod_reports(tmp_path):
    info = synth.generate(tmp_path / "rec", 3000, events_per_pod=150, seed=3)
    assert info["pods"] >= 10
    rec = read_recording(tmp_path / "rec")
    grouped = {p["pod_uid"]: p for p in build_reports(rec.events, rec.meta).to_dict()["pods"]}
    ev = rec.events
    assert len(grouped) == info["pods"]
    for uid, got in grouped.items():
        # the pod's events alone (same row numbers): correlated without the other pods around it
        mine = ev[(ev["pod_uid"] == uid).fillna(False) | (ev["target_pod_uid"] == uid).fillna(False)]
        (alone,) = build_reports(mine, rec.meta).to_dict()["pods"]
        assert got == alone, uid
        assert got["verdicts"] or got["stats"]["client_connections"], uid   # a real story, not empty
