"""Build the probe program for the running kernel and load it with bcc (imported here only)."""
from __future__ import annotations

import contextlib
import errno
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

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
    # how exit statuses are read: "task" (task_struct.exit_code at sched_process_exit, offset from the
    # kernel's BTF), "syscall" (syscalls:sys_enter_exit_group's argument), "auto" (task, else syscall)
    exit_probe: str = "auto"


TCP_RAW = "raw tracepoint inet_sock_set_state (socket layout from the kernel's BTF)"
TCP_TRACEPOINT = "tracepoint sock:inet_sock_set_state"


@dataclass
class ProbeChoice:
    """How one kind of fact is probed on this kernel: the #defines it adds to the program, what
    meta.json says (tcp_probe, exit_probe), one line for stderr when the cheap way was not usable,
    and the extra tracepoints (with fields) it needs."""
    defines: dict[str, int]
    description: str
    note: str | None = None
    formats: dict[str, tuple[str, ...]] = field(default_factory=dict)


def _choose_layout(mode: str, forced: str, costly: str, layout: Callable[[], dict[str, int]], flag: str,
                   cannot: str) -> tuple[dict[str, int], str | None]:
    """(defines, why not): the cheap probe with its BTF layout when usable, else the costly one and
    why. mode == costly: the costly one, asked for; mode == forced: no layout is an error."""
    from .btf import BTFError
    if mode == costly:
        return {flag: 0}, None
    try:
        return {flag: 1, **layout()}, None
    except BTFError as exc:
        if mode == forced:
            raise KernelProblem(f"{cannot} on kernel {os.uname().release}: {exc}") from None
        return {flag: 0}, str(exc)


def choose_tcp_probe(opts: ProgramOptions, btf_path: Path | None = None) -> ProbeChoice:
    """The raw tracepoint costs a fraction of the tracepoint (whose record the kernel fills for
    every state change of every socket on the node); it needs the socket layout from BTF."""
    defines, why = _choose_layout(opts.tcp_probe, "raw", "tracepoint", lambda: kernel.socket_layout(btf_path),
                                  "ST_TCP_RAW", "cannot probe TCP state changes as a raw tracepoint")
    if defines["ST_TCP_RAW"]:
        return ProbeChoice(defines, TCP_RAW)
    return ProbeChoice(defines, TCP_TRACEPOINT, f"TCP state changes probed by the tracepoint (costlier): {why}" if why else None)


EXIT_TASK = "task_struct.exit_code at sched:sched_process_exit (offset from the kernel's BTF)"
EXIT_SYSCALL = "tracepoint syscalls:sys_enter_exit_group (slows every syscall on the node)"


def choose_exit_probe(opts: ProgramOptions, btf_path: Path | None = None) -> ProbeChoice:
    """Read the exit status from the exiting task (no cost outside exits), not from exit_group()'s
    argument: attaching any syscall tracepoint puts every task of the node on the syscall slow
    path. The syscall tracepoint only when the BTF does not give task_struct.exit_code."""
    defines, why = _choose_layout(opts.exit_probe, "task", "syscall", lambda: kernel.exit_layout(btf_path),
                                  "ST_EXIT_TASK", "cannot read exit codes from the exiting task")
    if defines["ST_EXIT_TASK"]:
        return ProbeChoice(defines, EXIT_TASK)
    return ProbeChoice(defines, EXIT_SYSCALL,
                       f"exit codes from the exit_group tracepoint (slows every syscall on the node): {why}" if why else None,
                       dict(kernel.EXIT_GROUP_FIELDS))


CLOSES_COUNTED = "routine closes of connections established while armed counted in the kernel, a sample streamed"
CLOSES_STREAMED = "every close of an armed pod streamed"


def choose_close_counts(opts: ProgramOptions, btf_path: Path | None = None) -> ProbeChoice:
    """Count an armed pod's routine closes in the kernel (task and socket fields from BTF tell them
    from closes with data in flight or by an exiting process); without those fields, or when every
    transition is to stream, every close streams as before."""
    if opts.tcp_all_states:
        return ProbeChoice({"ST_CLOSE_COUNTS": 0}, CLOSES_STREAMED)
    defines, why = _choose_layout("auto", "", "", lambda: kernel.close_layout(btf_path), "ST_CLOSE_COUNTS", "")
    if defines["ST_CLOSE_COUNTS"]:
        return ProbeChoice(defines, CLOSES_COUNTED)
    return ProbeChoice(defines, CLOSES_STREAMED, f"every close of a stopping pod streams (costlier under churn): {why}")


def program_text(formats: kernel.KernelFormats, opts: ProgramOptions, tcp: ProbeChoice | None = None,
                 exit_probe: ProbeChoice | None = None, closes: ProbeChoice | None = None) -> str:
    defines: dict[str, int] = {"ST_FILTER_ALL": int(opts.filter_all), "ST_RINGBUF_PAGES": opts.ringbuf_pages,
                               "ST_TCP_ALL_STATES": int(opts.tcp_all_states)}
    defines.update(formats.send_reset_shape())
    defines.update((tcp or ProbeChoice({"ST_TCP_RAW": 0}, TCP_TRACEPOINT)).defines)
    defines.update((exit_probe or ProbeChoice({"ST_EXIT_TASK": 0}, EXIT_SYSCALL)).defines)
    defines.update((closes or ProbeChoice({"ST_CLOSE_COUNTS": 0}, CLOSES_STREAMED)).defines)
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
    tcp: ProbeChoice | None = None
    exit: ProbeChoice | None = None
    closes: ProbeChoice | None = None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.bpf.cleanup()
        self.headers.cleanup()


def load(opts: ProgramOptions) -> LoadedProgram:
    """Check privileges, tracefs, formats and headers; compile and attach. One-line errors."""
    kernel.check_permissions()
    root = kernel.tracefs()
    exit_probe = choose_exit_probe(opts)
    formats = kernel.check_formats(root, {**kernel.REQUIRED_FIELDS, **exit_probe.formats})
    tcp = choose_tcp_probe(opts)
    closes = choose_close_counts(opts)
    headers = find_headers()
    text = program_text(formats, opts, tcp, exit_probe, closes)
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
    return LoadedProgram(bpf, headers, formats, header_defines(), tcp, exit_probe, closes)


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
