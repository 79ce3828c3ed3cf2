"""sigtrace.pods.proc against real processes: hostile names, processes that exit between listing and
reading, zombies, our own sockets, and the consumers (strace's ProcTable, the bpf registry) on top."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from sigtrace.backends.bpf.pods import PodRegistry
from sigtrace.backends.strace.procs import ProcTable, expand_targets
from sigtrace.pods import proc
from sigtrace.pods.cgroup import NO_POD, pod_of_pid
from sigtrace.pods.sockets import socket_inodes

# a child that names itself (prctl PR_SET_NAME), handles SIGUSR1, ignores SIGUSR2 and waits
CHILD = ("import ctypes, signal, sys, time\n"
         "ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)\n"
         "signal.signal(signal.SIGUSR1, lambda *a: None)\n"
         "signal.signal(signal.SIGUSR2, signal.SIG_IGN)\n"
         "print('ready', flush=True)\n"
         "time.sleep(60)\n")
HOSTILE = "a) (b\nc d)"        # 10 bytes: within comm's 15


def named_child(name: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", CHILD, name], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.kill()
    p.wait(10)


@pytest.fixture
def hostile():
    p = named_child(HOSTILE)
    yield p
    stop(p)


def test_stat_comm_and_status_of_a_hostile_name(hostile):
    st = proc.read_stat(hostile.pid)
    assert st is not None
    assert (st.pid, st.comm, st.ppid) == (hostile.pid, HOSTILE, os.getpid())
    assert st.state in "SR" and st.pgrp == os.getpgrp() and st.start_time > 0
    assert proc.read_comm(hostile.pid) == HOSTILE
    status = proc.read_status(hostile.pid)
    # status escapes the name: the newline is the two characters \n
    assert status.name == HOSTILE.replace("\n", "\\n")
    assert (status.tgid, status.ppid, status.nspid[0]) == (hostile.pid, os.getpid(), hostile.pid)
    assert hostile.pid in proc.list_pids() and proc.is_alive(hostile.pid)


def test_exec_of_a_hostile_symlink_names_the_process(tmp_path):
    name = "s) (\nx y"
    link = tmp_path / name
    link.symlink_to("/bin/sleep")
    p = subprocess.Popen([str(link), "60"])
    try:
        deadline = time.monotonic() + 5
        while proc.read_comm(p.pid) != name and time.monotonic() < deadline:
            time.sleep(0.01)       # comm changes at the exec, after fork
        assert proc.read_comm(p.pid) == name
        assert proc.read_stat(p.pid).comm == name
    finally:
        stop(p)


def test_signal_dispositions_from_status(hostile):
    table = ProcTable()
    assert table.handler(hostile.pid, signal.SIGUSR1) == "handler"
    assert table.handler(hostile.pid, signal.SIGUSR2) == "ignore"
    assert table.handler(hostile.pid, signal.SIGTERM) == "default"
    assert table.handler(hostile.pid, 0) is None


def _gone_checks(pid: int) -> None:
    """Every reader on a pid that is no more: None or nothing, never an exception."""
    assert proc.read_status(pid) is None and proc.read_stat(pid) is None and proc.read_comm(pid) is None
    assert proc.read_cgroup(pid) is None and proc.read_ns(pid, "net") is None and proc.ns_id(pid, "pid") is None
    assert proc.fd_links(pid) == [] and proc.children(pid) == [] and not proc.is_alive(pid)
    assert proc.tcp_sockets(pid) == [] and proc.netns_local_addrs(pid) == set()
    assert socket_inodes(pid) == set() and pod_of_pid(pid) == NO_POD


def test_a_process_that_exits_between_listing_and_reading():
    p = named_child("brief")
    listed = proc.list_pids()
    assert p.pid in listed
    stop(p)                        # exited and reaped: its /proc entry is gone
    _gone_checks(p.pid)
    table = ProcTable()
    facts = table.facts(p.pid, parent=os.getpid())
    assert (facts.pid, facts.nspid, facts.ppid, facts.pod) == (p.pid, None, os.getpid(), NO_POD)
    assert table.handler(p.pid, signal.SIGTERM) is None
    assert expand_targets([p.pid]) == {p.pid: [p.pid]}
    reg = PodRegistry()
    assert reg.resolve_pid(p.pid) is None
    info = reg.note_task(p.pid, 0)
    assert (info.nspid, info.comm, info.ppid) == (None, None, None)


def test_a_zombie_is_read_without_error():
    p = named_child("zombie")
    os.kill(p.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while (proc.read_stat(p.pid) or proc.Stat(0, "", "?", 0, 0, 0, 0, 0)).state != "Z":
        assert time.monotonic() < deadline, "the child did not become a zombie"
        time.sleep(0.01)
    try:
        assert proc.read_status(p.pid).ppid == os.getpid()
        for read in (proc.read_ns, proc.ns_id):
            read(p.pid, "pid")               # no namespaces left: None, not an error
        assert proc.fd_links(p.pid) == [] and socket_inodes(p.pid) == set() and proc.children(p.pid) == []
        proc.tcp_sockets(p.pid)
    finally:
        p.wait(10)


def test_own_listener_inode_and_netns():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        inode = os.fstat(s.fileno()).st_ino
        me = os.getpid()
        assert inode in socket_inodes(me)
        assert (b"\0" * 10 + b"\xff\xff" + bytes([127, 0, 0, 1]), port, inode) in proc.tcp_sockets(me)
        assert proc.read_ns(me, "net") == proc.read_ns("self", "net")
        assert b"\0" * 10 + b"\xff\xff" + bytes([127, 0, 0, 1]) in proc.netns_local_addrs(me)


def test_own_status_and_children(hostile):
    st = proc.read_status("self")
    assert st.tgid == os.getpid() and st.cap_eff is not None and st.vm_hwm_kb and st.vm_rss_kb
    assert hostile.pid in proc.children(os.getpid())
    assert any(" - cgroup" in line or " - proc " in line for line in proc.mountinfo())


def test_reads_are_bounded(tmp_path):
    big = tmp_path / "big"
    big.write_bytes(b"x" * (1 << 20))
    assert len(proc.read_text(str(big))) == proc.READ_LIMIT
    assert len(proc.read_text(str(big), limit=10)) == 10
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "comm").write_bytes(b"y" * 10_000 + b"\n")
    assert len(proc.read_comm(7, str(tmp_path))) == proc.COMM_LIMIT


def test_a_fake_root_and_a_missing_one(tmp_path):
    for name in ("12", "3", "self", "net"):
        (tmp_path / name).mkdir()
    assert sorted(proc.list_pids(str(tmp_path))) == [3, 12]
    assert proc.list_pids(str(tmp_path / "nowhere")) == []
    (tmp_path / "12" / "status").write_text("Name:\tx\nPPid:\t3\nNSpid:\t12\t1\nSigCgt:\tzz\n")
    st = proc.read_status(12, str(tmp_path))
    assert (st.name, st.ppid, st.nspid, st.sig_cgt, st.tgid) == ("x", 3, (12, 1), None, None)
    assert list(proc.read_lines(str(tmp_path / "nowhere"))) == []


@pytest.mark.parametrize("text, want", [
    ("12 (a) (b\nc) S 1 12 12 0 -1 4194560 1 0 0 0 7 3 0 0 20 0 1 0 99 1 1\n", (12, "a) (b\nc", "S", 1, 12, 7, 3, 99)),
    ("5 () R 0 5 5 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 4\n", (5, "", "R", 0, 5, 1, 2, 4)),
    ("12 (cut short) S 1", None),
    ("no parentheses here", None),
    ("", None),
])
def test_parse_stat(text, want):
    got = proc.parse_stat(text)
    assert (tuple(got) if got else None) == want


def test_bench_reads_through_the_module():
    from bench import procs
    me = os.getpid()
    assert procs.vm_hwm_kb(me) == proc.read_status(me).vm_hwm_kb
    assert any(st.pid == me for st in procs.proc_stats())
    assert set(procs.mem_kb(me)) == {"rss", "pss", "anonymous"}
    assert procs.bpf_prog_stats(me) == (0, 0)
    assert procs.vm_hwm_kb(2 ** 22 + 1) is None
