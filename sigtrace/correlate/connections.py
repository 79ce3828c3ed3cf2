"""TCP view of one pod: listeners, connections (server side / client side, FIN vs RST, who closed,
closed by a dying process) and refused connection attempts. Vectorised: a stopping pod under load
has many sockets.

Events of one connection come from both ends when the client runs in the pod's network
namespace (the lab's load generator): a socket is "server" side when its local port is one the
pod listens on, "client" side when its remote port is; stats count server sides only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..events import schema as S
from .rows import Row

DEFAULT_UPSTREAM_PORTS = (9000,)     # php-fpm's default; used only when no listener owner is known
RST_FROM = ("ESTABLISHED", "SYN_RECV", "CLOSE_WAIT")
# a socket closed by the kernel while its process exits: the close happens in do_exit, just after
# sched_process_exit, so the close's pid is a process whose exit is at most this much earlier
EXIT_CLOSE_WINDOW_S = 1.0


@dataclass
class Listener:
    port: int
    addr: str | None
    open_ts: float | None
    close_ts: float | None
    close_row: int | None
    owner_pid: int | None
    owner_comm: str | None
    container_id: str | None
    upstream: bool = False


def _s(col: pd.Series) -> pd.Series:
    """Categorical/string column as plain object strings (NA kept) for comparisons. Through a
    categorical: the rows then share one str object per distinct value (an address, a state)
    instead of one each, ~50 bytes a row less on a 10M-event recording's columns."""
    if col.dtype == object or isinstance(col.dtype, pd.CategoricalDtype):
        return col.astype("object")
    return col.astype("category").astype("object")


def build_listeners(rows: list[Row], child_ports: "set[int] | None" = None) -> dict[int, Listener]:
    """rows: the pod's LISTEN transitions (-> LISTEN, LISTEN -> CLOSE) in time order; child_ports:
    ports of sockets cloned from a listener (LISTEN -> SYN_RECV), which prove a listener we did not
    see open."""
    listeners: dict[int, Listener] = {}
    for r in rows:
        if r.get("sport") is None:
            continue
        port = int(r["sport"])
        li = listeners.get(port)
        if li is None:
            li = listeners[port] = Listener(port, r.get("saddr"), None, None, None, None, None, None)
        if r.get("new_state") == "LISTEN":
            li.open_ts = li.open_ts if li.open_ts is not None else float(r["ts"])
            li.close_ts = li.close_row = None          # reopened (restart): the last close counts
        else:
            li.close_ts, li.close_row = float(r["ts"]), r["row"]
        if li.owner_pid is None and r.get("pid"):
            li.owner_pid, li.owner_comm, li.container_id = int(r["pid"]), r.get("comm"), r.get("container_id")
    for port in child_ports or ():
        listeners.setdefault(int(port), Listener(int(port), None, None, None, None, None, None, None))
    return listeners


def listener_masks(st: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """(LISTEN opens and closes, children cloned from a listener) among tcp_state rows."""
    new, old = _s(st["new_state"]), _s(st["old_state"])
    return (new == "LISTEN") | ((old == "LISTEN") & (new == "CLOSE")), (old == "LISTEN") & (new == "SYN_RECV")


def aggregate_connections(tcp: pd.DataFrame, by_pod: bool = False) -> pd.DataFrame | None:
    """The listener-independent part of build_connections: one row per connection (index: its key)
    with when it was established, how and when each side closed or reset it. by_pod: tcp holds
    many pods' events; connections are told apart per pod_uid and a "pod" column says whose."""
    st = tcp[tcp["kind"] == S.TCP_STATE]
    if st.empty:
        return None
    rs_all = tcp[tcp["kind"].isin((S.TCP_RESET_SENT, S.TCP_RESET_RECEIVED)) & tcp["sock"].notna()]
    fast = _fast_keys(st, rs_all, by_pod)
    if fast is not None:
        key, rkey, names = fast
    else:
        pod = _s(st["pod_uid"]).astype(str) + "|" if by_pod else None
        key = _conn_key(st, pod)
    # states compared through their codes: one factorization, then integer masks (an object
    # comparison per state over every event was a good part of a big recording's report)
    is_new, is_old = _matcher(_s(st["new_state"])), _matcher(_s(st["old_state"]))
    listening = set(key[is_new("LISTEN") | (is_old("LISTEN") & is_new("CLOSE"))])
    keep = ~key.isin(listening)
    st, key = st[keep], key[keep]
    if st.empty:
        return None
    k = keep.to_numpy(dtype=bool)
    new_is = {v: pd.Series(is_new(v).to_numpy()[k], index=st.index)
              for v in ("SYN_RECV", "SYN_SENT", "ESTABLISHED", "CLOSE", "FIN_WAIT1", "CLOSE_WAIT")}
    rst_from = pd.Series(is_old(*RST_FROM).to_numpy()[k], index=st.index)
    old = _s(st["old_state"])
    ts = st["ts"]
    pid = pd.Series(st["pid"].astype("Float64").to_numpy(dtype=float, na_value=np.nan), index=st.index)
    f = pd.DataFrame({
        "key": key, "row": st.index, "ts": ts, "saddr": _s(st["saddr"]), "sport": st["sport"].astype("Float64"),
        "daddr": _s(st["daddr"]), "dport": st["dport"].astype("Float64"), "old_state": old,
        "syn_recv": new_is["SYN_RECV"], "syn_sent": new_is["SYN_SENT"],
        "est_ts": ts.where(new_is["ESTABLISHED"]),
        "close_ts": ts.where(new_is["CLOSE"]),
        "fin_local_ts": ts.where(new_is["FIN_WAIT1"]),
        "fin_local_pid": pid.where(new_is["FIN_WAIT1"]),
        "fin_local_row": pd.Series(st.index, index=st.index).where(new_is["FIN_WAIT1"]),
        "fin_peer_ts": ts.where(new_is["CLOSE_WAIT"]),
        "rst_trans_ts": ts.where(new_is["CLOSE"] & rst_from),
        "rst_trans_pid": pid.where(new_is["CLOSE"] & rst_from),
        "rst_trans_row": pd.Series(st.index, index=st.index).where(new_is["CLOSE"] & rst_from),
    }, index=st.index)
    if by_pod:
        f["pod"] = _s(st["pod_uid"])
    g = f.groupby("key", sort=False)
    c = g.agg(first_ts=("ts", "min"), last_ts=("ts", "max"), first_row=("row", "min"),
              saddr=("saddr", "first"), sport=("sport", "max"), daddr=("daddr", "first"), dport=("dport", "max"),
              first_old=("old_state", "first"),
              syn_recv=("syn_recv", "any"), syn_sent=("syn_sent", "any"),
              est_ts=("est_ts", "min"), close_ts=("close_ts", "min"),
              fin_local_ts=("fin_local_ts", "min"), fin_local_pid=("fin_local_pid", "first"),
              fin_local_row=("fin_local_row", "min"),
              fin_peer_ts=("fin_peer_ts", "min"),
              rst_trans_ts=("rst_trans_ts", "min"), rst_trans_pid=("rst_trans_pid", "first"),
              rst_trans_row=("rst_trans_row", "min"), **({"pod": ("pod", "first")} if by_pod else {}))
    # resets reported by the kernel for full sockets
    rs = rs_all
    if len(rs):
        rk = rkey if fast is not None else _reset_keys(rs, tcp[tcp["kind"] == S.TCP_STATE].sort_values("ts", kind="stable"), by_pod)
        rk = _match_reset_tuples(rs, rk, c, st, key, by_pod)
        sent = rs["kind"] == S.TCP_RESET_SENT
        r = pd.DataFrame({"key": rk, "rst_sent_ts": rs["ts"].where(sent), "rst_sent_row": pd.Series(rs.index, index=rs.index).where(sent),
                          "rst_sent_pid": pd.Series(rs["pid"].astype("Float64").to_numpy(dtype=float, na_value=np.nan), index=rs.index).where(sent),
                          "rst_recv_ts": rs["ts"].where(~sent),
                          "rst_recv_row": pd.Series(rs.index, index=rs.index).where(~sent)})
        c = c.join(r.groupby("key").agg(rst_sent_ts=("rst_sent_ts", "min"), rst_sent_row=("rst_sent_row", "min"),
                                         rst_sent_pid=("rst_sent_pid", "first"), rst_recv_ts=("rst_recv_ts", "min"),
                                         rst_recv_row=("rst_recv_row", "min")))
    # first seen already established: it was open before the recorder streamed this pod's TCP detail
    c["est_ts"] = c["est_ts"].where(~(c["est_ts"].isna() & c["first_old"].isin(OPEN_BEFORE)), -np.inf)
    for col in ("rst_sent_ts", "rst_sent_row", "rst_sent_pid", "rst_recv_ts", "rst_recv_row"):
        if col not in c:
            c[col] = np.nan
    c["sport"], c["dport"] = c["sport"].astype("Int64"), c["dport"].astype("Int64")
    if fast is not None:
        # the integer keys' names, built per connection instead of per event
        c.index = pd.Index([f"{names[k >> _INC_BITS]}#{k & _INC_MASK}" for k in c.index.tolist()], name="key")
    return c


# the states a socket is in after its own side began to close: a reset that comes later on the
# same 4-tuple from another socket is sent by that connection's orphan (TIME_WAIT / FIN_WAIT2 mini
# socket, which has a kernel address of its own)
CLOSING_STATES = ("FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSING", "LAST_ACK", "CLOSE")
ORPHAN_S = 120.0          # TIME_WAIT and an orphaned FIN_WAIT2 last 60 s each
REUSE_AHEAD_S = 1.0       # a reset is traced a few microseconds before its socket's own state change


def _match_reset_tuples(rs: pd.DataFrame, rk: pd.Series, c: pd.DataFrame, st: pd.DataFrame, key: pd.Series,
                        by_pod: bool) -> pd.Series:
    """Resets whose sock names no connection with their 4-tuple, re-keyed by the 4-tuple.

    A sock id is a kernel address, reused as soon as a socket is freed, and the reset of an orphan
    comes from a TIME_WAIT mini socket whose address no state change ever showed. So a reset is
    the connection of its sock only when their 4-tuples agree; otherwise (checked only for those
    few) it is, in order: the same sock and 4-tuple at the nearest earlier state change, or one
    just after (the reused socket's own change follows its reset by microseconds), or the last
    connection on that 4-tuple when it was closing (the orphan's reset: the peer sent data on a
    connection this side had closed). A reset matching none keeps its sock's key."""
    cols = ["saddr", "sport", "daddr", "dport"] + (["pod"] if by_pod else [])
    known = rk.isin(c.index).to_numpy()
    same = np.zeros(len(rs), dtype=bool)
    if known.any():
        conn = c.reindex(rk[known].to_numpy())
        ok = np.ones(int(known.sum()), dtype=bool)
        for col in cols:
            mine = rs["pod_uid" if col == "pod" else col][known]
            if col in ("sport", "dport"):     # missing ports (NaN) never agree
                ok &= mine.astype("Float64").to_numpy(dtype=float, na_value=np.nan) == \
                    conn[col].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
            else:
                ok &= (_s(mine).fillna("\0").to_numpy(dtype=object) == conn[col].astype("object").fillna("\0").to_numpy(dtype=object))
        same[np.flatnonzero(known)] = ok
    doubtful = ~same
    if not doubtful.any():
        return rk
    d = rs[doubtful]
    sports, dports = d["sport"].dropna().unique(), d["dport"].dropna().unique()
    cand_mask = (st["sport"].isin(sports) & st["dport"].isin(dports)).to_numpy()
    if not cand_mask.any():
        return rk
    cand = st[cand_mask]

    def tuple_of(f: pd.DataFrame) -> pd.Series:
        # a Python tuple per row: no separator a crafted uid or address could hold ("a|b" joined was)
        parts = [_s(f["saddr"]).astype(str), f["sport"].astype("Float64").astype(str),
                 _s(f["daddr"]).astype(str), f["dport"].astype("Float64").astype(str)]
        if by_pod:
            parts.insert(0, _s(f["pod_uid"]).astype(str))
        return pd.Series(list(zip(*(p.tolist() for p in parts))), index=f.index, dtype=object)

    a = pd.DataFrame({"ts": cand["ts"].to_numpy(dtype=float), "tup": tuple_of(cand).to_numpy(dtype=object),
                      "sock": _s(cand["sock"]).astype(str).to_numpy(dtype=object),
                      "pos": np.arange(len(cand), dtype=float),
                      "closing": _s(cand["new_state"]).isin(CLOSING_STATES).to_numpy(dtype=bool)})
    r = pd.DataFrame({"ts": d["ts"].to_numpy(dtype=float), "tup": tuple_of(d).to_numpy(dtype=object),
                      "sock": _s(d["sock"]).astype(str).to_numpy(dtype=object), "idx": d.index})
    a, r = a.sort_values("ts", kind="stable"), r.sort_values("ts", kind="stable")
    back = pd.merge_asof(r, a, on="ts", by=["tup", "sock"], direction="backward")["pos"].to_numpy()
    ahead = pd.merge_asof(r, a, on="ts", by=["tup", "sock"], direction="forward",
                          tolerance=REUSE_AHEAD_S)["pos"].to_numpy()
    orphan = pd.merge_asof(r, a.drop(columns="sock"), on="ts", by="tup", direction="backward",
                           tolerance=ORPHAN_S)
    orphan_pos = np.where(orphan["closing"].fillna(False).to_numpy(dtype=bool), orphan["pos"].to_numpy(), np.nan)
    pos = np.where(~np.isnan(back), back, np.where(~np.isnan(ahead), ahead, orphan_pos))
    found = ~np.isnan(pos)
    if not found.any():
        return rk
    cand_keys = key[cand_mask].to_numpy()
    out = rk.copy()
    out.loc[r["idx"].to_numpy()[found]] = cand_keys[pos[found].astype(np.intp)]
    return out


def _matcher(col: pd.Series) -> Any:
    """col's values factorized once; the returned function gives the mask of rows equal to any of
    the values (missing rows never match, as with ==)."""
    codes, uniq = pd.factorize(col.to_numpy(dtype=object), use_na_sentinel=True)
    pos = {u: i for i, u in enumerate(uniq)}

    def eq(*values: str) -> pd.Series:
        hits = [pos[v] for v in values if v in pos]
        return pd.Series(np.isin(codes, hits) if hits else np.zeros(len(codes), dtype=bool), index=col.index)
    return eq


_INC_BITS = 32
_INC_MASK = (1 << _INC_BITS) - 1


def _codes(col: pd.Series) -> np.ndarray:
    """Factorized codes of a column, -1 for missing (equality of codes = equality of values)."""
    return pd.factorize(col.to_numpy(dtype=object) if col.dtype == object else col, use_na_sentinel=True)[0]


def _fast_keys(st: pd.DataFrame, rs: pd.DataFrame, by_pod: bool) -> tuple[pd.Series, pd.Series, list[str]] | None:
    """_conn_key and _reset_keys on integer codes: (key per state row, key per reset row, sock id name
    per code); a key is sock code << 32 | incarnation. Building "pod|sock#n" strings per event was
    most of a big recording's report (profile: arrow string construction and object comparisons).
    None when a value is unusual (a sock id that is no string, missing pod): the string path decides."""
    sock = _s(st["sock"])
    na = sock.isna()
    if na.any():
        sub = st[na]
        tup = (sub["saddr"].astype("object").astype(str) + ":" + sub["sport"].astype("object").astype(str) + "-"
               + sub["daddr"].astype("object").astype(str) + ":" + sub["dport"].astype("object").astype(str))
        sock = sock.where(~na, tup)
    svals = np.concatenate([sock.to_numpy(dtype=object), _s(rs["sock"]).to_numpy(dtype=object)])
    scodes, suniq = pd.factorize(svals, use_na_sentinel=True)
    if (scodes < 0).any() or not all(type(u) is str for u in suniq):
        return None
    if by_pod:
        pvals = np.concatenate([_s(st["pod_uid"]).to_numpy(dtype=object), _s(rs["pod_uid"]).to_numpy(dtype=object)])
        pcodes, puniq = pd.factorize(pvals, use_na_sentinel=True)
        if (pcodes < 0).any() or not all(type(u) is str for u in puniq):
            return None
        comb, cuniq = pd.factorize(pcodes.astype(np.int64) * len(suniq) + scodes)
        names = [f"{suniq[u % len(suniq)]}" for u in cuniq.tolist()]     # the pod alone names it without its uid
    else:
        comb, names = scodes, [str(u) for u in suniq]
    comb = comb.astype(np.int64)
    n = len(st)
    by, rby = comb[:n], comb[n:]
    ocodes, ouniq = pd.factorize(_s(st["old_state"]).to_numpy(dtype=object), use_na_sentinel=True)
    ncodes, nuniq = pd.factorize(_s(st["new_state"]).to_numpy(dtype=object), use_na_sentinel=True)

    def is_(codes: np.ndarray, uniq: Any, value: str) -> np.ndarray:
        hits = [i for i, u in enumerate(uniq) if u == value]
        return codes == hits[0] if hits else np.zeros(len(codes), dtype=bool)

    start = is_(ocodes, ouniq, "CLOSE") | (is_(ocodes, ouniq, "LISTEN") & is_(ncodes, nuniq, "SYN_RECV"))
    dcodes, pcodes2 = _codes(_s(st["daddr"])), _codes(st["dport"])
    peer = np.where((dcodes < 0) | (pcodes2 < 0), -1, dcodes.astype(np.int64) * (int(pcodes2.max(initial=0)) + 1) + pcodes2)
    local = _codes(_s(st["saddr"])).astype(np.int64)
    sport = st["sport"].astype("Float64").to_numpy(dtype=float, na_value=0.0)
    ts = st["ts"].to_numpy(dtype=float)
    inc = _incarnations_codes(by, start, peer, local, sport)
    key = pd.Series((by << _INC_BITS) | inc, index=st.index)
    if not len(rs):
        return key, pd.Series([], dtype=np.int64), names
    # a reset's connection: its sock's incarnation current at the reset's time, counted in time order
    order = np.argsort(ts, kind="stable")
    inc_t = _incarnations_codes(by[order], start[order], peer[order], local[order], sport[order])
    incf = pd.DataFrame({"sock": by[order], "ts": ts[order], "inc": inc_t})
    r = pd.DataFrame({"sock": rby, "ts": rs["ts"].to_numpy(dtype=float), "idx": rs.index})
    r = r.sort_values("ts", kind="stable")
    m = pd.merge_asof(r, incf, on="ts", by="sock", direction="backward")
    minc = m["inc"].fillna(0).astype(np.int64).to_numpy()
    rkey = pd.Series((m["sock"].to_numpy(dtype=np.int64) << _INC_BITS) | minc, index=m["idx"].values).reindex(rs.index)
    return key, rkey, names


def _incarnations_codes(by: np.ndarray, start: np.ndarray, peer: np.ndarray, local: np.ndarray,
                        sport: np.ndarray) -> np.ndarray:
    """_incarnations on codes: -1 is missing (a missing peer or address is never "unchanged")."""
    n = len(by)
    if not n:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(by, kind="stable")
    bs = by[order]
    has_prev_s = np.r_[False, bs[1:] == bs[:-1]]
    prev = np.full(n, -1, dtype=np.int64)
    prev[order] = np.where(has_prev_s, np.r_[0, order[:-1]], -1)
    hp = prev >= 0
    pi = np.where(hp, prev, 0)
    pp, pl, ps = peer[pi], local[pi], sport[pi]
    changed = hp & (pp >= 0) & ((peer != pp) | (peer < 0) | (local != pl) | (local < 0) | (pl < 0)
                                | ((sport != ps) & (sport != 0) & (ps != 0)))
    x = (start | changed).astype(np.int64)
    xs = x[order]
    cs = np.cumsum(xs)
    first = ~has_prev_s
    # the running sum at each group's first row, carried over the group
    base = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    inc_s = cs - (cs - xs)[base]
    out = np.empty(n, dtype=np.int64)
    out[order] = inc_s
    return out


PodSets = dict[str, "set[int]"]


def _pod_keys(pcode: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(pod code, non-negative integer) as one int64, to test many pods' sets in one np.isin."""
    return (pcode.astype(np.int64) << 32) | values.astype(np.int64)


def _set_keys(sets: PodSets, pod_index: dict[str, int]) -> np.ndarray:
    return np.array([(pod_index[u] << 32) | int(v) for u, vs in sets.items() if u in pod_index for v in vs],
                    dtype=np.int64)


def classify(c: pd.DataFrame, ports: PodSets, upstream: PodSets, exits: dict[str, dict[int, float]]) -> pd.DataFrame:
    """Side, port class, how it ended and who closed it, for every pod's connections at once.
    c: aggregate_connections(by_pod=True); ports/upstream: each pod's listening / FastCGI ports;
    exits: each pod's pid -> exit time."""
    pcode, puniq = pd.factorize(c["pod"].to_numpy(dtype=object))
    pod_index = {u: i for i, u in enumerate(puniq)}
    port_keys, up_keys = _set_keys(ports, pod_index), _set_keys(upstream, pod_index)
    sport = c["sport"].astype("Float64").fillna(-1).astype(int).to_numpy()
    dport = c["dport"].astype("Float64").fillna(-1).astype(int).to_numpy()
    # -1 (no port) becomes 65536: in no set
    s_listen = np.isin(_pod_keys(pcode, np.where(sport < 0, 65536, sport)), port_keys)
    d_listen = np.isin(_pod_keys(pcode, np.where(dport < 0, 65536, dport)), port_keys)
    server = c["syn_recv"].to_numpy(dtype=bool) | (s_listen & ~c["syn_sent"].to_numpy(dtype=bool))
    c["side"] = np.where(server, "server", np.where(d_listen, "client", "outbound"))
    port = np.where(server, sport, dport)
    c["port"] = port
    pkeys = _pod_keys(pcode, np.where(port < 0, 65536, port))
    c["port_class"] = np.where(np.isin(pkeys, up_keys), "upstream", np.where(np.isin(pkeys, port_keys), "serving", "other"))
    # how it ended
    rst_any = c["rst_sent_ts"].notna() | c["rst_recv_ts"].notna() | c["rst_trans_ts"].notna()
    c["refused"] = c["syn_sent"] & c["est_ts"].isna() & c["close_ts"].notna()
    c["close_kind"] = np.where(c["refused"], "refused", np.where(rst_any, "rst",
                      np.where(c["fin_local_ts"].notna() | c["fin_peer_ts"].notna(), "fin", "open")))
    by_peer = c["rst_recv_ts"].notna() & c["rst_sent_ts"].isna()
    c["reset_by"] = np.where(c["close_kind"] != "rst", None, np.where(by_peer, "peer", "pod"))
    fin_by_pod = c["fin_local_ts"].notna() & (c["fin_peer_ts"].isna() | (c["fin_local_ts"] <= c["fin_peer_ts"]))
    c["closed_by"] = np.where(c["close_kind"] == "rst", c["reset_by"],
                              np.where(c["close_kind"] == "fin", np.where(fin_by_pod, "pod", "peer"), None))
    # when the pod side gave up the connection, and which process did it
    c["end_ts"] = c[["fin_local_ts", "fin_peer_ts", "close_ts", "rst_sent_ts", "rst_recv_ts"]].min(axis=1)
    # this side closed first (FIN), and later reset the connection: the peer sent data on a
    # connection that was closed (the next request on an idle keep-alive connection), answered by
    # the closed socket or its TIME_WAIT orphan. The closer is whoever sent the FIN.
    c["rst_after_close"] = (c["fin_local_ts"].notna() & (c["rst_sent_ts"] > c["fin_local_ts"])
                            & (c["fin_peer_ts"].isna() | (c["fin_peer_ts"] >= c["fin_local_ts"]))).to_numpy(dtype=bool)
    c["closer_pid"] = c["rst_sent_pid"].fillna(c["rst_trans_pid"]).where(c["closed_by"] == "pod")
    c["closer_pid"] = c["closer_pid"].where((c["close_kind"] == "rst") & ~c["rst_after_close"],
                                            c["fin_local_pid"].where(c["closed_by"] == "pod"))
    c["rst_ts"] = c["rst_sent_ts"]
    c["fin_row"] = c["fin_local_row"]
    c["close_row"] = c["rst_sent_row"].fillna(c["rst_trans_row"]).fillna(c["rst_recv_row"])
    c["close_row"] = c["close_row"].where(c["close_kind"] == "rst", c["fin_local_row"])
    exit_keys = [(pod_index[u] << 32) | int(pid) for u, m in exits.items() if u in pod_index for pid in m]
    exit_vals = [ts for u, m in exits.items() if u in pod_index for ts in m.values()]
    closer = c["closer_pid"].to_numpy(dtype=float)
    has = ~np.isnan(closer) & (closer >= 0) & (closer < 1 << 32)
    ckeys = _pod_keys(pcode, np.where(has, closer, 0))
    closer_exit = pd.Series(exit_vals, index=pd.Index(exit_keys, dtype=np.int64), dtype=float)
    closer_exit = closer_exit[~closer_exit.index.duplicated()].reindex(ckeys).to_numpy()
    closer_exit = np.where(has, closer_exit, np.nan)
    end = c["end_ts"].to_numpy(dtype=float)
    c["at_exit"] = ~np.isnan(closer_exit) & (closer_exit <= end + 1e-6) & (closer_exit >= end - EXIT_CLOSE_WINDOW_S)
    return c.reset_index().rename(columns={"index": "key"})[["pod"] + CONN_COLUMNS]


CONN_COLUMNS = ["key", "first_ts", "first_row", "saddr", "sport", "daddr", "dport", "side", "port", "port_class",
                "est_ts", "end_ts", "close_ts", "close_kind", "closed_by", "reset_by", "closer_pid", "close_row",
                "at_exit", "refused", "rst_after_close", "rst_ts", "fin_row"]


OPEN_BEFORE = ("ESTABLISHED", "CLOSE_WAIT", "FIN_WAIT1", "FIN_WAIT2", "LAST_ACK", "CLOSING")


def _sock_ids(st: pd.DataFrame) -> pd.Series:
    """Socket identity: the kernel reuses a freed sock's address at once, so one address is many
    connections over time. A new one starts at CLOSE -> SYN_SENT/LISTEN or LISTEN -> SYN_RECV (a child)."""
    sock = st["sock"].astype("object")
    tup = (st["saddr"].astype("object").astype(str) + ":" + st["sport"].astype("object").astype(str) + "-"
           + st["daddr"].astype("object").astype(str) + ":" + st["dport"].astype("object").astype(str))
    # recordings without sock (the strace backend, old recorders) and frames whose sock column came
    # back as numbers or all-null floats (CSV/Parquet): the identity is always a string
    sock = sock.where(sock.notna(), tup).astype(str).astype("object")
    return sock


def _incarnations(st: pd.DataFrame, sock: pd.Series) -> pd.Series:
    old, new = _s(st["old_state"]), _s(st["new_state"])
    start = (old == "CLOSE") | ((old == "LISTEN") & (new == "SYN_RECV"))
    # The recorder streams only some transitions (handshakes are counted, not streamed), so a
    # reused sock address often shows no CLOSE -> start: a changed 4-tuple starts a new connection
    # too. sport 0 is a SYN_SENT before the kernel picked the port: not a change.
    by = sock.values
    peer = st["daddr"].astype("object").astype(str) + ":" + st["dport"].astype("object").astype(str)
    local = st["saddr"].astype("object").astype(str)
    sport = st["sport"].astype("Float64").fillna(0)
    prev_peer, prev_local = peer.groupby(by).shift(), local.groupby(by).shift()
    prev_sport = sport.groupby(by).shift()
    changed = prev_peer.notna() & ((peer != prev_peer) | (local != prev_local)
                                   | ((sport != prev_sport) & (sport != 0) & (prev_sport.fillna(0) != 0)))
    return (start | changed.fillna(False).astype(bool)).astype(int).groupby(by).cumsum()


def _conn_key(st: pd.DataFrame, pod: pd.Series | None = None) -> pd.Series:
    """sock#incarnation; with pod (many pods' events at once) prefixed by it, so that two pods'
    sockets at one kernel address (reused over time) stay apart."""
    sock = _sock_ids(st)
    if pod is not None:
        sock = pod + sock
    return sock + "#" + _incarnations(st, sock).astype(str)


def _reset_keys(rs: pd.DataFrame, st: pd.DataFrame, by_pod: bool = False) -> pd.Series:
    """The connection a reset belongs to: its sock's incarnation current at the reset's time."""
    sock = _sock_ids(st)
    rsock = rs["sock"].astype("object")
    if by_pod:
        sock = _s(st["pod_uid"]).astype(str) + "|" + sock
        rsock = _s(rs["pod_uid"]).astype(str) + "|" + rsock
    inc = pd.DataFrame({"sock": sock.values, "ts": st["ts"].values, "inc": _incarnations(st, sock).values})
    inc = inc.sort_values("ts", kind="stable")
    r = pd.DataFrame({"sock": rsock.values, "ts": rs["ts"].values, "idx": rs.index})
    r = r.sort_values("ts", kind="stable")
    m = pd.merge_asof(r, inc, on="ts", by="sock", direction="backward") if len(inc) else r.assign(inc=0)
    m["inc"] = m["inc"].fillna(0).astype(int)
    return pd.Series((m["sock"] + "#" + m["inc"].astype(str)).values, index=m["idx"].values).reindex(rs.index)


def build_refused(tcp: pd.DataFrame, conns: pd.DataFrame, upstream: PodSets) -> pd.DataFrame:
    """Refused connection attempts to every pod's ports, one row per (pod, port, client port).
    conns: classify()'s connections of all pods."""
    parts = []
    kind = tcp["kind"]
    rs = tcp[(kind == S.TCP_RESET_SENT) & tcp["sock"].isna() & tcp["sport"].notna()]
    if len(rs):
        parts.append(pd.DataFrame({"pod": _s(rs["pod_uid"]), "ts": rs["ts"], "row": rs.index,
                                   "port": rs["sport"].astype(int), "client_addr": _s(rs["daddr"]),
                                   "client_port": rs["dport"].astype("Float64")}))
    if len(conns):
        cl = conns[conns["refused"] & (conns["side"] == "client")]
        if len(cl):
            parts.append(pd.DataFrame({"pod": cl["pod"].values, "ts": cl["close_ts"].values, "row": cl["first_row"].values,
                                       "port": cl["dport"].astype(int).values, "client_addr": cl["saddr"].values,
                                       "client_port": cl["sport"].astype("Float64").values}))
    ce = tcp[(kind == S.CONNECT_ERROR) & (_s(tcp["reason"]) == "ECONNREFUSED") & tcp["dport"].notna()]
    if len(ce):
        parts.append(pd.DataFrame({"pod": _s(ce["pod_uid"]), "ts": ce["ts"], "row": ce.index,
                                   "port": ce["dport"].astype(int), "client_addr": _s(ce["saddr"]),
                                   "client_port": ce["sport"].astype("Float64")}))
    if not parts:
        return pd.DataFrame(columns=["pod"] + REFUSED_COLUMNS)
    r = pd.concat(parts, ignore_index=True).sort_values("ts", kind="stable")
    pcode, puniq = pd.factorize(r["pod"].to_numpy(dtype=object))
    pod_index = {u: i for i, u in enumerate(puniq)}
    port = r["port"].to_numpy(dtype=np.int64)
    # a reset without a socket that answers a segment of a connection we know is not a refusal
    if len(conns):
        est = conns[conns["est_ts"].notna() & conns["pod"].isin(pod_index)]
        if len(est):
            cport = est["dport"].where(est["side"] == "server", est["sport"]).astype("Float64").fillna(-1)
            ecode = np.array([pod_index[u] for u in est["pod"]], dtype=np.int64)
            known = (ecode << 40) | (est["port"].to_numpy(dtype=np.int64) << 20) | cport.to_numpy(dtype=np.int64)
            # a missing client port is never known (it matched nothing before either)
            rport = r["client_port"].fillna(-2).to_numpy(dtype=np.int64)
            mine = (pcode.astype(np.int64) << 40) | (port << 20) | rport
            r = r[~(np.isin(mine, known[cport.to_numpy() >= 0]) & (rport >= 0))]
    r = r.drop_duplicates(subset=["pod", "port", "client_port"], keep="first")
    pcode, puniq = pd.factorize(r["pod"].to_numpy(dtype=object))
    pod_index = {u: i for i, u in enumerate(puniq)}
    r["port_class"] = np.where(np.isin(_pod_keys(pcode, r["port"].to_numpy(dtype=np.int64)), _set_keys(upstream, pod_index)),
                               "upstream", "serving")
    return r[["pod"] + REFUSED_COLUMNS].reset_index(drop=True)


REFUSED_COLUMNS = ["ts", "row", "port", "client_addr", "client_port", "port_class"]
