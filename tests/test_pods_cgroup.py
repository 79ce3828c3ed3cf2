"""kubelet cgroup paths -> (pod_uid, container_id), for every layout kubelet and the runtimes write."""
import pytest

from sigtrace.pods.cgroup import NO_POD, PodRef, parse_cgroup_path, parse_proc_cgroup

UID = "3f1c2b9e-8d7a-4c1e-9b2f-0a1b2c3d4e5f"
CID = "a" * 64


@pytest.mark.parametrize("path", [
    f"/kubepods/pod{UID}/{CID}",                                   # guaranteed QoS: no qos level
    f"/kubepods/burstable/pod{UID}/{CID}",
    f"/kubepods/besteffort/pod{UID}/{CID}",
    f"/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/cri-containerd-{CID}.scope",
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice/cri-containerd-{CID}.scope",
    f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID.replace('-', '_')}.slice/crio-{CID}.scope",
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice/docker-{CID}.scope",
    # nested (kind, a runtime in a container): the kubelet part is searched, not anchored
    f"/system.slice/docker-{'b' * 64}.scope/kubelet.slice/kubepods/burstable/pod{UID}/{CID}",
])
def test_container_paths_of_both_layouts(path):
    assert parse_cgroup_path(path) == PodRef(UID, CID)


def test_pod_level_cgroup_has_no_container():
    assert parse_cgroup_path(f"/kubepods/burstable/pod{UID}") == PodRef(UID, None)
    assert parse_cgroup_path(f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice") \
        == PodRef(UID, None)


@pytest.mark.parametrize("path", ["/", "/user.slice/user-0.slice/session-1.scope", "/system.slice/containerd.service",
                                  "/kubepods/burstable", "/kubepods.slice/kubepods-burstable.slice",
                                  f"/kubepods/burstable/podnot-a-uid/{CID}"])
def test_non_pod_paths(path):
    assert parse_cgroup_path(path) == NO_POD


def test_proc_cgroup_v2_only():
    assert parse_proc_cgroup(f"0::/kubepods/besteffort/pod{UID}/{CID}\n") == PodRef(UID, CID)


def test_proc_cgroup_v1_hybrid_prefers_container_over_pod_level():
    # some v1 controllers may still show the pod-level cgroup (e.g. while a container is being set up)
    text = (f"12:pids:/kubepods/burstable/pod{UID}\n"
            f"11:memory:/kubepods/burstable/pod{UID}/{CID}\n"
            f"1:name=systemd:/kubepods/burstable/pod{UID}/{CID}\n"
            f"0::/kubepods/burstable/pod{UID}/{CID}\n")
    assert parse_proc_cgroup(text) == PodRef(UID, CID)


def test_proc_cgroup_outside_pods_and_garbage():
    assert parse_proc_cgroup("0::/user.slice\n") == NO_POD
    assert parse_proc_cgroup("not a cgroup file") == NO_POD
    assert parse_proc_cgroup("") == NO_POD
