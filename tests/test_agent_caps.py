"""The DaemonSet's capabilities, proven on this kernel: `sigtrace agent` run with exactly the set
daemonset/base/daemonset.yaml adds (root, every other capability out of the bounding set, no new
privileges), against a real pod that was already serving when the agent started.

With the set, the agent records and learns the pod's listeners (it reads /proc/<pid>/fd of the
pod's processes once); without CAP_SYS_PTRACE it cannot, and says so in one line and in meta.json."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, require_kernel

pytestmark = pytest.mark.kernel
TOOLS = ("runc", "nginx", "php-fpm8.2", "ip", "setpriv")


def daemonset_caps() -> list[str]:
    ds = yaml.safe_load((REPO / "daemonset" / "base" / "daemonset.yaml").read_text())
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    return c["securityContext"]["capabilities"]["add"]


def run_agent(tmp: Path, caps: list[str], pod) -> tuple[dict, str]:
    out = tmp / "agent"
    bounding = "-all," + ",".join("+" + c.lower() for c in caps)
    argv = ["setpriv", "--no-new-privs", "--bounding-set", bounding, "--inh-caps", "-all", "--",
            sys.executable, "-m", "sigtrace", "agent", "--no-api", "--node", "caps", "--output", str(out),
            "--ready-file", str(tmp / "ready"), "--duration", "20"]
    agent = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not (tmp / "ready").exists():
            assert agent.poll() is None, agent.stderr.read()
            assert time.monotonic() < deadline, "agent not ready"
            time.sleep(0.1)
        time.sleep(2.5)                     # two scans: the pod's processes and their listeners
        pod.stop()
        time.sleep(1.5)                     # the live report is due after the last exit
    finally:
        agent.terminate()
        try:
            _, err = agent.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
            _, err = agent.communicate()
    (run,) = sorted(out.glob("caps-*"))
    return json.loads((run / "meta.json").read_text()) | {"_run": str(run)}, err


def start_pod(tmp: Path):
    from sigtrace.lab import configs
    from sigtrace.lab.pod import LocalPod, PodSpec
    app = configs.write_app_dir(tmp / "app", nginx=configs.nginx_conf(workers=1), fpm=configs.fpm_conf(children=1))
    spec = PodSpec(name="caps", layout="cgroupfs", grace_period_s=5, app_dir=app.root,
                   containers=[configs.nginx_container(app, stop_signal="SIGQUIT"), configs.fpm_container(app)])
    return LocalPod(spec)


@pytest.mark.parametrize("without", [None, "SYS_PTRACE"])
def test_agent_with_the_daemonset_capabilities(tmp_path, without):
    require_kernel(bpf=True, tools=TOOLS)
    # the DaemonSet mounts the host's /sys/kernel/tracing (hostPath, type Directory): a node mounts
    # tracefs at boot, and the agent, without CAP_SYS_ADMIN, cannot mount it itself. A machine
    # fresh from boot may not have it yet when this is the first kernel test: mount it as the node would
    from sigtrace.backends.bpf.kernel import tracefs
    tracefs()
    caps = [c for c in daemonset_caps() if c != without]
    with start_pod(tmp_path) as pod:
        meta, err = run_agent(tmp_path, caps, pod)
        uid = pod.uid
    assert meta["end"] and meta["lost_events"] == 0 and "Traceback" not in err
    endpoints = meta["pod_endpoints"].get(uid, [])
    report = Path(meta["_run"]) / "reports" / f"{uid}.json"
    assert report.exists(), err                         # recorded, correlated and reported either way
    if without is None:
        assert "*:8080" in endpoints and "127.0.0.1:9000" in endpoints, endpoints
        assert "no CAP_SYS_PTRACE" not in err
    else:
        # the listeners opened before the agent started are not learnt: SYS_PTRACE is needed
        assert "*:8080" not in endpoints and meta["proc_fd_refused"] > 0
        assert "no CAP_SYS_PTRACE: the listeners" in err
