"""One pod's TCP facts as questions: its connections (`Connections`), the connection attempts it
refused (`Refusals`) and the socket calls its processes made (`SocketCalls`, the strace view).

Each question narrows a set to the rows that answer it and returns a set of the same kind, so
questions chain: `ctx.conns.open_at(t).serving().cut_by_pod()`. A set is index positions into the
pod's rows of a table built for all pods at once (network.attach_tcp), kept in table order; its
rows come out as small frozen dataclasses whose missing values are None, never NaN. The numpy
stays in here: the verdict rules only ask (sigtrace/verdicts imports neither numpy nor pandas).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Collection, Generic, Iterator, Mapping, TypeVar

import numpy as np
import pandas as pd

from ..events import schema as S
from .connections import Listener
from .processes import Process

T = TypeVar("T")


def numpy_columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Every column as numpy: bool as bool, numbers as float (NaN for missing), the rest as objects
    (None for missing).
    Converted once for all pods: a question then costs microseconds where a pandas mask costs ~0.1 ms."""
    out = {}
    for name in frame.columns:
        s = frame[name]
        if s.dtype == bool:
            out[name] = s.to_numpy(dtype=bool)
        elif s.dtype.kind in "fiu" or str(s.dtype) in ("Int64", "Float64", "boolean"):
            out[name] = s.to_numpy(dtype=float, na_value=np.nan)
        else:
            out[name] = s.to_numpy(dtype=object, na_value=None)
    return out


_NO_ROWS = pd.DataFrame()


class PodRows:
    """One pod's rows [start, end) of a table shared by all pods. columns: the whole table's numpy
    columns (numpy_columns); None converts this pod's slice on first use (the socket calls, which
    only recordings without TCP states ask about)."""

    def __init__(self, frame: pd.DataFrame, columns: dict[str, np.ndarray] | None, start: int, end: int) -> None:
        self._frame, self._columns, self._start, self._end = frame, columns, start, end
        self._mine: dict[str, np.ndarray] = {}        # this pod's slices, taken once per column

    @classmethod
    def empty(cls) -> "PodRows":
        # one frame for all: every PodContext starts with three empty sets, and a DataFrame costs
        # ~0.3 ms to make (a tenth of a 26k-pod report's time)
        return cls(_NO_ROWS, {}, 0, 0)

    def __len__(self) -> int:
        return self._end - self._start

    @property
    def frame(self) -> pd.DataFrame:
        """The rows as a pandas frame (tests and tools; the questions read the numpy columns)."""
        return self._frame.iloc[self._start:self._end]

    def column(self, name: str) -> np.ndarray:
        """A column of this pod's rows; a column the table lacks is all missing (NaN)."""
        got = self._mine.get(name)
        if got is None:
            if self._columns is None:
                self._mine = self._converted()
                got = self._mine.get(name)
            else:
                whole = self._columns.get(name)
                got = whole[self._start:self._end] if whole is not None else None
            if got is None:
                got = np.full(len(self), np.nan)
            self._mine[name] = got
        return got

    def _converted(self) -> dict[str, np.ndarray]:
        frame = self.frame
        out = numpy_columns(frame)
        out["row"] = frame.index.to_numpy()
        self._columns = {}          # all converted: a name not among them is a column the table lacks
        return out


def _float(v: Any) -> float | None:
    return None if v != v else float(v)


def _int(v: Any) -> int | None:
    return None if v != v else int(v)


def _text(v: Any) -> str | None:
    return None if v is None else str(v)


# a row field's type (as annotated) -> how a numpy value becomes it
_CONVERT: dict[str, Callable[[Any], Any]] = {"int": int, "int | None": _int, "float": float, "float | None": _float,
                                             "str": str, "str | None": _text, "bool": bool}


def _when(ts: np.ndarray, since: float | None, before: float | None, until: float | None) -> np.ndarray:
    """ts in [since, before) and <= until (each bound optional); a missing time (NaN) never is."""
    m = ~np.isnan(ts)
    if since is not None:
        m &= ts >= since
    if before is not None:
        m &= ts < before
    if until is not None:
        m &= ts <= until
    return m


def _isin(values: np.ndarray, wanted: Collection[int]) -> np.ndarray:
    return np.isin(values, list(wanted))


class _Set(Generic[T]):
    """Some rows of a pod's table, in table order. Subclasses add the questions and the row type."""
    _row_type: type                 # a frozen dataclass whose fields are columns of the table

    def __init__(self, rows: PodRows, idx: np.ndarray | None = None) -> None:
        self._rows, self._idx = rows, idx          # idx None: all rows

    def __len__(self) -> int:
        return len(self._rows) if self._idx is None else len(self._idx)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __iter__(self) -> Iterator[T]:
        return iter(self.first(len(self)))

    def __or__(self: "S_", other: "S_") -> "S_":
        """Rows in either set, in table order."""
        return self._with(np.union1d(self._positions(), other._positions()))

    @property
    def frame(self) -> pd.DataFrame:
        """These rows as a pandas frame, for tests and tools (the questions read numpy columns)."""
        f = self._rows.frame
        return f if self._idx is None else f.iloc[self._idx]

    def first(self, n: int) -> list[T]:
        """The first n rows (table order) as typed rows: each field of the row type is the table's
        column of that name, converted by the field's type (None for missing)."""
        pos = self._positions()[:n]
        fields = dataclasses.fields(self._row_type)
        values = [map(_CONVERT[f.type], self._rows.column(f.name)[pos].tolist()) for f in fields]
        return [self._row_type(*row) for row in zip(*values)]

    def _positions(self) -> np.ndarray:
        return np.arange(len(self._rows)) if self._idx is None else self._idx

    def _with(self: "S_", idx: np.ndarray) -> "S_":
        out = object.__new__(type(self))          # a copy.copy without its generic machinery: questions chain
        out.__dict__.update(self.__dict__)
        out._idx = idx
        return out

    def _col(self, name: str) -> np.ndarray:
        col = self._rows.column(name)
        return col if self._idx is None else col[self._idx]

    def _where(self: "S_", mask: Callable[[], np.ndarray]) -> "S_":
        """The rows where mask() holds (mask is called only on a non-empty set)."""
        if not len(self):
            return self
        m = mask()
        return self._with(np.flatnonzero(m) if self._idx is None else self._idx[m])

    def _is(self: "S_", name: str, value: Any) -> "S_":
        """The rows whose column name equals value."""
        return self._where(lambda: self._col(name) == value)


S_ = TypeVar("S_", bound=_Set)


# ---- connections ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Conn:
    """One connection of the pod (connections.CONN_COLUMNS), missing values as None."""
    side: str                    # server (the pod's listener accepted it), client (to a pod port), outbound
    port: int | None             # the pod's port: local on the server side, remote on the client side
    port_class: str              # serving, upstream (FastCGI), other
    saddr: str | None
    sport: int | None
    daddr: str | None
    dport: int | None
    est_ts: float | None         # -inf: open before the recorder streamed this pod's TCP detail
    end_ts: float | None         # when the pod side gave it up
    close_kind: str              # fin, rst, refused, open
    closed_by: str | None        # pod, peer
    reset_by: str | None
    closer_pid: int | None
    at_exit: bool                # closed by the kernel as its process exited
    rst_after_close: bool        # closed (FIN) first, reset when the peer sent on it
    rst_ts: float | None
    close_row: int | None
    fin_row: int | None
    first_row: int

    @property
    def row(self) -> int:
        """The event that shows how it ended, else its first."""
        return self.close_row if self.close_row is not None else self.first_row


class Connections(_Set[Conn]):
    """Some of the pod's connections. procs: the pod's processes, to tell who closed one."""
    _row_type = Conn

    def __init__(self, rows: PodRows, procs: Mapping[int, Process], idx: np.ndarray | None = None) -> None:
        super().__init__(rows, idx)
        self._procs = procs

    @classmethod
    def empty(cls) -> "Connections":
        return cls(PodRows.empty(), {})

    # which ones
    def open_at(self, t: float, port_class: str | None = None) -> "Connections":
        """Server-side connections established at t and not yet ended (of that port class)."""
        def mask() -> np.ndarray:
            est, end = self._col("est_ts"), self._col("end_ts")
            m = (self._col("side") == "server") & ~np.isnan(est) & (est <= t) & (np.isnan(end) | (end > t))
            return m & (self._col("port_class") == port_class) if port_class else m
        return self._where(mask)

    def server_side(self) -> "Connections":
        return self._is("side", "server")

    def client_side(self) -> "Connections":
        """The pod's own connections to one of its ports (nginx to php-fpm, a load generator in the pod)."""
        return self._is("side", "client")

    def serving(self) -> "Connections":
        return self._is("port_class", "serving")

    def upstream(self) -> "Connections":
        """To the FastCGI port."""
        return self._is("port_class", "upstream")

    def on_ports(self, ports: Collection[int]) -> "Connections":
        return self._where(lambda: _isin(self._col("port"), ports))

    def established(self, since: float | None = None, before: float | None = None) -> "Connections":
        """Established in [since, before) (open before the recording counts as before anything)."""
        return self._where(lambda: _when(self._col("est_ts"), since, before, None))

    def ended(self, since: float | None = None, before: float | None = None,
              until: float | None = None) -> "Connections":
        """Ended in [since, before) and at or before until; those still open never match."""
        return self._where(lambda: _when(self._col("end_ts"), since, before, until))

    # how they ended
    def closed_by_pod(self) -> "Connections":
        return self._is("closed_by", "pod")

    def closed_by_peer(self) -> "Connections":
        return self._is("closed_by", "peer")

    def reset(self) -> "Connections":
        return self._is("close_kind", "rst")

    def reset_by_pod(self) -> "Connections":
        return self._is("reset_by", "pod")

    def reset_by_peer(self) -> "Connections":
        return self._is("reset_by", "peer")

    def cut_by_pod(self) -> "Connections":
        """Closed by the pod with a reset, or by the kernel as the closing process exited: requests
        cut, where the client did not close first."""
        return self._where(lambda: (self._col("closed_by") == "pod")
                           & ((self._col("close_kind") == "rst") | self._col("at_exit")))

    def not_at_exit(self) -> "Connections":
        return self._where(lambda: ~self._col("at_exit"))

    def reset_after_close(self) -> "Connections":
        """Closed (FIN) by the pod, then reset when the peer sent on it (an idle keep-alive connection
        the client reused)."""
        return self._where(lambda: self._col("rst_after_close"))

    def closed_by_roles(self, roles: Collection[str]) -> "Connections":
        """Closed by a process with one of roles, or by one the recording does not name."""
        return self._by_closer(lambda p: p.role in roles)

    def not_closed_by_roles(self, roles: Collection[str]) -> "Connections":
        """Closed by a process with none of roles, or by one the recording does not name."""
        return self._by_closer(lambda p: p.role not in roles)

    def _by_closer(self, keep: Callable[[Process], bool]) -> "Connections":
        def mask() -> np.ndarray:
            out = []
            for pid in self._col("closer_pid"):
                p = self._procs.get(int(pid)) if pid == pid else None
                out.append(p is None or keep(p))
            return np.array(out, dtype=bool)
        return self._where(mask)

    # figures
    def earliest_end(self) -> float | None:
        return _float(np.nanmin(self._col("end_ts"))) if len(self) else None

    def latest_reset(self) -> float | None:
        return _float(np.nanmax(self._col("rst_ts"))) if len(self) else None

    def reset_span(self) -> tuple[float, float] | None:
        """The first and last moment these were reset (their reset, else their end)."""
        if not len(self):
            return None
        rst, end = self._col("rst_ts"), self._col("end_ts")
        when = np.where(np.isnan(rst), end, rst)
        return float(np.min(when)), float(np.max(when))


# ---- refused attempts ----------------------------------------------------------------------

@dataclass(frozen=True)
class Refusal:
    """A connection attempt to a port of the pod answered with a reset (connections.REFUSED_COLUMNS)."""
    ts: float
    row: int
    port: int
    client_addr: str | None
    client_port: int | None
    port_class: str


class Refusals(_Set[Refusal]):
    """Some of the connection attempts refused on the pod's ports."""
    _row_type = Refusal

    @classmethod
    def empty(cls) -> "Refusals":
        return cls(PodRows.empty())

    def serving(self) -> "Refusals":
        return self._is("port_class", "serving")

    def upstream(self) -> "Refusals":
        """Refused on the FastCGI port."""
        return self._is("port_class", "upstream")

    def on_ports(self, ports: Collection[int]) -> "Refusals":
        return self._where(lambda: _isin(self._col("port"), ports))

    def at(self, since: float | None = None, until: float | None = None) -> "Refusals":
        """Refused in [since, until]."""
        return self._where(lambda: _when(self._col("ts"), since, None, until))

    def after_listener_closed(self, listeners: Mapping[int, Listener]) -> "Refusals":
        """Those not before their port's listener closed, where the recording saw it close."""
        def mask() -> np.ndarray:
            out = []
            for ts, port in zip(self._col("ts"), self._col("port")):
                li = listeners.get(int(port))
                out.append(li is None or li.close_ts is None or ts >= li.close_ts - 1e-6)
            return np.array(out, dtype=bool)
        return self._where(mask)

    def ports(self) -> list[int]:
        return sorted({int(p) for p in self._col("port")})

    def latest(self) -> float | None:
        return float(np.max(self._col("ts"))) if len(self) else None


# ---- socket calls (strace) -----------------------------------------------------------------

@dataclass(frozen=True)
class SocketCall:
    """A close, failed connect or reset seen by a pod process (sock_close, connect_error,
    tcp_reset_received), missing values as None."""
    row: int
    ts: float
    kind: str
    pid: int | None
    comm: str | None
    saddr: str | None
    sport: int | None
    daddr: str | None
    dport: int | None
    reason: str | None

    @property
    def is_close(self) -> bool:
        return self.kind == S.SOCK_CLOSE


class SocketCalls(_Set[SocketCall]):
    """Some of the socket calls the pod's processes made, as they saw them (the strace view)."""
    _row_type = SocketCall

    @classmethod
    def empty(cls) -> "SocketCalls":
        return cls(PodRows.empty())

    def closes(self) -> "SocketCalls":
        return self._is("kind", S.SOCK_CLOSE)

    def failures(self) -> "SocketCalls":
        """Failed connects and resets seen on a read or write."""
        return self._where(lambda: np.isin(self._col("kind"), [S.CONNECT_ERROR, S.TCP_RESET_RECEIVED]))

    def resets_seen(self) -> "SocketCalls":
        return self._is("kind", S.TCP_RESET_RECEIVED)

    def by(self, pids: Collection[int]) -> "SocketCalls":
        return self._where(lambda: _isin(self._col("pid"), pids))

    def from_ports(self, ports: Collection[int]) -> "SocketCalls":
        """On sockets whose local port is one of ports."""
        return self._where(lambda: _isin(self._col("sport"), ports))

    def to_ports(self, ports: Collection[int]) -> "SocketCalls":
        """On sockets whose remote port is one of ports."""
        return self._where(lambda: _isin(self._col("dport"), ports))

    def with_peer(self) -> "SocketCalls":
        """On connected sockets (a listener has no peer)."""
        return self._where(lambda: ~np.isnan(self._col("dport")))

    def listeners(self) -> "SocketCalls":
        """On listening sockets: a local port and no peer."""
        return self._where(lambda: np.isnan(self._col("dport")) & ~np.isnan(self._col("sport")))

    def at(self, since: float | None = None, before: float | None = None, until: float | None = None) -> "SocketCalls":
        """Made in [since, before) and at or before until."""
        return self._where(lambda: _when(self._col("ts"), since, before, until))

    def at_exit(self) -> "SocketCalls":
        """Closed by the kernel as the process died (it still held the socket)."""
        return self._is("reason", "exit")

    def not_at_exit(self) -> "SocketCalls":
        return self._where(lambda: self._col("reason") != "exit")

    def other_end_closed_later(self, others: "SocketCalls", margin: float) -> "SocketCalls":
        """Those whose other end (a close in others whose remote port is this one's local port) was
        closed more than margin seconds after this one."""
        def mask() -> np.ndarray:
            o_port, o_ts = others._col("dport"), others._col("ts")
            return np.array([bool(((o_port == port) & (o_ts > ts + margin)).any())
                             for port, ts in zip(self._col("sport"), self._col("ts"))], dtype=bool)
        return self._where(mask)

    def local_ports(self) -> set[int]:
        return {int(p) for p in self._col("sport") if p == p}

    def earliest(self) -> float | None:
        return float(np.min(self._col("ts"))) if len(self) else None
