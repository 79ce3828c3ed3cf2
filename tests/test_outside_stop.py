"""Resets outside a stop, on a real pod that never stops: nginx's keepalive_timeout expires under a
balancer's pool of idle keep-alive connections (the pod closes first, the pool sends its next request
on the closed connection, the kernel answers with a reset), and php-fpm recycles its children
(pm.max_requests) under nginx's kept FastCGI connections. Recorded by the bpf recorder with
`--tcp-detail always` (the only way steady-state TCP reaches a recording): the report names no stop
and no verdict, and lists the pod in the node-level "resets outside a stop" summary."""
from __future__ import annotations

import time

import pytest

from conftest import ThreadRecorder, require_kernel

pytestmark = pytest.mark.kernel
TOOLS = ("runc", "nginx", "php-fpm8.2", "ip")

# nginx keeps FastCGI connections to php-fpm (as many setups do for speed); php-fpm recycles a child
# after 3 requests: the child's exit closes connections nginx may still pick for the next request
NGINX_KEEPCONN = """daemon off;
master_process on;
worker_processes 1;
pid /run/nginx.pid;
error_log stderr notice;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path /tmp/client_body;
    proxy_temp_path /tmp/proxy;
    fastcgi_temp_path /tmp/fastcgi;
    uwsgi_temp_path /tmp/uwsgi;
    scgi_temp_path /tmp/scgi;
    keepalive_timeout 700ms;
    upstream fpm { server 127.0.0.1:9000; keepalive 8; }
    server {
        listen 8080;
        location / {
            fastcgi_pass fpm;
            fastcgi_keep_conn on;
            include /etc/nginx/fastcgi_params;
            fastcgi_param SCRIPT_FILENAME /lab/www/index.php;
        }
    }
}
"""


@pytest.fixture(scope="module")
def steady(tmp_path_factory):
    require_kernel(bpf=True, tools=TOOLS)
    from sigtrace.backends.bpf.backend import BpfBackend
    from sigtrace.lab import configs
    from sigtrace.lab.load import LoadClient
    from sigtrace.lab.pod import LocalPod, PodSpec

    tmp = tmp_path_factory.mktemp("outside")
    out = tmp / "rec"
    recorder = ThreadRecorder(BpfBackend(tcp_detail="always"), out, startup_s=90).start()
    facts: dict = {}
    try:
        fpm = configs.fpm_conf(children=2) + "pm.max_requests = 3\n"
        app = configs.write_app_dir(tmp / "app", nginx=NGINX_KEEPCONN, fpm=fpm)
        spec = PodSpec(name="steady", app_dir=app.root, containers=[configs.nginx_container(app),
                                                                     configs.fpm_container(app)])
        with LocalPod(spec) as pod:
            facts["uid"] = pod.uid
            time.sleep(1.5)          # the recorder's scan learns the pod's listeners
            # a pool of 4 keep-alive connections idling 1.2 s: longer than nginx's 0.7 s keepalive_timeout
            with LoadClient(pod.netns, request_ms=20, concurrency=4, keepalive_idle_ms=1200,
                            workdir=pod.workdir) as load:
                load.start()
                time.sleep(5.0)
                load.stop_sending()
                facts["load"] = load.wait().counts()
            time.sleep(0.5)
            recorder.stop()          # the recording ends before the pod is removed: it never stopped
    finally:
        recorder.stop()
    from sigtrace.report import build_reports
    from sigtrace.events.reader import read_recording
    rec = read_recording(out)
    return facts, build_reports(rec.events, rec.meta, rec.incomplete)


def test_steady_state_resets_are_no_stop_and_no_verdict(steady):
    facts, rs = steady
    (pod,) = [p for p in rs.pods if p.pod_uid == facts["uid"]]
    assert not pod.stopped and pod.verdicts == []
    # the pool saw its requests on closed connections fail
    assert facts["load"]["closed"] + facts["load"]["reset"] >= 1, facts["load"]


def test_keepalive_expiry_is_in_the_node_summary(steady):
    facts, rs = steady
    (entry,) = [e for e in rs.outside_stop if e["pod_uid"] == facts["uid"]]
    assert entry["stopped"] is False
    assert entry["keepalive_races"] >= 1 and entry["client_resets"] >= entry["keepalive_races"]
    # every request the pool lost on a closed connection is one reset the pod's kernel sent
    assert entry["keepalive_races"] >= facts["load"]["closed"] + facts["load"]["reset"] - 1
    assert any("keepalive_timeout" in c for c in entry["causes"])
    # php-fpm recycled its children (3 requests each) on its own: no signal, exit code 0
    assert entry["fpm_children_recycled"] >= 1
    assert rs.to_dict()["resets_outside_stop"][0]["pod_uid"] == facts["uid"]
