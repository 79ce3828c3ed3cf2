"""The lab's pieces for issue 14: a balancer's pool of keep-alive connections (the load client),
nginx durations it accepts, the new options' checks, and the kubelet's way with a preStop hook
that outlives the grace period (abandoned at the deadline, 2 s more, then SIGKILL)."""
from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import require_kernel
from sigtrace.lab import configs
from sigtrace.lab.load import pooled_request
from sigtrace.lab.pod import MIN_GRACE_AFTER_PRESTOP_S, LocalPod, PodSpec

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"


class IdleClosingServer:
    """An HTTP/1.1 server on loopback that answers every request on a connection and closes the
    connection once it has been idle for idle_s (nginx's keepalive_timeout)."""

    def __init__(self, idle_s: float):
        self.idle_s = idle_s
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(self.idle_s)
        buf = b""
        with conn:
            while True:
                try:
                    chunk = conn.recv(4096)
                except (socket.timeout, OSError):
                    return               # idle too long: close (FIN), like keepalive_timeout
                if not chunk:
                    return
                buf += chunk
                while b"\r\n\r\n" in buf:
                    _, buf = buf.split(b"\r\n\r\n", 1)
                    conn.sendall(RESPONSE)

    def close(self) -> None:
        self.sock.close()


def test_pool_reuses_its_connection_and_fails_on_one_the_server_closed():
    srv = IdleClosingServer(idle_s=0.2)
    try:
        r1, conn = pooled_request(None, "127.0.0.1", srv.port, "/", timeout=5)
        assert r1.outcome == "ok" and conn is not None and r1.lport
        r2, conn = pooled_request(conn, "127.0.0.1", srv.port, "/", timeout=5)
        assert r2.outcome == "ok" and r2.lport == r1.lport and srv.accepted == 1   # one keep-alive connection
        time.sleep(0.5)                    # idle past the server's timeout: it closed the connection
        r3, conn = pooled_request(conn, "127.0.0.1", srv.port, "/", timeout=5)
        # sent without checking, as a balancer's pool does: the request on the closed connection fails
        assert r3.outcome in ("closed", "reset") and r3.lport == r1.lport and conn is None
        r4, conn = pooled_request(conn, "127.0.0.1", srv.port, "/", timeout=5)
        assert r4.outcome == "ok" and r4.lport != r1.lport and srv.accepted == 2   # replaced by a new one
        conn.close()
    finally:
        srv.close()


def test_pool_to_a_closed_port_is_refused():
    s = socket.create_server(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    r, conn = pooled_request(None, "127.0.0.1", port, "/", timeout=2)
    assert r.outcome == "refused" and conn is None


@pytest.mark.parametrize("seconds, text", [(1.0, "1000ms"), (1.5, "1500ms"), (0.25, "250ms"), (65, "65000ms")])
def test_nginx_durations_are_whole_milliseconds(seconds, text):
    assert configs.nginx_time(seconds) == text


@pytest.mark.skipif(shutil.which("nginx") is None, reason="needs nginx")
def test_generated_nginx_conf_with_fractional_timeouts_passes_nginx_t(tmp_path):
    # "worker_shutdown_timeout 1.0s" was rejected by nginx: --worker-shutdown-timeout never worked
    conf = tmp_path / "nginx.conf"
    conf.write_text(configs.nginx_conf(worker_shutdown_timeout_s=1.5, keepalive_timeout_s=0.7))
    p = subprocess.run(["nginx", "-t", "-q", "-e", "stderr", "-c", str(conf)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "worker_shutdown_timeout 1500ms;" in conf.read_text() and "keepalive_timeout 700ms;" in conf.read_text()


@pytest.mark.parametrize("option", ["--keepalive-idle-ms", "--keepalive-timeout", "--worker-shutdown-timeout"])
def test_negative_durations_are_one_line(sigtrace_cli, option):
    p = sigtrace_cli("lab", "--backend", "none", option, "-1")
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and f"{option} must be at least 0" in p.stderr, p.stderr


@pytest.mark.kernel
def test_prestop_longer_than_grace_is_abandoned_like_the_kubelet_does(tmp_path: Path):
    require_kernel(tools=("runc", "nginx", "ip"))
    app = configs.write_app_dir(tmp_path / "app", nginx=configs.nginx_conf(workers=1))
    # an entrypoint that traps TERM and never exits: the container lives until the SIGKILL
    spec = PodSpec(name="hook", grace_period_s=3, app_dir=app.root,
                   containers=[configs.nginx_container(app, prestop=["sleep", "20"], wrapper="sh-trap")])
    with LocalPod(spec) as pod:
        (out,) = pod.stop().values()
    assert out.prestop_rc is None                                   # abandoned, not finished
    assert 2.9 <= out.prestop_end - out.prestop_start <= 3.5        # at the grace period's end
    assert out.stop_sent - out.prestop_end < 0.5                    # then the stop signal at once
    # with the kubelet's one-time minimum of 2 s left, then SIGKILL
    assert MIN_GRACE_AFTER_PRESTOP_S == 2.0
    assert 1.9 <= out.kill_sent - out.stop_sent <= 2.5 and out.killed and out.exit_signal == 9
