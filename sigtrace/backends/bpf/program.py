"""Build the probe program for the running kernel and load it with bcc (imported here only)."""
from __future__ import annotations

import contextlib
import errno
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ...errors import KernelProblem, PermissionProblem
from . import kernel
from .headers import ENV, HeaderSource, find_headers

PROBE_FILE = "sigtrace.bpf.c"
HEADER_FILE = "sigtrace.h"
DEFAULT_RINGBUF_PAGES = 1024         # 4 MiB: ~12000 events (336 B) of burst before user space catches up


def probes_dir() -> Path:
    """probes/ of the repository, installed as the package data sigtrace.probes."""
    try:
        import sigtrace.probes as pkg   # installed wheel
        return Path(pkg.__file__).parent
    except ImportError:
        import sigtrace
        return Path(sigtrace.__file__).resolve().parent.parent / "probes"


def header_defines(text: str | None = None) -> dict[str, int]:
    """The #define ST_* constants of sigtrace.h: Python reads the enums from the C, not a copy."""
    text = text if text is not None else (probes_dir() / HEADER_FILE).read_text()
    return {m.group(1): int(m.group(2), 0)
            for m in re.finditer(r"^#define\s+(ST_\w+)\s+(0x[0-9a-fA-F]+|\d+)\b", text, re.M)}


@dataclass
class ProgramOptions:
    filter_all: bool = False
    ringbuf_pages: int = DEFAULT_RINGBUF_PAGES
    tcp_all_states: bool = False          # stream routine transitions too (connect, accept, orderly close)
    # how TCP state changes are probed: "raw" (raw tracepoint, socket layout from the kernel's BTF),
    # "tracepoint" (sock:inet_sock_set_state's trace record), "auto" (raw, else tracepoint)
    tcp_probe: str = "auto"


TCP_RAW = "raw tracepoint inet_sock_set_state (socket layout from the kernel's BTF)"
TCP_TRACEPOINT = "tracepoint sock:inet_sock_set_state"


@dataclass
class TcpProbe:
    defines: dict[str, int]
    description: str                      # meta.json tcp_probe
    note: str | None = None               # one line for stderr when the raw tracepoint was not usable


def choose_tcp_probe(opts: ProgramOptions, btf_path: Path | None = None) -> TcpProbe:
    """The raw tracepoint costs a fraction of the tracepoint (whose record the kernel fills for
    every state change of every socket on the node); it needs the socket layout from BTF."""
    from .btf import BTFError
    if opts.tcp_probe == "tracepoint":
        return TcpProbe({"ST_TCP_RAW": 0}, TCP_TRACEPOINT)
    try:
        layout = kernel.socket_layout(btf_path)
    except BTFError as exc:
        if opts.tcp_probe == "raw":
            raise KernelProblem(f"cannot probe TCP state changes as a raw tracepoint on kernel "
                                f"{os.uname().release}: {exc}") from None
        return TcpProbe({"ST_TCP_RAW": 0}, TCP_TRACEPOINT,
                        f"TCP state changes probed by the tracepoint (costlier): {exc}")
    return TcpProbe({"ST_TCP_RAW": 1, **layout}, TCP_RAW)


def program_text(formats: kernel.KernelFormats, opts: ProgramOptions, tcp: TcpProbe | None = None) -> str:
    defines: dict[str, int] = {"ST_FILTER_ALL": int(opts.filter_all), "ST_RINGBUF_PAGES": opts.ringbuf_pages,
                               "ST_TCP_ALL_STATES": int(opts.tcp_all_states)}
    defines.update(formats.send_reset_shape())
    defines.update((tcp or TcpProbe({"ST_TCP_RAW": 0}, TCP_TRACEPOINT)).defines)
    prelude = "".join(f"#define {k} {v}\n" for k, v in defines.items())
    d = probes_dir()
    return prelude + (d / HEADER_FILE).read_text() + "\n" + (d / PROBE_FILE).read_text()


@contextlib.contextmanager
def _kernel_source(src: HeaderSource) -> Iterator[None]:
    old = os.environ.get(ENV)
    if src.kind == "fallback":
        os.environ[ENV] = src.path
    try:
        yield
    finally:
        if src.kind == "fallback":
            if old is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = old


@dataclass
class LoadedProgram:
    bpf: Any
    headers: HeaderSource
    formats: kernel.KernelFormats
    defines: dict[str, int] = field(default_factory=dict)
    tcp: TcpProbe | None = None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.bpf.cleanup()
        self.headers.cleanup()


def load(opts: ProgramOptions) -> LoadedProgram:
    """Check privileges, tracefs, formats and headers; compile and attach. One-line errors."""
    kernel.check_permissions()
    root = kernel.tracefs()
    formats = kernel.check_formats(root)
    tcp = choose_tcp_probe(opts)
    headers = find_headers()
    text = program_text(formats, opts, tcp)
    try:
        import warnings
        # bcc 0.26 warns on every str table name; its API is fine with str
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"bcc(\.|$)")
        from bcc import BPF
    except ImportError:
        headers.cleanup()
        raise KernelProblem("bcc is not importable: install Debian's python3-bpfcc and use a venv with "
                            "--system-site-packages (make setup)") from None
    try:
        with _kernel_source(headers), _quiet_stderr():
            bpf = BPF(text=text.encode())
    except Exception as exc:  # bcc raises bare Exception for compile/load failures
        headers.cleanup()
        err = getattr(exc, "errno", None) or _errno_of(exc)
        if err in (errno.EPERM, errno.EACCES):
            raise PermissionProblem("the kernel refused to load eBPF programs (EPERM): run as root with "
                                    "CAP_BPF/CAP_PERFMON, or use --backend strace") from None
        raise KernelProblem(f"could not compile/load the probes against {headers.path} ({exc}); "
                            f"check the kernel headers, or use --backend strace") from None
    return LoadedProgram(bpf, headers, formats, header_defines(), tcp)


def _errno_of(exc: Exception) -> int | None:
    msg = str(exc)
    if "Operation not permitted" in msg:
        return errno.EPERM
    return None


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """bcc/clang print warnings straight to fd 2; keep the user's terminal to our one line.

    Compiler errors are kept in a temp file and shown by the KernelProblem path when loading fails."""
    import tempfile
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        ok = False
        try:
            yield
            ok = True
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if not ok and os.environ.get("SIGTRACE_DEBUG"):
                tmp.seek(0)
                os.write(2, tmp.read())
