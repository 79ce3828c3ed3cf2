"""A small real program that makes strace print every line shape the strace parser handles.

make_fixtures.py runs it as PID 1 of a new PID namespace (like a container's init), attaches
the backend's own strace command line to it, then writes "go" into the fifo argv[1].
Each step is one fact the fixture tests assert (see test_strace_parser.py).
"""
import ctypes
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

libc = ctypes.CDLL(None, use_errno=True)
SYS_tkill = 200


class Stop(Exception):
    pass


def raise_stop(*_):
    raise Stop()


def wait_go(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    os.read(fd, 1)
    os.close(fd)


def child_handles_term_in_read() -> None:
    """SIGTERM interrupts a blocking read (ERESTARTSYS, unfinished/resumed); exits 3."""
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, raise_stop)
        rp, _wp = os.pipe()
        try:
            os.read(rp, 1)
        except Stop:
            pass
        os._exit(3)
    time.sleep(0.1)
    os.kill(pid, signal.SIGTERM)
    os.waitpid(pid, 0)


def child_killed_by_default_term() -> None:
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        time.sleep(5)
        os._exit(0)
    time.sleep(0.05)
    os.kill(pid, signal.SIGTERM)
    os.waitpid(pid, 0)


def child_signalled_from_outside(ready_dir: str) -> None:
    """make_fixtures.py (outside the PID namespace) sends TERM (si_pid=0 here), then KILL."""
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, lambda *_: None)
        open(os.path.join(ready_dir, "outside-ready"), "w").close()
        while True:
            time.sleep(1)
    os.waitpid(pid, 0)


def thread_signals() -> None:
    """tgkill/tkill to a thread blocked in read: [pid N] lines, unfinished/resumed across threads."""
    signal.signal(signal.SIGUSR1, lambda *_: None)
    rp, wp = os.pipe()
    tid = []
    t = threading.Thread(target=lambda: (tid.append(threading.get_native_id()), os.read(rp, 1)))
    t.start()
    time.sleep(0.1)
    signal.pthread_kill(t.ident, signal.SIGUSR1)            # tgkill
    time.sleep(0.05)
    libc.syscall(SYS_tkill, tid[0], signal.SIGUSR1)          # tkill
    time.sleep(0.05)
    os.write(wp, b"x")
    t.join()


def queued_and_pidfd_signals() -> None:
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGUSR2, lambda *_: None)
        signal.signal(signal.SIGTERM, raise_stop)
        try:
            while True:
                time.sleep(1)
        except Stop:
            os._exit(0)
    time.sleep(0.05)
    libc.sigqueue(pid, signal.SIGUSR2, ctypes.c_void_p(7))      # rt_sigqueueinfo, SI_QUEUE
    time.sleep(0.05)
    os.kill(pid, 0)                                              # existence probe: no signal
    pidfd = os.pidfd_open(pid)
    signal.pidfd_send_signal(pidfd, signal.SIGTERM)
    os.waitpid(pid, 0)
    os.close(pidfd)
    try:
        os.kill(pid, signal.SIGTERM)                            # gone: ESRCH
    except ProcessLookupError:
        pass


def tcp(family: int, host: str) -> None:
    ls = socket.socket(family, socket.SOCK_STREAM)
    ls.bind((host, 0))
    ls.listen()
    port = ls.getsockname()[1]
    c = socket.create_connection((host, port))
    a, _ = ls.accept()
    c.sendall(b"GET / HTTP/1.0\r\n\r\n")
    a.recv(100)
    a.shutdown(socket.SHUT_WR)                                   # shutdown with its tuple
    c.close()
    a.close()
    # the peer resets: SO_LINGER 0 close, then our read gets ECONNRESET
    c = socket.create_connection((host, port))
    a, _ = ls.accept()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    a.close()
    time.sleep(0.05)
    try:
        c.recv(100)
    except ConnectionResetError:
        pass
    try:
        c.send(b"x")
    except OSError:
        pass
    c.close()
    # nonblocking accept with nothing pending: EAGAIN
    ls.setblocking(False)
    try:
        ls.accept()
    except BlockingIOError:
        pass
    ls.close()                                                   # the listener closes
    # connect to the now-closed port: refused (blocking, then nonblocking + SO_ERROR)
    try:
        socket.create_connection((host, port), timeout=1)
    except ConnectionRefusedError:
        pass
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setblocking(False)
    s.connect_ex((host, port))
    time.sleep(0.05)
    s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    s.close()


def other_sockets() -> None:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.connect(("127.0.0.7", 9))
    u.close()
    a, b = socket.socketpair()
    a.close()
    b.close()


def execs() -> None:
    subprocess.run(["/bin/true"])
    subprocess.run(["/bin/sh", "-c", "exit 7"])
    try:
        subprocess.run(["/nonexistent/prog"])
    except FileNotFoundError:
        pass


def main() -> None:
    go, ready_dir = sys.argv[1], sys.argv[2]
    wait_go(go)
    child_handles_term_in_read()
    child_killed_by_default_term()
    thread_signals()
    queued_and_pidfd_signals()
    tcp(socket.AF_INET, "127.0.0.7")
    tcp(socket.AF_INET6, "::1")
    other_sockets()
    execs()
    child_signalled_from_outside(ready_dir)
    sys.exit(0)


if __name__ == "__main__":
    main()
