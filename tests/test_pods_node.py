"""Finding a pod on a node without the API server: UID from cgroups, name from /var/log/pods."""
from __future__ import annotations

import os

import pytest

from sigtrace.errors import UsageProblem
from sigtrace.pods import node

UID_A = "5a1b7e2c-0d9e-4f3a-8b6c-1e2f3a4b5c6d"
UID_B = "7c2d8e3f-1a2b-4c3d-9e4f-5a6b7c8d9e0f"


@pytest.fixture
def root(tmp_path):
    logs = tmp_path / "var/log/pods"
    for d in (f"shop_web-1_{UID_A}", f"billing_web-1_{UID_B}", "not a pod dir", f"shop_api_{UID_B[:-1]}"):
        (logs / d).mkdir(parents=True)
    return tmp_path


def test_uid_name_and_namespace_name(root):
    assert node.resolve_pod(UID_A.upper(), root) == UID_A
    assert node.resolve_pod(f"shop/web-1", root) == UID_A
    assert node.resolve_pod(f"billing/web-1", root) == UID_B
    assert node.pods_on_node(root) == [("billing", "web-1", UID_B), ("shop", "web-1", UID_A)]


@pytest.mark.parametrize("ref,expect", [("web-1", "2 pods match"), ("shop/nope", "no such pod"),
                                        ("api", "no such pod")])
def test_not_one_pod_is_one_line(root, ref, expect):
    with pytest.raises(UsageProblem) as e:
        node.resolve_pod(ref, root)
    assert expect in str(e.value) and "\n" not in str(e.value)


def test_pids_of_a_pod_from_cgroups(tmp_path):
    proc = tmp_path / "proc"
    cgroups = {
        10: f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_A.replace('-', '_')}.slice/cri-containerd-ab12.scope\n",
        11: f"12:pids:/kubepods/besteffort/pod{UID_A}/cd34\n0::/\n",
        12: f"0::/kubepods/pod{UID_B}/ef56\n",
        13: "0::/system.slice/sshd.service\n",
    }
    for pid, text in cgroups.items():
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cgroup").write_text(text)
    (proc / "self").mkdir()
    assert node.pod_pids({UID_A}, str(proc)) == {UID_A: [10, 11]}
    assert node.pod_pids({UID_A, UID_B}, str(proc), skip={11}) == {UID_A: [10], UID_B: [12]}


def test_default_node_root_is_slash_on_a_node():
    expected = "/host" if not os.path.isdir("/var/log/pods") and os.path.isdir("/host/var/log/pods") else "/"
    assert str(node.default_node_root()) == expected
