"""kubectl-sigtrace: argument handling, and deploy/status/collect/undeploy against the fake API
server on 127.0.0.1 (the official client talks real HTTP and, for pods/exec, a real WebSocket)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from k8s_fake_api import fake_api  # noqa: F401 (the fixture)
from sigtrace.errors import SigtraceError
from sigtrace.k8s import agents, manifests
from sigtrace.k8s.collect import safe_extract


def run_plugin(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    code = "import sys; from sigtrace.kubectl_plugin import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=Path(__file__).resolve().parent.parent)


@pytest.fixture
def kubeconfig(tmp_path, fake_api) -> str:
    kc = tmp_path / "kubeconfig"
    kc.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": fake_api.url}},
                     {"name": "other", "cluster": {"server": "http://127.0.0.1:9"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}},
                     {"name": "other", "context": {"cluster": "other", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t0ken"}}]}))
    return str(kc)


# ---- argument handling ---------------------------------------------------------------------
def test_help_lists_the_commands_and_kubectl_flags():
    r = run_plugin("--help")
    assert r.returncode == 0
    for word in ("deploy", "undeploy", "status", "collect", "report", "--namespace", "--context", "--kubeconfig"):
        assert word in r.stdout


def test_console_script_and_dependencies_are_declared():
    import tomllib
    proj = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
    assert proj["scripts"]["kubectl-sigtrace"] == "sigtrace.kubectl_plugin:main"   # kubectl finds kubectl-* on PATH
    assert any(d.startswith("kubernetes") for d in proj["dependencies"])
    assert any(d.startswith("kubernetes-validate") for d in proj["optional-dependencies"]["test"])


def test_bad_arguments_are_usage_errors_without_traceback(tmp_path):
    r = run_plugin("collect")                                   # --output missing
    assert r.returncode == 2 and "--output" in r.stderr and "Traceback" not in r.stderr
    r = run_plugin("deploy", "--overlay", "kernel-4.x")
    assert r.returncode == 2 and "kernel-4.x" in r.stderr
    r = run_plugin("report", str(tmp_path))                     # no recordings there
    assert r.returncode == 2 and "no recordings" in r.stderr and "Traceback" not in r.stderr


def test_missing_kubeconfig_is_one_line(tmp_path):
    r = run_plugin("--kubeconfig", str(tmp_path / "none"), "status")
    assert r.returncode == 69 and r.stderr.count("\n") == 1 and "--kubeconfig" in r.stderr


def test_dry_run_renders_into_the_chosen_namespace():
    r = run_plugin("-n", "obs", "deploy", "--dry-run", "--overlay", "kernel-pre-5.8", "--image", "reg/agent:1")
    assert r.returncode == 0, r.stderr
    items = json.loads(r.stdout)["items"]
    ds = items[-1]
    assert ds["metadata"]["namespace"] == "obs" and ds["spec"]["template"]["spec"]["containers"][0]["image"] == "reg/agent:1"
    assert "SYS_ADMIN" in ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]


# ---- against the fake API server -------------------------------------------------------------
def test_deploy_twice_then_undeploy(fake_api, kubeconfig):
    r = run_plugin("--kubeconfig", kubeconfig, "deploy", "--image", "reg/sigtrace-agent:0.1.0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:5] == ["namespace/sigtrace created", "serviceaccount/sigtrace-agent created",
                                        "clusterrole/sigtrace-agent created", "clusterrolebinding/sigtrace-agent created",
                                        "daemonset/sigtrace-agent created"]
    ds = fake_api.objects[("/apis/apps/v1", "daemonsets", "sigtrace", "sigtrace-agent")]
    assert ds["spec"]["template"]["spec"]["containers"][0]["image"] == "reg/sigtrace-agent:0.1.0"
    role = fake_api.objects[("/apis/rbac.authorization.k8s.io/v1", "clusterroles", None, "sigtrace-agent")]
    assert role["rules"] == next(o for o in manifests.render() if o["kind"] == "ClusterRole")["rules"]
    r = run_plugin("--kubeconfig", kubeconfig, "deploy")        # idempotent: replaces
    assert r.returncode == 0 and r.stdout.count("configured") == 5, r.stdout + r.stderr
    r = run_plugin("--kubeconfig", kubeconfig, "undeploy")
    assert r.returncode == 0 and r.stdout.count("deleted") == 5, r.stdout + r.stderr
    assert not fake_api.objects


def test_context_flag_selects_the_cluster(fake_api, kubeconfig):
    r = run_plugin("--kubeconfig", kubeconfig, "--context", "other", "status")
    assert r.returncode == 69 and "cannot reach the API server" in r.stderr and "Traceback" not in r.stderr


def test_deploy_forbidden_is_one_line(fake_api, kubeconfig):
    fake_api.denied.add("clusterroles")
    r = run_plugin("--kubeconfig", kubeconfig, "deploy")
    assert r.returncode == 69 and "forbidden (403)" in r.stderr and "clusterrole/sigtrace-agent" in r.stderr
    assert "Traceback" not in r.stderr


def agent_pod(name: str, node: str, ready: bool, ns: str = "sigtrace") -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"app.kubernetes.io/name": "sigtrace-agent"}},
            "spec": {"nodeName": node, "containers": [{"name": "agent", "image": "sigtrace-agent:0.1.0"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                       "containerStatuses": [{"name": "agent", "ready": ready, "restartCount": 0 if ready else 3,
                                              "containerID": "containerd://" + "a" * 64}]}}


def install_agents(fake_api) -> None:
    for o in manifests.render():
        fake_api.apply("ADDED", o)
    ds = next(o for o in manifests.render() if o["kind"] == "DaemonSet")
    ds["status"] = {"desiredNumberScheduled": 2, "numberReady": 1, "currentNumberScheduled": 2, "numberMisscheduled": 0}
    fake_api.apply("MODIFIED", ds)
    fake_api.apply("ADDED", agent_pod("sigtrace-agent-aaaaa", "node-a", True))
    fake_api.apply("ADDED", agent_pod("sigtrace-agent-bbbbb", "node-b", False))
    fake_api.apply("ADDED", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1", "namespace": "shop"},
                             "spec": {"nodeName": "node-b", "containers": [{"name": "nginx", "image": "nginx"}]}})


def test_status_shows_agents_ready_per_node(fake_api, kubeconfig):
    install_agents(fake_api)
    r = run_plugin("--kubeconfig", kubeconfig, "status", "--json", "--no-health")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert (st["desired"], st["ready"]) == (2, 1)
    assert [(n["node"], n["ready"], n["restarts"]) for n in st["nodes"]] == [("node-a", True, 0), ("node-b", False, 3)]
    assert fake_api.execs == []                                 # --no-health: no pods/exec
    r = run_plugin("--kubeconfig", kubeconfig, "status", "--no-health")
    assert "agents ready: 1/2" in r.stdout and "node-b" in r.stdout


def agent_status_json(node: str, written_at: float, **kw) -> bytes:
    """status.json as sigtrace/k8s/health.py writes it."""
    import time
    st = {"sigtrace_status": 1, "node": node, "written_at": written_at, "every_s": 5.0, "recording": True,
          "backend": "bpf", "armed_pods": 2, "events": 123456, "events_per_s": 153.25, "lost_events": 7,
          "disk_used_bytes": 3 * 1024 * 1024 + 512 * 1024, "reports": 4,
          "last_report": {"at": time.time() - 90, "pod_uid": "u1", "pod_name": "web-7d9c5b8f6d-x2x4q",
                          "namespace": "shop", "verdicts": ["prestop-quit-superseded", "endpoint-race"]},
          "kubernetes": {"problems": {}}}
    st.update(kw)
    return json.dumps(st).encode()


def test_status_reads_each_agents_health_over_exec(fake_api, kubeconfig):
    import time
    install_agents(fake_api)
    bodies = {"sigtrace-agent-aaaaa": agent_status_json("node-a", time.time() - 2),
              # node-b's agent: its loop stopped writing a minute ago, and its API watch is failing
              "sigtrace-agent-bbbbb": agent_status_json("node-b", time.time() - 60, armed_pods=None,
                                                        last_report=None, backend="kubernetes-api-only",
                                                        kubernetes={"problems": {"pods": "watching pods: cannot reach "
                                                                                         "the API server"}})}

    def cat(ns, pod, command):
        assert command == ["cat", agents.STATUS_PATH]
        return bodies[pod], b"", 0
    fake_api.exec_handler = cat
    r = run_plugin("--kubeconfig", kubeconfig, "status", "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    a, b = st["nodes"]
    assert (a["node"], a["health"]["armed_pods"], a["health"]["events_per_s"], a["health"]["lost_events"]) == \
        ("node-a", 2, 153.25, 7)
    assert a["health"]["stale"] is False and b["health"]["stale"] is True and b["health"]["age_s"] >= 59
    assert sorted(pod for _, pod, _ in fake_api.execs) == ["sigtrace-agent-aaaaa", "sigtrace-agent-bbbbb"]

    r = run_plugin("--kubeconfig", kubeconfig, "status")
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0] == "agents ready: 1/2"
    assert out[1].split() == ["NODE", "POD", "READY", "RESTARTS", "ARMED", "EVENTS/S", "LOST", "DISK", "LAST", "REPORT"]
    assert out[2].split()[:8] == ["node-a", "sigtrace-agent-aaaaa", "yes", "0", "2", "153.2", "7", "3.5MiB"]
    assert out[2].endswith("ago shop/web-7d9c5b8f6d-x2x4q prestop-quit-superseded,endpoint-race")
    assert out[3].split()[:8] == ["node-b", "sigtrace-agent-bbbbb", "no", "3", "-", "153.2", "7", "3.5MiB"]
    assert out[3].endswith("none yet")
    notes = out[4:]
    assert any(n.startswith("note: node-b: status.json is") and "stuck" in n for n in notes), notes
    assert "note: node-b: API pods: watching pods: cannot reach the API server" in notes
    assert "note: node-b: no kernel recorder (API events only): see the agent's log" in notes
    assert not [n for n in notes if "node-a" in n]


def test_status_of_a_malformed_status_json_or_pod_is_shown_never_a_traceback(fake_api, kubeconfig):
    """status.json comes from a node and pods from the API: text for numbers, a list for a dict,
    escapes in a problem or a pod name are shown as unknown or escaped, never a traceback."""
    import time
    install_agents(fake_api)
    fake_api.apply("MODIFIED", agent_pod("sigtrace-agent-bbbbb", "node-b", True) | {
        "status": {"phase": "Running", "conditions": [{"status": "True"}, "x"],
                   "containerStatuses": [{"restartCount": "3"}]}})
    bodies = {"sigtrace-agent-aaaaa": agent_status_json(
                  "node-a", time.time() - 2, events_per_s="fast", disk_used_bytes="lots", last_report="x",
                  kubernetes={"problems": {"pods": "watching\x1b]0;owned\x07\r\nFAKE LINE"}}),
              "sigtrace-agent-bbbbb": agent_status_json("node-b", "yesterday", kubernetes={"problems": []})}
    fake_api.exec_handler = lambda ns, pod, command: (bodies[pod], b"", 0)
    r = run_plugin("--kubeconfig", kubeconfig, "status")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout and "\r" not in r.stdout
    lines = r.stdout.splitlines()
    assert not any(line.startswith("FAKE LINE") for line in lines)
    a = next(line for line in lines if line.startswith("node-a"))
    assert a.split()[5:8] == ["-", "7", "-"] and a.endswith("none yet")
    assert any("API pods: watching\\x1b]0;owned" in line for line in lines), lines
    assert json.loads(run_plugin("--kubeconfig", kubeconfig, "status", "--json").stdout)["nodes"][1]["restarts"] == 0


def test_status_without_status_json_says_why_per_node(fake_api, kubeconfig):
    install_agents(fake_api)
    fake_api.exec_handler = lambda ns, pod, command: (b"", b"cat: /var/lib/sigtrace/status.json: No such file or directory\n", 1)
    r = run_plugin("--kubeconfig", kubeconfig, "status")
    assert r.returncode == 0, r.stderr
    assert "note: node-a: health unavailable: no status.json yet (agent starting, or an older agent image)" in r.stdout
    assert "Traceback" not in r.stderr


def test_status_without_agents_says_deploy(fake_api, kubeconfig):
    r = run_plugin("--kubeconfig", kubeconfig, "status")
    assert r.returncode == 2 and "kubectl sigtrace deploy" in r.stderr


def make_node_output(root: Path, node: str) -> Path:
    """What an agent leaves in /var/lib/sigtrace: one recording with events, meta and a report."""
    rec = root / node / f"{node}-20261129T091000Z"
    (rec / "reports").mkdir(parents=True)
    (rec / "events.jsonl").write_text(json.dumps({"ts": 1.0, "kind": "pod_lifecycle", "event": "pod_seen",
                                                  "pod_uid": "u-" + node, "pod_name": "web"}) + "\n")
    (rec / "meta.json").write_text(json.dumps({"node": node, "end": 2.0, "kubernetes": {
        "problems": {}, "pods_without_container_ids": ["shop/web-new"]}}))
    (rec / "reports" / f"u-{node}.json").write_text("{}")
    return root / node


def test_collect_pulls_each_agents_output_over_exec(fake_api, kubeconfig, tmp_path):
    install_agents(fake_api)
    nodes_root = tmp_path / "nodes"
    for n in ("node-a", "node-b"):
        make_node_output(nodes_root, n)
    pod_node = {"sigtrace-agent-aaaaa": "node-a", "sigtrace-agent-bbbbb": "node-b"}

    def exec_tar(ns, pod, command):
        # the agent container's view: AGENT_OUTPUT is this node's directory; real tar does the rest
        assert command[:5] == ["tar", "cf", "-", "-C", agents.AGENT_OUTPUT]
        real = [*command[:4], str(nodes_root / pod_node[pod]), *command[5:]]
        p = subprocess.run(real, capture_output=True)
        return p.stdout, p.stderr, p.returncode
    fake_api.exec_handler = exec_tar

    out = tmp_path / "collected"
    r = run_plugin("--kubeconfig", kubeconfig, "collect", "--output", str(out))
    assert r.returncode == 0, r.stderr
    for n in ("node-a", "node-b"):
        src = nodes_root / n
        files = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file())
        assert sorted(p.relative_to(out / n) for p in (out / n).rglob("*") if p.is_file()) == files
        for f in files:
            assert (out / n / f).read_bytes() == (src / f).read_bytes()
    assert {(ns, pod) for ns, pod, _ in fake_api.execs} == {("sigtrace", "sigtrace-agent-aaaaa"),
                                                             ("sigtrace", "sigtrace-agent-bbbbb")}
    assert "node-a: 3 files, 1 recordings" in r.stdout

    # only the node of a given pod
    fake_api.execs.clear()
    r = run_plugin("--kubeconfig", kubeconfig, "collect", "--output", str(tmp_path / "one"), "--pod", "shop/web-1")
    assert r.returncode == 0, r.stderr
    assert [pod for _, pod, _ in fake_api.execs] == ["sigtrace-agent-bbbbb"]
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["node-b"]

    # report notes the pods whose names the API could not give
    r = run_plugin("report", str(out), "--format", "json")
    assert "no container names from the API for: shop/web-new" in r.stderr


def test_safe_extract_refuses_paths_outside_and_links(tmp_path):
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in (("../evil", b"x"), ("/abs", b"y"), ("ok/events.jsonl", b"{}\n")):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        link = tarfile.TarInfo("ok/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    got = safe_extract(buf.getvalue(), tmp_path / "dest")
    assert got == ["ok/events.jsonl"]
    assert not (tmp_path / "evil").exists() and not (tmp_path / "dest" / "ok" / "link").exists()


def test_a_sparse_member_that_declares_gigabytes_is_refused_without_allocating(tmp_path):
    """A small archive (GNU tar --sparse) whose member claims 5 GiB: refused before a byte is
    written, and extraction never holds a member in memory."""
    import resource
    big = tmp_path / "src" / "events.jsonl"
    big.parent.mkdir()
    with open(big, "wb") as fh:
        fh.truncate(5 << 30)
    tar = tmp_path / "sparse.tar"
    subprocess.run(["tar", "--sparse", "-cf", str(tar), "-C", str(big.parent), "events.jsonl"], check=True)
    assert tar.stat().st_size < 1 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(SigtraceError, match="raise --max-bytes"):
        safe_extract(tar, tmp_path / "dest")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000      # KiB: no 5 GiB buffer
    assert not (tmp_path / "dest" / "events.jsonl").exists()


def test_collect_stops_at_max_bytes_in_transit(fake_api, kubeconfig, tmp_path):
    install_agents(fake_api)
    fake_api.exec_handler = lambda ns, pod, command: (b"\0" * (3 << 20), b"", 0)   # 3 MiB of archive
    r = run_plugin("--kubeconfig", kubeconfig, "collect", "--output", str(tmp_path / "o"), "--max-bytes", "1000000")
    assert r.returncode != 0 and "sent more than" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_report_reports_every_usable_recording_and_names_the_unusable(tmp_path):
    import shutil
    root = tmp_path / "rollout"
    shutil.copytree(Path(__file__).parent / "data" / "article", root / "node-a" / "node-a-20261129T091000Z")
    bad = root / "node-b" / "node-b-20261129T091000Z"
    bad.mkdir(parents=True)
    (bad / "events.jsonl").write_text("not json\n")
    (bad / "meta.json").write_text("{}")
    r = run_plugin("report", str(root), "--format", "json")
    assert r.returncode != 0
    assert '"prestop-quit-superseded"' in r.stdout                 # the usable one was reported
    assert "1 of 2 recordings unusable" in r.stderr and "node-b-20261129T091000Z" in r.stderr
    assert "Traceback" not in r.stderr


def test_collect_accepts_tar_exit_1_and_goes_on_past_a_failing_node(fake_api, kubeconfig, tmp_path):
    """A running agent's files change while tar reads them (tar exits 1); one node failing does not
    stop the others."""
    install_agents(fake_api)
    nodes_root = tmp_path / "nodes"
    make_node_output(nodes_root, "node-a")

    def exec_tar(ns, pod, command):
        if pod == "sigtrace-agent-bbbbb":
            return b"", b"tar: /var/lib/sigtrace: Cannot open: Permission denied\n", 2
        real = [*command[:4], str(nodes_root / "node-a"), *command[5:]]
        p = subprocess.run(real, capture_output=True)
        return p.stdout, b"tar: ./events.jsonl: file changed as we read it\n", 1
    fake_api.exec_handler = exec_tar
    out = tmp_path / "collected"
    r = run_plugin("--kubeconfig", kubeconfig, "collect", "--output", str(out))
    assert r.returncode != 0 and "1 of 2 nodes not collected" in r.stderr and "node-b" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert (out / "node-a" / "node-a-20261129T091000Z" / "events.jsonl").exists()


def test_report_of_a_collected_meta_that_lies(tmp_path):
    import shutil
    rec = tmp_path / "rollout" / "n1" / "n1-20261129T091000Z"
    shutil.copytree(Path(__file__).parent / "data" / "article", rec)
    meta = json.loads((rec / "meta.json").read_text())
    meta["kubernetes"] = {"problems": {"pods": "\x1b]0;pwned\x07\x1b[2J"}, "pods_without_container_ids": [1, "x"]}
    (rec / "meta.json").write_text(json.dumps(meta))
    r = run_plugin("report", str(tmp_path / "rollout"), "--format", "json")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "\x1b" not in r.stderr and "\\x1b]0;pwned" in r.stderr
    (rec / "meta.json").write_text("[1]")
    r = run_plugin("report", str(tmp_path / "rollout"), "--format", "json")
    assert "Traceback" not in r.stderr and '"prestop-quit-superseded"' in r.stdout


@pytest.mark.parametrize("node", ["/tmp/sigtrace-escaped", "..", "node\x1b]0;PWNED\x07\x1b[2J"])
def test_collect_never_uses_a_node_name_that_is_not_a_dns_name_as_a_directory(fake_api, kubeconfig, tmp_path, node):
    """spec.nodeName is API data: an absolute path or ".." would write outside --output, an escape
    would reach the terminal. Such a node is refused (said, escaped); the others are collected."""
    import io
    import tarfile
    install_agents(fake_api)
    fake_api.apply("ADDED", agent_pod("sigtrace-agent-evil", node, True))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        ti = tarfile.TarInfo("./evil.txt")
        ti.size = 6
        tf.addfile(ti, io.BytesIO(b"pwned\n"))
    fake_api.exec_handler = lambda ns, pod, command: (buf.getvalue(), b"", 0)
    out = tmp_path / "collected"
    r = run_plugin("--kubeconfig", kubeconfig, "collect", "--output", str(out))
    assert r.returncode != 0 and "is not a DNS name" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "\x1b" not in r.stderr and "\x07" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not Path("/tmp/sigtrace-escaped/evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["node-a", "node-b"]


def test_archive_members_that_cannot_be_written_are_skipped_and_said(tmp_path):
    """A file then a directory of its name, a file named ".", a name too long: those members are
    skipped (named in one error), the others extracted; never a traceback."""
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in (("a", b"1"), ("a/b", b"2"), (".", b"3"), ("n" * 300, b"4"), ("ok/events.jsonl", b"{}\n")):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    from sigtrace.errors import SigtraceError
    with pytest.raises(SigtraceError, match=r"3 member\(s\) of the archive could not be written"):
        safe_extract(buf.getvalue(), tmp_path / "dest")
    assert (tmp_path / "dest" / "ok" / "events.jsonl").read_bytes() == b"{}\n"


@pytest.mark.parametrize("remote", ["endless stderr", "silent"])
def test_an_exec_whose_remote_end_never_stops_or_never_speaks_ends_in_one_error(fake_api, kubeconfig, remote):
    """pods/exec to a stuck or hostile agent: an endless stderr is read and dropped (it piled up in
    the client before: +400 MB in 25 s), silence is not waited on forever; both end in one error."""
    import io
    import time
    from kubernetes import config
    from sigtrace.k8s.exec import exec_stream
    install_agents(fake_api)

    def misbehave(write):
        t0 = time.monotonic()
        while time.monotonic() - t0 < 20:
            if remote == "endless stderr":
                write(2, b"E" * 65536)
            else:
                time.sleep(0.2)
    fake_api.exec_handler = lambda ns, pod, command: misbehave
    api = config.new_client_from_config(config_file=kubeconfig)
    t0 = time.monotonic()
    with pytest.raises(SigtraceError, match="sent no output for 2 s"):
        exec_stream(api, "sigtrace", "sigtrace-agent-aaaaa", ["cat", agents.STATUS_PATH], io.BytesIO(), 1 << 20,
                    stall_s=2)
    assert time.monotonic() - t0 < 15
