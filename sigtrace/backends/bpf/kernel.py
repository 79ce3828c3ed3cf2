"""What the running kernel offers: privileges, tracefs, tracepoint formats.

Probes adapt to the format files of the running kernel (not to one version's layout), and a
missing tracepoint or field fails with one line naming it.
"""
from __future__ import annotations

import ctypes
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import KernelProblem, PermissionProblem
from ...events import kinds
from ...pods import caps

TRACEFS_CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))

# tracepoint -> fields the probes read: each kind's probe (sigtrace.events.kinds), and the fork probe that
# learns parents (no kind of its own). tcp_send_reset's other fields are handled by shape (send_reset_shape).
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    **kinds.tracepoint_fields(),
    "sched/sched_process_fork": ("child_pid",),
}


@dataclass(frozen=True)
class FormatField:
    type: str
    name: str
    size: int


_FIELD = re.compile(r"field:(?P<decl>[^;]+);\s*offset:\d+;\s*size:(?P<size>\d+);")


def parse_format(text: str) -> dict[str, FormatField]:
    """Fields of a tracepoint format file (common_* excluded), by name."""
    fields: dict[str, FormatField] = {}
    for m in _FIELD.finditer(text):
        decl = m.group("decl").strip()
        decl = re.sub(r"\[\d*\]$", "", decl)         # char comm[16] -> char comm
        name = decl.split()[-1]
        if name.startswith("common_"):
            continue
        fields[name] = FormatField(decl[: -len(name)].strip(), name, int(m.group("size")))
    return fields


def symbolic_values(text: str, field: str) -> dict[int, str]:
    """Numeric values named by the print fmt's __print_symbolic(REC->field, {n, "NAME"}, ...)."""
    m = re.search(r"__print_symbolic\(REC->" + re.escape(field) + r",(.*?)\)\s*(?:,|$)", text, re.S)
    if not m:
        return {}
    return {int(n): name for n, name in re.findall(r"\{\s*(\d+),\s*\"([^\"]+)\"\s*\}", m.group(1))}


def has_capabilities() -> bool:
    """CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN) in the effective set."""
    return caps.has(caps.CAP_SYS_ADMIN) or (caps.has(caps.CAP_BPF) and caps.has(caps.CAP_PERFMON))


def check_permissions() -> None:
    if not has_capabilities():
        raise PermissionProblem("loading eBPF probes needs root (or CAP_BPF+CAP_PERFMON); "
                                "run with sudo, or use --backend strace")


def _mount_tracefs(target: Path) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.mount(b"nodev", str(target).encode(), b"tracefs", 0, None) == 0


def tracefs() -> Path:
    """The tracefs mount, mounting it at /sys/kernel/tracing when nothing is mounted."""
    for path in TRACEFS_CANDIDATES:
        if (path / "events").is_dir():
            return path
    target = TRACEFS_CANDIDATES[0]
    if target.is_dir() and _mount_tracefs(target) and (target / "events").is_dir():
        return target
    raise KernelProblem("tracefs is not mounted and could not be mounted at /sys/kernel/tracing; "
                        "run 'mount -t tracefs nodev /sys/kernel/tracing' (or mount /sys/kernel in the container)")


def read_format(root: Path, tracepoint: str) -> str:
    path = root / "events" / tracepoint / "format"
    try:
        return path.read_text()
    except FileNotFoundError:
        raise KernelProblem(f"tracepoint {tracepoint.replace('/', ':')} does not exist on kernel "
                            f"{os.uname().release}; sigtrace needs it (use --backend strace)") from None
    except PermissionError:
        raise PermissionProblem(f"cannot read {path}: run as root") from None


@dataclass
class KernelFormats:
    """The formats the probes depend on, checked."""
    fields: dict[str, dict[str, FormatField]]
    texts: dict[str, str]

    def send_reset_shape(self) -> dict[str, int]:
        """#defines describing tcp_send_reset on this kernel (changed shape around 6.10)."""
        f = self.fields["tcp/tcp_send_reset"]
        sockaddr = f["saddr"].size >= 16   # sockaddr_in/in6 (28 bytes) vs a 4-byte address
        if not sockaddr:
            for name in ("sport", "dport", "saddr_v6", "daddr_v6"):
                if name not in f:
                    raise KernelProblem(f"tracepoint tcp:tcp_send_reset has no field {name!r} (nor sockaddr "
                                        f"saddr) on kernel {os.uname().release}; sigtrace cannot read its tuple")
        return {
            "ST_SR_SOCKADDR": int(sockaddr),
            "ST_SR_HAS_FAMILY": int("family" in f),
            "ST_SR_HAS_STATE": int("state" in f),
            "ST_SR_HAS_REASON": int("reason" in f),
            "ST_DECLARE_RST_REASON": int("reason" in f and "sk_rst_reason" in f["reason"].type),
        }

    def reset_reasons(self) -> dict[int, str]:
        return symbolic_values(self.texts["tcp/tcp_send_reset"], "reason")


# only when the exit status cannot be read from the task (no task_struct.exit_code in the BTF)
EXIT_GROUP_FIELDS: dict[str, tuple[str, ...]] = {"syscalls/sys_enter_exit_group": ("error_code",)}


def check_formats(root: Path, required: dict[str, tuple[str, ...]] = REQUIRED_FIELDS) -> KernelFormats:
    fields: dict[str, dict[str, FormatField]] = {}
    texts: dict[str, str] = {}
    for tp, names in required.items():
        text = read_format(root, tp)
        parsed = parse_format(text)
        for name in names:
            if name not in parsed:
                raise KernelProblem(f"tracepoint {tp.replace('/', ':')} has no field {name!r} on kernel "
                                    f"{os.uname().release}; this sigtrace cannot read it (use --backend strace)")
        fields[tp], texts[tp] = parsed, text
    return KernelFormats(fields, texts)


# The socket fields the TCP state probe reads as a raw tracepoint, where sock:inet_sock_set_state's
# TP_fast_assign reads them: #define -> (struct, member, size). inet_sk(sk) is a cast: struct
# inet_sock starts with its struct sock.
SOCK_FIELDS: dict[str, tuple[str, str, int]] = {
    "ST_SK_PROTOCOL": ("sock", "sk_protocol", 2),
    "ST_SK_FAMILY": ("sock", "__sk_common.skc_family", 2),
    "ST_SK_DPORT": ("sock", "__sk_common.skc_dport", 2),                # inet->inet_dport
    "ST_SK_DADDR": ("sock", "__sk_common.skc_daddr", 4),                # inet->inet_daddr
    "ST_SK_V6_RCV_SADDR": ("sock", "__sk_common.skc_v6_rcv_saddr", 16),  # sk->sk_v6_rcv_saddr
    "ST_SK_V6_DADDR": ("sock", "__sk_common.skc_v6_daddr", 16),          # sk->sk_v6_daddr
    "ST_INET_SPORT": ("inet_sock", "inet_sport", 2),
    "ST_INET_SADDR": ("inet_sock", "inet_saddr", 4),
}
TCP_STATE_RAW_ARGS = [("ptr:sock", 8), ("int", 4), ("int", 4)]     # (const struct sock *, int, int)
# fields read together, one bpf_probe_read_kernel per window: #define prefix -> members
SOCK_WINDOWS = {"ST_SKC": ("ST_SK_DADDR", "ST_SK_DPORT", "ST_SK_FAMILY"),
                "ST_INET": ("ST_INET_SADDR", "ST_INET_SPORT")}
SOCK_WINDOW_MAX = 64


def socket_layout(btf_path: Path | None = None) -> dict[str, int]:
    """#defines of the socket field offsets on the running kernel, from its BTF; BTFError (one
    line) when the BTF is missing or does not describe what the raw tracepoint probe needs."""
    from . import btf as btfmod
    try:
        return _socket_layout(btfmod, btfmod.BTF.vmlinux(btf_path or btfmod.VMLINUX))
    except (struct.error, IndexError, ValueError) as exc:     # a truncated or malformed BTF
        raise btfmod.BTFError(f"malformed BTF ({exc})") from None


def _member_offsets(btfmod: Any, b: Any, fields: dict[str, tuple[str, str, int]]) -> dict[str, int]:
    """#define -> offset of each (struct, member, size) in the BTF; BTFError when a size differs."""
    defines: dict[str, int] = {}
    for name, (struct_name, path, size) in fields.items():
        m = b.member(struct_name, path)
        if m.size != size:
            raise btfmod.BTFError(f"{struct_name}.{path} is {m.size} bytes in the kernel's BTF, expected {size}")
        defines[name] = m.offset
    return defines


def _socket_layout(btfmod, b) -> dict[str, int]:
    args = b.raw_tracepoint_args("inet_sock_set_state")
    if args != TCP_STATE_RAW_ARGS:
        raise btfmod.BTFError(f"raw tracepoint inet_sock_set_state has arguments {args}, expected "
                              f"(const struct sock *, int, int)")
    if b.member("inet_sock", "sk").offset != 0:
        raise btfmod.BTFError("struct inet_sock does not start with its struct sock")
    defines = _member_offsets(btfmod, b, SOCK_FIELDS)
    for prefix, names in SOCK_WINDOWS.items():
        base = min(defines[n] for n in names)
        end = max(defines[n] + SOCK_FIELDS[n][2] for n in names)
        if base % 8:
            base -= base % 8         # 8-byte aligned on the stack too: the fields keep their alignment
        if end - base > SOCK_WINDOW_MAX:
            raise btfmod.BTFError(f"the socket fields {', '.join(SOCK_FIELDS[n][1] for n in names)} "
                                  f"span {end - base} bytes on this kernel (at most {SOCK_WINDOW_MAX} read at once)")
        defines[f"{prefix}_BASE"], defines[f"{prefix}_WIN"] = base, end - base
    return defines


# The exit status, read from the exiting task at sched_process_exit (its own context):
# task_struct.exit_code, as do_exit() stored it (wait(2) status). #define -> (struct, member, size)
TASK_FIELDS: dict[str, tuple[str, str, int]] = {
    "ST_TASK_EXIT_CODE": ("task_struct", "exit_code", 4),
}


def exit_layout(btf_path: Path | None = None) -> dict[str, int]:
    """#defines of the task fields the exit probe reads, from the running kernel's BTF; BTFError
    (one line) when the BTF is missing or lacks them."""
    from . import btf as btfmod
    try:
        return _member_offsets(btfmod, btfmod.BTF.vmlinux(btf_path or btfmod.VMLINUX), TASK_FIELDS)
    except (struct.error, IndexError, ValueError) as exc:     # a truncated or malformed BTF
        raise btfmod.BTFError(f"malformed BTF ({exc})") from None


# What the probes read to tell a routine close from one with a request in flight or cut by an exiting
# process (probes/sigtrace.bpf.c routine_close): #define -> (struct, member, size)
CLOSE_FIELDS: dict[str, tuple[str, str, int]] = {
    "ST_TASK_FLAGS": ("task_struct", "flags", 4),
    "ST_TP_RCV_NXT": ("tcp_sock", "rcv_nxt", 4),
    "ST_TP_COPIED_SEQ": ("tcp_sock", "copied_seq", 4),
    "ST_TP_SND_UNA": ("tcp_sock", "snd_una", 4),
    "ST_TP_WRITE_SEQ": ("tcp_sock", "write_seq", 4),
}


def close_layout(btf_path: Path | None = None) -> dict[str, int]:
    """#defines of the task and socket fields the close counting reads, from the running kernel's
    BTF; BTFError (one line) when the BTF is missing or lacks them."""
    from . import btf as btfmod
    try:
        return _member_offsets(btfmod, btfmod.BTF.vmlinux(btf_path or btfmod.VMLINUX), CLOSE_FIELDS)
    except (struct.error, IndexError, ValueError) as exc:     # a truncated or malformed BTF
        raise btfmod.BTFError(f"malformed BTF ({exc})") from None
