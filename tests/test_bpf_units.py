"""Unit tests of the bpf backend's pure parts: format adaptation, /proc parsing, headers,
decoding, and the agreement of the C event struct (probes/sigtrace.h) with the Python decoder."""
from __future__ import annotations

import ctypes
import re
from pathlib import Path

import pytest

from conftest import require_kernel
from sigtrace.backends.bpf import decode, kernel, pods, program
from sigtrace.backends.bpf.headers import find_headers
from sigtrace.errors import KernelProblem
from sigtrace.events import schema
from sigtrace.pods import proc

FORMAT_6_18 = """name: tcp_send_reset
ID: 1
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;
\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;
\tfield:__u8 daddr[28];\toffset:60;\tsize:28;\tsigned:0;

print fmt: "x", __print_symbolic(REC->reason, { 0, "NOT_SPECIFIED" }, { 1, "NO_SOCKET" })
"""
FORMAT_5_15 = """format:
\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:32;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:34;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:38;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:42;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:58;\tsize:16;\tsigned:0;
"""


def _formats(text: str) -> kernel.KernelFormats:
    tp = "tcp/tcp_send_reset"
    return kernel.KernelFormats({tp: kernel.parse_format(text)}, {tp: text})


def test_send_reset_shape_follows_the_format_file():
    new = _formats(FORMAT_6_18)
    assert new.send_reset_shape() == {"ST_SR_SOCKADDR": 1, "ST_SR_HAS_FAMILY": 0, "ST_SR_HAS_STATE": 1,
                                      "ST_SR_HAS_REASON": 1, "ST_DECLARE_RST_REASON": 1}
    assert new.reset_reasons() == {0: "NOT_SPECIFIED", 1: "NO_SOCKET"}
    old = _formats(FORMAT_5_15)
    assert old.send_reset_shape() == {"ST_SR_SOCKADDR": 0, "ST_SR_HAS_FAMILY": 1, "ST_SR_HAS_STATE": 1,
                                      "ST_SR_HAS_REASON": 0, "ST_DECLARE_RST_REASON": 0}
    assert old.reset_reasons() == {}


def test_a_missing_field_is_one_clear_line(tmp_path):
    root = tmp_path / "tracing"
    (root / "events" / "signal" / "signal_generate").mkdir(parents=True)
    (root / "events" / "signal" / "signal_generate" / "format").write_text(
        "format:\n\tfield:int sig;\toffset:8;\tsize:4;\tsigned:1;\n")
    with pytest.raises(KernelProblem, match=r"signal:signal_generate has no field 'code'") as exc:
        kernel.check_formats(root, {"signal/signal_generate": ("sig", "code")})
    assert "\n" not in str(exc.value)
    with pytest.raises(KernelProblem, match="tcp:tcp_send_reset does not exist"):
        kernel.check_formats(root, {"tcp/tcp_send_reset": ("saddr",)})
    broken = _formats(FORMAT_5_15.replace("sport", "xport"))
    with pytest.raises(KernelProblem, match="no field 'sport'"):
        broken.send_reset_shape()


def test_proc_net_tcp_listeners_and_netns_addresses():
    tcp = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
           "   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1\n"
           "   1: 0100007F:2328 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1\n"
           "   2: 0100007F:2328 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 333 1\n")
    got = proc.parse_proc_net_tcp(tcp)
    assert [(pods.format_endpoint(a, p), i) for a, p, i in got] == [("*:8080", 111), ("127.0.0.1:9000", 222)]
    tcp6 = ("sl local rem st ...\n"
            "   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 0 0 0 0 0 444 1\n")
    assert [(pods.format_endpoint(a, p), i) for a, p, i in proc.parse_proc_net_tcp(tcp6)] == [("[::1]:8080", 444)]
    trie = ("Local:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 10.1.2.3\n        /32 host LOCAL\n"
            "     |-- 10.1.2.255\n        /32 link BROADCAST\n     |-- 127.0.0.1\n        /32 host LOCAL\n")
    assert {pods.format_addr(a) for a in proc.parse_fib_trie_local(trie)} == {"10.1.2.3", "127.0.0.1"}


def test_cgroup_mounts_from_mountinfo():
    info = ("30 25 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
            "31 25 0:27 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"
            "32 25 0:28 / /proc rw - proc proc rw\n")
    assert pods.cgroup_mounts(info) == ([Path("/sys/fs/cgroup/unified")], [Path("/sys/fs/cgroup/pids")])


def test_fallback_headers_join_the_debian_trees(tmp_path, monkeypatch):
    flavour = tmp_path / "linux-headers-6.1.0-9-amd64"
    common = tmp_path / "linux-headers-6.1.0-9-common"
    (flavour / "include" / "generated").mkdir(parents=True)
    (flavour / "include" / "config").mkdir()
    (flavour / "arch" / "x86" / "include" / "generated").mkdir(parents=True)
    (common / "include" / "linux").mkdir(parents=True)
    (common / "include" / "linux" / "kconfig.h").write_text("")
    (common / "arch" / "x86" / "include" / "asm").mkdir(parents=True)
    from sigtrace.backends.bpf import headers
    monkeypatch.setattr(headers, "CACHE_DIRS", (tmp_path / "cache",))
    src = find_headers("0.0-no-such-kernel", usr_src=tmp_path)
    again = find_headers("0.0-no-such-kernel", usr_src=tmp_path)
    assert again.path == src.path == str(tmp_path / "cache" / "headers-linux-headers-6.1.0-9-amd64")    # reused
    try:
        assert src.kind == "fallback" and "linux-headers-6.1.0-9-amd64" in src.note
        root = Path(src.path)
        # what bcc's -I/-include flags need, relative to BCC_KERNEL_SOURCE
        for rel in ("include/linux/kconfig.h", "include/generated", "include/config",
                    "arch/x86/include/asm", "arch/x86/include/generated"):
            assert (root / rel).exists(), rel
    finally:
        src.cleanup()
    assert Path(src.path).exists()           # a cache, not a temp dir
    with pytest.raises(KernelProblem, match="no kernel headers"):
        find_headers("0.0-no-such-kernel", usr_src=tmp_path / "empty")


_C_SIZES = {"u64": 8, "s64": 8, "u32": 4, "s32": 4, "u16": 2, "u8": 1, "char": 1}


def _header_struct() -> list[tuple[str, int]]:
    """(name, size) of struct st_event's fields, read from probes/sigtrace.h."""
    text = (program.probes_dir() / program.HEADER_FILE).read_text()
    defines = program.header_defines(text)
    body = re.search(r"struct st_event \{(.*?)\};", text, re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    out = []
    for line in body.splitlines():
        if line.strip():
            m = re.match(r"\s*(\w+)\s+(\w+)(?:\[(\w+)\])?;", line)
            n = m.group(3)
            count = 1 if n is None else int(defines.get(n, n))
            out.append((m.group(2), _C_SIZES[m.group(1)] * count))
    return out


def _header_struct_fields() -> list[str]:
    return [name for name, _ in _header_struct()]


def test_c_struct_and_python_decoder_agree_on_names_and_enums():
    assert tuple(_header_struct_fields()) == decode.STRUCT_FIELDS
    defines = program.header_defines()
    for table in (decode.KIND_NAMES, decode.PROBE_NAMES, decode.HANDLERS):
        assert set(table) <= set(defines)
    # every kind the probes emit is a schema kind, each kind and probe index distinct
    assert set(decode.KIND_NAMES.values()) <= set(schema.KINDS)
    assert len({defines[k] for k in decode.KIND_NAMES}) == len(decode.KIND_NAMES)
    assert sorted(defines[k] for k in decode.PROBE_NAMES) == list(range(defines["ST_NPROBES"]))
    assert defines["ST_AMBIGUOUS"] == pods.AMBIGUOUS and defines["ST_TASK_INIT"] == pods.TASK_INIT


def _fake_event(defines: dict[str, int], **kw):
    fields = []
    for name in decode.STRUCT_FIELDS:
        if name in ("saddr", "daddr"):
            fields.append((name, ctypes.c_ubyte * 16))
        elif name in ("comm", "target_comm"):
            fields.append((name, ctypes.c_char * 16))
        elif name == "filename":
            fields.append((name, ctypes.c_char * defines["ST_FILENAME_LEN"]))
        elif name in ("ts_ns", "cgroup_id", "skaddr"):
            fields.append((name, ctypes.c_uint64))
        else:
            fields.append((name, ctypes.c_int64))
    cls = type("Ev", (ctypes.Structure,), {"_fields_": fields})
    ev = cls(**{k: v for k, v in kw.items() if k not in ("saddr", "daddr")})
    for side in ("saddr", "daddr"):
        if side in kw:
            ctypes.memmove(getattr(ev, side), kw[side], 16)
    return ev


def test_decoding_maps_indices_to_pods_and_names():
    defines = program.header_defines()
    reg = pods.PodRegistry(proc="/nonexistent")
    cidx = reg.cidx_of("0e0e0e0e-1111-2222-3333-444444444444", "abc123")
    reg.tasks[4242] = pods.TaskInfo(cidx, nspid=1, comm="nginx")
    d = decode.Decoder(defines, reg, {1: "NO_SOCKET"})
    ev = d.decode(_fake_event(defines, kind=defines["ST_KIND_SIGNAL_GENERATE"], ts_ns=10**9, pid=99, tid=99,
                              comm=b"runc", sig=15, result=1, target_pid=4242, target_cidx=cidx,
                              target_comm=b"sh"))
    assert ev["sig"] == "SIGTERM" and ev["result"] == "ignored" and ev["comm"] == "runc"
    assert ev["target_pod_uid"] == "0e0e0e0e-1111-2222-3333-444444444444"
    assert ev["target_container_id"] == "abc123" and ev["target_nspid"] == 1 and ev.get("pod_uid") is None
    loop = b"\0" * 10 + b"\xff\xff" + bytes([127, 0, 0, 1])
    ev = d.decode(_fake_event(defines, kind=defines["ST_KIND_TCP_RESET_SENT"], pid=7, tid=7, comm=b"curl",
                              pidx=reg.cref[cidx].pidx, sport=8080, dport=40000, reason=1,
                              saddr=loop, daddr=loop))
    assert (ev["pod_uid"], ev["saddr"], ev["sport"], ev["dport"]) == (reg.cref[cidx].pod_uid, "127.0.0.1", 8080, 40000)
    assert ev.get("sock") is None and ev["reason"] == "NO_SOCKET" and ev.get("old_state") is None
    ev = d.decode(_fake_event(defines, kind=defines["ST_KIND_PROCESS_EXIT"], pid=5, tid=5, exit_code=-1,
                              exit_signal=9))
    assert ev["exit_signal"] == "SIGKILL" and ev.get("exit_code") is None


@pytest.mark.kernel
def test_compiled_struct_matches_the_decoder():
    """bcc's ctypes view of the compiled struct (what event() returns) has the decoder's fields."""
    require_kernel(bpf=True)
    loaded = program.load(program.ProgramOptions(ringbuf_pages=1))
    try:
        table = loaded.bpf["events"]
        cls = table._get_event_class() if hasattr(table, "_get_event_class") else None
        if cls is None:
            from bcc.table import _get_event_class
            cls = _get_event_class(table)
        assert tuple(name for name, _ in cls._fields_ if not name.startswith("__pad")) == decode.STRUCT_FIELDS
        sizes = {name: ctypes.sizeof(ctype) for name, ctype in cls._fields_}
        assert [(name, sizes[name]) for name in decode.STRUCT_FIELDS] == _header_struct()
        assert ctypes.sizeof(cls) == sum(size for _, size in _header_struct())   # no hidden padding
    finally:
        loaded.close()


def test_decoded_events_are_sparse_and_within_the_schema():
    """Events are built without schema.new_event (per-event cost): their keys are checked here
    instead, for every kind the probes emit."""
    defines = program.header_defines()
    reg = pods.PodRegistry(proc="/nonexistent")
    cidx = reg.cidx_of("0e0e0e0e-1111-2222-3333-444444444444", "abc123")
    reg.tasks[4242] = pods.TaskInfo(cidx, nspid=1, comm="nginx")
    d = decode.Decoder(defines, reg, {1: "NO_SOCKET"})
    loop = b"\0" * 10 + b"\xff\xff" + bytes([127, 0, 0, 1])
    for name in decode.KIND_NAMES:
        ev = d.decode(_fake_event(defines, kind=defines[name], ts_ns=10**9, pid=4242, tid=4242, cidx=cidx,
                                  comm=b"nginx", sig=15, target_pid=4242, target_cidx=cidx, exit_code=0,
                                  filename=b"/usr/sbin/nginx", old_state=1, new_state=4, skaddr=0x1234,
                                  pidx=reg.cref[cidx].pidx, sport=8080, dport=40000, saddr=loop, daddr=loop))
        assert set(ev) <= set(decode.DECODED_FIELDS) <= set(schema.FIELD_NAMES), name
        assert None not in ev.values() and list(ev)[:3] == ["ts", "kind", "pid"], name
        assert ev["kind"] == decode.KIND_NAMES[name] and ev["pod_uid"] == reg.cref[cidx].pod_uid


def _btf_or_skip():
    from sigtrace.backends.bpf import btf
    if not btf.VMLINUX.exists():
        pytest.skip("the running kernel has no BTF (/sys/kernel/btf/vmlinux)")
    return btf


def test_socket_layout_from_the_running_kernels_btf():
    """The raw tracepoint probe reads the socket where the tracepoint's TP_fast_assign does, at
    offsets of the running kernel (never the compile headers'): sane, naturally aligned."""
    _btf_or_skip()
    layout = kernel.socket_layout()
    for name, (_struct, _member, size) in kernel.SOCK_FIELDS.items():
        assert layout[name] % size == 0 or size == 16 and layout[name] % 4 == 0, name
    assert layout["ST_SK_DPORT"] < 64 and layout["ST_SK_FAMILY"] < 64            # struct sock_common
    assert layout["ST_INET_SPORT"] > layout["ST_SK_PROTOCOL"]                     # inet_sock after sock
    for prefix, names in kernel.SOCK_WINDOWS.items():
        base, win = layout[f"{prefix}_BASE"], layout[f"{prefix}_WIN"]
        assert base % 8 == 0 and 0 < win <= kernel.SOCK_WINDOW_MAX
        assert all(base <= layout[n] and layout[n] + kernel.SOCK_FIELDS[n][2] <= base + win for n in names)


def test_no_usable_btf_is_one_line_or_the_tracepoint(tmp_path):
    from sigtrace.backends.bpf import btf
    bad = tmp_path / "vmlinux"
    bad.write_bytes(b"\0" * 64)
    with pytest.raises(btf.BTFError, match="bad magic"):
        kernel.socket_layout(bad)
    with pytest.raises(KernelProblem, match="cannot probe TCP state changes as a raw tracepoint") as exc:
        program.choose_tcp_probe(program.ProgramOptions(tcp_probe="raw"), bad)
    assert "\n" not in str(exc.value)
    auto = program.choose_tcp_probe(program.ProgramOptions(), tmp_path / "missing")
    assert auto.defines == {"ST_TCP_RAW": 0} and auto.description == program.TCP_TRACEPOINT
    assert "\n" not in auto.note and "tracepoint" in auto.note
    forced = program.choose_tcp_probe(program.ProgramOptions(tcp_probe="tracepoint"))
    assert forced.defines == {"ST_TCP_RAW": 0} and forced.note is None
    if btf.VMLINUX.exists():
        raw = program.choose_tcp_probe(program.ProgramOptions())
        assert raw.defines["ST_TCP_RAW"] == 1 and raw.description == program.TCP_RAW and raw.note is None
        missing = btf.BTF.vmlinux()
        with pytest.raises(btf.BTFError, match="struct sock has no member sk_no_such_field"):
            missing.member("sock", "sk_no_such_field")


def _drain(loaded: dict) -> None:
    """Let the last events reach the ring buffers of every loaded variant, then read them."""
    import time
    time.sleep(0.2)
    for lp in loaded.values():
        lp.bpf.ring_buffer_consume()


def _close(loaded: dict) -> None:
    for lp in loaded.values():
        lp.close()


@pytest.mark.kernel
def test_raw_tracepoint_reads_what_the_tracepoint_records():
    """Both ways of probing TCP state changes loaded at once, streaming every transition of every
    socket: IPv4, IPv6, IPv4-mapped (dual-stack listener), listeners, a refused connect. The raw
    tracepoint's tuple (read from the socket at BTF offsets) equals the tracepoint record's."""
    require_kernel(bpf=True)
    _btf_or_skip()
    import collections
    import socket
    loaded = {}
    got: dict[str, list] = {}
    try:
        for mode in ("raw", "tracepoint"):
            opts = program.ProgramOptions(filter_all=True, tcp_all_states=True, ringbuf_pages=64, tcp_probe=mode)
            loaded[mode] = program.load(opts)
            assert bool(loaded[mode].bpf.raw_tracepoint_fds) == (mode == "raw")
            typed = loaded[mode].bpf["events"]
            got[mode] = []

            def on(ctx, data, size, typed=typed, out=got[mode]):
                e = typed.event(data)
                out.append((e.skaddr, e.old_state, e.new_state, e.family, e.sport, e.dport,
                            bytes(e.saddr), bytes(e.daddr)))
            loaded[mode].bpf["tcp_events"].open_ring_buffer(on)
        ports = set()
        for fam, laddr, caddr in ((socket.AF_INET, "127.0.0.1", "127.0.0.1"), (socket.AF_INET6, "::1", "::1"),
                                  (socket.AF_INET6, "::", "127.0.0.1")):
            with socket.socket(fam, socket.SOCK_STREAM) as lsock:
                if laddr == "::":
                    lsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                lsock.bind((laddr, 0))
                lsock.listen(4)
                port = lsock.getsockname()[1]
                ports.add(port)
                for server_first in (True, False):
                    with socket.socket(socket.AF_INET if "." in caddr else socket.AF_INET6) as c:
                        c.connect((caddr, port))
                        s, _ = lsock.accept()
                        first, second = (s, c) if server_first else (c, s)
                        first.close()
                        second.recv(1)
                        s.close()
        with socket.socket() as c:
            with pytest.raises(OSError):
                c.connect(("127.0.0.1", 1))
        _drain(loaded)
    finally:
        _close(loaded)
    ours = {mode: collections.Counter(e for e in evs if e[4] in ports or e[5] in ports or e[5] == 1)
            for mode, evs in got.items()}
    assert ours["raw"] == ours["tracepoint"]
    kinds = {(e[3], e[1], e[2]) for e in ours["raw"]}
    assert {(2, 7, 10), (10, 7, 10), (2, 1, 4), (2, 1, 8), (10, 1, 4), (10, 10, 7), (2, 2, 7)} <= kinds
    mapped = b"\0" * 10 + b"\xff\xff" + bytes([127, 0, 0, 1])
    assert any(e[3] == 10 and e[6] == mapped for e in ours["raw"])          # IPv4 on a dual-stack socket


def test_exit_probe_from_the_task_or_the_syscall_tracepoint(tmp_path):
    """Exit statuses come from task_struct.exit_code (offset from BTF); without it, from the
    exit_group tracepoint, with one line saying so (it slows every syscall on the node)."""
    auto = program.choose_exit_probe(program.ProgramOptions(), tmp_path / "missing")
    assert auto.defines == {"ST_EXIT_TASK": 0} and auto.description == program.EXIT_SYSCALL
    assert "\n" not in auto.note and "exit_group" in auto.note
    assert auto.formats == {"syscalls/sys_enter_exit_group": ("error_code",)}
    with pytest.raises(KernelProblem, match="cannot read exit codes from the exiting task") as exc:
        program.choose_exit_probe(program.ProgramOptions(exit_probe="task"), tmp_path / "missing")
    assert "\n" not in str(exc.value)
    forced = program.choose_exit_probe(program.ProgramOptions(exit_probe="syscall"))
    assert forced.defines == {"ST_EXIT_TASK": 0} and forced.note is None
    assert "syscalls/sys_enter_exit_group" not in kernel.REQUIRED_FIELDS
    from sigtrace.backends.bpf import btf
    if btf.VMLINUX.exists():
        task = program.choose_exit_probe(program.ProgramOptions())
        assert task.defines["ST_EXIT_TASK"] == 1 and task.note is None and task.formats == {}
        assert task.description == program.EXIT_TASK
        assert task.defines["ST_TASK_EXIT_CODE"] % 4 == 0 and 0 < task.defines["ST_TASK_EXIT_CODE"] < 16384


# (name, argv, signal sent to it once running, or None). Every one's status must be what wait(2)
# says; the multi-threaded ones end by a group exit (exit_group from a worker, a fatal SIGTERM the
# kernel delivers as SIGKILL to the other threads) or thread by thread (raw SYS_exit, no exit_group).
_THREADS = ("import threading, time\n"
            "for _ in range(3): threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n")
EXIT_CASES = [
    ("exit 3", ["sh", "-c", "exit 3"], None),
    ("true", ["true"], None),
    ("_exit(7)", ["PY", "-c", "import os; os._exit(7)"], None),
    ("SIGTERM", ["sleep", "30"], 15),
    ("SIGKILL", ["sleep", "30"], 9),
    ("SIGQUIT (core)", ["sleep", "30"], 3),
    ("threads: worker exit_group(5)", ["PY", "-c", _THREADS + "import os, threading\n"
                                       "t = threading.Thread(target=os._exit, args=(5,)); t.start(); time.sleep(30)"], None),
    ("threads: SIGTERM", ["PY", "-c", _THREADS + "print('up', flush=True); time.sleep(30)"], 15),
    ("threads: sys.exit(4)", ["PY", "-c", _THREADS + "import sys; sys.exit(4)"], None),
    ("threads: raw SYS_exit(6) each", ["PY", "-c",
                                       "import ctypes, threading, time\n"
                                       "libc = ctypes.CDLL(None)\n"
                                       "def last():\n    time.sleep(0.3); libc.syscall(60, 6)\n"
                                       "threading.Thread(target=last).start()\n"
                                       "libc.syscall(60, 6)"], None),
]


@pytest.mark.kernel
def test_exit_codes_and_signals_read_from_the_exiting_task():
    """process_exit's exit_code/exit_signal for real processes equal wait(2)'s status, read from the
    task (no syscall tracepoint); the exit_group fallback agrees except where no exit_group ran."""
    require_kernel(bpf=True)
    _btf_or_skip()
    import resource
    import subprocess
    import sys
    import time
    loaded, got = {}, {}
    waited: dict[int, tuple[str, int]] = {}
    try:
        for mode in ("task", "syscall"):
            lp = loaded[mode] = program.load(program.ProgramOptions(filter_all=True, ringbuf_pages=64, exit_probe=mode))
            assert lp.exit is not None and bool(lp.exit.defines["ST_EXIT_TASK"]) == (mode == "task")
            assert any("sys_enter_exit_group" in str(k) for k in lp.bpf.tracepoint_fds) == (mode == "syscall")
            typed, kind, out = lp.bpf["events"], lp.defines["ST_KIND_PROCESS_EXIT"], got.setdefault(mode, {})

            def on(ctx, data, size, typed=typed, kind=kind, out=out):
                e = typed.event(data)
                if e.kind == kind:
                    out[e.pid] = (e.exit_code, e.exit_signal)
            lp.bpf["events"].open_ring_buffer(on)
        for name, argv, sig in EXIT_CASES:
            argv = [sys.executable if a == "PY" else a for a in argv]
            p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True,
                                 preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0)))
            if sig is not None:
                if name.startswith("threads"):
                    assert p.stdout.readline().strip() == "up"
                else:
                    time.sleep(0.2)
                p.send_signal(sig)
            p.wait(timeout=10)
            waited[p.pid] = (name, p.returncode)
        _drain(loaded)
    finally:
        _close(loaded)
    task = {name: got["task"].get(pid) for pid, (name, _) in waited.items()}
    fallback = {name: got["syscall"].get(pid) for pid, (name, _) in waited.items()}
    want = {name: (rc, 0) if rc >= 0 else (-1, -rc) for name, rc in waited.values()}
    assert task == want
    # the fallback's known misses: no exit_group ran (unknown); an exit_group with other threads
    # alive SIGKILLs them, and it takes their SIGKILL delivery for the fatal signal
    assert fallback == {**want, "threads: raw SYS_exit(6) each": (-1, 0), "threads: worker exit_group(5)": (-1, 9),
                        "threads: sys.exit(4)": (-1, 9)}
    assert {rc for _, rc in waited.values()} >= {3, 0, 7, -15, -9, -3, 5, 4, 6}
