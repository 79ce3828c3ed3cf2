"""The two `kubectl debug` recipes on real pods (runc, nginx, php-fpm, strace), stopped like kubelet.

- `--target` (the recorder shares the nginx container's PID namespace, with its own /proc,
  `--pid 1`): when that PID 1 exits the kernel SIGKILLs the recorder. What it wrote before must
  still name the cause: its events are durable as they are decoded.
- `node/<node>` (host PID namespace, `--pod NAME|UID` found from the node's cgroups and the
  kubelet's /var/log/pods): the recorder outlives the pod and stops cleanly.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, require_kernel
from sigtrace.lab.driver import SubprocessRecorder
from sigtrace.lab.scenario import Scenario, run_scenario
from test_lab_scenarios import TOOLS, no_leftovers


# preStop `nginx -s quit` with STOPSIGNAL TERM (the article's nginx side); php-fpm drains so that
# nginx's workers still hold 5 s requests when the runtime's TERM follows the hook
ARTICLE = dict(name="article", workers=2, request_ms=5000, concurrency=2, warmup_s=1.0, lb_delay_s=0, grace_s=10,
               prestop={"nginx": "nginx -s quit"}, stop_signal={"nginx": "SIGTERM", "php-fpm": "SIGQUIT"},
               process_control_timeout_s=10)
# graceful QUIT everywhere, but 5 s requests and a 2 s grace period: SIGKILL at the end
GRACE_TOO_SHORT = dict(name="grace", workers=2, request_ms=5000, concurrency=2, warmup_s=1.0, lb_delay_s=0,
                       grace_s=2, stop_signal={"nginx": "SIGQUIT", "php-fpm": "SIGQUIT"},
                       process_control_timeout_s=30, layout="systemd")


class _Recorder(SubprocessRecorder):
    """`sigtrace record --backend strace` as the lab runs it, from another place (argv)."""

    def __init__(self) -> None:
        super().__init__("strace")

    def log(self) -> str:
        return self._log_path.read_text(errors="replace")

    def start(self, out_dir: Path, pod) -> None:
        self._log_path = out_dir / "record.log"
        super().start(out_dir, pod)


class InTargetNamespace(_Recorder):
    """As in `kubectl debug --target=nginx`: the nginx container's PID namespace, a private mount
    namespace with its own /proc, `--pid 1`."""

    def argv(self, out_dir: Path, pod) -> list[str]:
        inner = (f"mount -t proc proc /proc && exec {sys.executable} -m sigtrace record --backend strace "
                 f"--pid 1 --output {out_dir} --no-live")
        return ["nsenter", "--target", str(pod.pid1("nginx")), "--pid", "--", "unshare", "--mount",
                "--propagation", "private", "sh", "-c", inner]


class FromNode(_Recorder):
    """As in `kubectl debug node/NODE`: the host's PID namespace, the pod found by name in a node
    root that holds the kubelet's /var/log/pods/<namespace>_<name>_<uid>."""

    def __init__(self, node_root: Path) -> None:
        super().__init__()
        self.node_root = node_root

    def argv(self, out_dir: Path, pod) -> list[str]:
        logs = self.node_root / "var/log/pods" / f"{pod.spec.namespace}_{pod.spec.name}_{pod.uid}"
        logs.mkdir(parents=True)
        return [sys.executable, "-m", "sigtrace", "record", "--backend", "strace", "--node-root",
                str(self.node_root), "--pod", f"{pod.spec.namespace}/{pod.spec.name}", "--output", str(out_dir),
                "--no-live"]


def _report(out: Path, uid: str) -> dict:
    p = subprocess.run([sys.executable, "-m", "sigtrace", "report", str(out), "--format", "json", "--pod", uid],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def _run(tmp_path: Path, params: dict, recorder: _Recorder):
    out = tmp_path / params["name"]
    out.mkdir()
    r = run_scenario(Scenario(**params), out, recorder)
    report = _report(out, r.pod_uid)
    pods = [p for p in report["pods"] if p["pod_uid"] == r.pod_uid]
    assert len(pods) == 1, report
    no_leftovers(r.pod_uid)
    return r, out, report, {v["id"] for v in pods[0]["verdicts"] if v.get("status", "found") != "undecidable"}


@pytest.fixture
def kernel():
    require_kernel(tools=TOOLS + ("strace", "nsenter", "unshare"))


@pytest.mark.kernel
@pytest.mark.parametrize("params,verdict", [(ARTICLE, "prestop-quit-superseded"),
                                            (GRACE_TOO_SHORT, "killed-after-grace")], ids=["article", "grace"])
def test_recorder_killed_with_target_pid1_still_names_the_cause(kernel, tmp_path, params, verdict):
    rec = InTargetNamespace()
    r, out, report, fired = _run(tmp_path, params, rec)
    # the kernel killed the recorder when nginx (its PID namespace's init) exited
    assert rec.returncode == -signal.SIGKILL, rec.log()
    assert "runs in the PID namespace of nginx (PID 1 here)" in rec.log()
    meta = json.loads((out / "meta.json").read_text())
    nginx_id = next(cid for cid, name in r.containers.items() if name == "nginx")
    assert meta["end"] is None and meta["dies_with"]["container_id"] == nginx_id
    assert meta["dies_with"]["pod_uid"] == r.pod_uid
    assert verdict in fired, (fired, report)
    note = next(n for n in report["incomplete"] if "did not stop cleanly" in n)
    assert "its last event is " in note and "was killed when that process exited" in note


@pytest.mark.kernel
@pytest.mark.parametrize("params,verdict", [(ARTICLE, "prestop-quit-superseded"),
                                            (GRACE_TOO_SHORT, "killed-after-grace")], ids=["article", "grace"])
def test_recorder_on_the_node_outlives_the_pod(kernel, tmp_path, params, verdict):
    rec = FromNode(tmp_path / "node")
    r, out, report, fired = _run(tmp_path, params, rec)
    assert rec.returncode == 0, rec.log()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["end"] is not None and meta["dies_with"] is None and meta["pods"] == [r.pod_uid]
    # both containers were found from the pod's cgroups, not just one
    attached = {a["container_id"] for a in meta["attach"].values() if a["status"] == "attached"}
    assert set(r.containers) <= attached
    assert verdict in fired, (fired, report)
    assert not any("did not stop cleanly" in n for n in report["incomplete"])
