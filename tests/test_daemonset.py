"""daemonset/: every manifest valid against the Kubernetes schemas (offline, kubernetes-validate),
least privilege asserted, and the agent Dockerfile checked by parsing it (no Docker engine here)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from sigtrace.k8s import manifests

kubernetes_validate = pytest.importorskip("kubernetes_validate")

REPO = Path(__file__).resolve().parent.parent
DS_DIR = REPO / "daemonset"
K8S_VERSION = "1.30.0"     # appArmorProfile needs >= 1.30; validated against the newest too
ALLOWED_CAPS = {"BPF", "PERFMON", "SYS_PTRACE"}      # each proven needed in tests/test_agent_caps.py


def all_manifest_files() -> list[Path]:
    # JSON patches (overlays/*/ lists of ops) are checked through the rendered objects instead
    return sorted(p for p in DS_DIR.rglob("*.yaml") if p.name != "kustomization.yaml"
                  and not isinstance(yaml.safe_load(p.read_text()), list))


@pytest.mark.parametrize("path", all_manifest_files(), ids=lambda p: str(p.relative_to(DS_DIR)))
@pytest.mark.parametrize("version", [K8S_VERSION, kubernetes_validate.latest_version()])
def test_each_file_is_valid_against_the_schema(path, version):
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("overlay", list(manifests.OVERLAYS))
def test_rendered_kustomizations_are_valid(overlay):
    objs = manifests.render(overlay)
    assert [o["kind"] for o in objs] == ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"]
    for o in objs:
        kubernetes_validate.validate(o, kubernetes_validate.latest_version(), strict=True)
        assert o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "sigtrace"
    # the kustomization's file list is complete: nothing on disk left out
    listed = set(yaml.safe_load((DS_DIR / "base" / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in (DS_DIR / "base").glob("*.yaml") if p.name != "kustomization.yaml"}


def agent_container(overlay: str = "default") -> tuple[dict, dict]:
    ds = next(o for o in manifests.render(overlay) if o["kind"] == "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    return pod, c


def test_daemonset_least_privilege():
    pod, c = agent_container()
    sc = c["securityContext"]
    assert sc["privileged"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == ALLOWED_CAPS
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert pod["hostPID"] is True and not pod.get("hostNetwork") and not pod.get("hostIPC")
    assert "securityContext" not in pod or not pod["securityContext"].get("sysctls")
    # requests and limits for both resources
    for kind in ("requests", "limits"):
        assert set(c["resources"][kind]) == {"cpu", "memory"}
    # tolerates every taint; node name from the downward API
    assert pod["tolerations"] == [{"operator": "Exists"}]
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert c["command"] == ["sigtrace", "agent"]


def test_host_paths_are_read_only_except_the_output():
    pod, c = agent_container()
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    host = {n: v["hostPath"]["path"] for n, v in volumes.items() if "hostPath" in v}
    assert set(host.values()) == {"/sys/kernel/tracing", "/lib/modules", "/usr/src", "/sys/fs/cgroup",
                                  "/var/lib/sigtrace"}
    for name, path in host.items():
        want_ro = path != "/var/lib/sigtrace"
        assert mounts[name].get("readOnly", False) is want_ro, f"{path} readOnly must be {want_ro}"
        # readOnly alone leaves submounts (a tracefs instance, cgroup controllers) writable
        assert (mounts[name].get("recursiveReadOnly") == "IfPossible") is want_ro, path
    assert not [v for v in volumes.values() if set(v) - {"name", "hostPath", "emptyDir"}]   # no other volume types
    assert c["args"] == ["--output", mounts["output"]["mountPath"]]


def test_every_capability_and_mount_has_a_why_comment():
    text = (DS_DIR / "base" / "daemonset.yaml").read_text()
    for cap in ALLOWED_CAPS:
        assert re.search(rf"# WHY {cap}:.*\n(\s*#.*\n)*\s*- {cap}\n", text), f"capability {cap} lacks a WHY comment"
    for path in ("tracefs", "/lib/modules", "cgroups", "hostPID"):
        assert f"# WHY {path}" in text


def test_commented_metrics_port_is_valid_and_matches_the_flag():
    """The commented-out metrics lines, uncommented, give a valid DaemonSet whose port is the one served."""
    text = (DS_DIR / "base" / "daemonset.yaml").read_text()
    block = re.search(r"\n(\s*)# args: (\[.*--metrics-address.*\])\n((?:\1#.*\n)+)", text)
    assert block, "the commented metrics args/ports block is missing"
    indent = block.group(1)
    uncommented = text.replace(block.group(0), "\n" + "".join(
        indent + line.strip()[2:] + "\n" for line in block.group(0).strip("\n").splitlines()))
    uncommented = re.sub(r"\n\s*args: \[\"--output\", \"/var/lib/sigtrace\"\]\n", "\n", uncommented, count=1)
    ds = yaml.safe_load(uncommented)
    kubernetes_validate.validate(ds, kubernetes_validate.latest_version(), strict=True)
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    flag = c["args"][c["args"].index("--metrics-address") + 1]
    assert c["ports"] == [{"name": "metrics", "containerPort": int(flag.rsplit(":", 1)[1]), "protocol": "TCP"}]
    assert "hostPort" not in c["ports"][0]                      # pod network only


def test_rbac_is_read_only_pods_and_endpointslices_exactly():
    objs = {o["kind"]: o for o in manifests.render()}
    rules = objs["ClusterRole"]["rules"]
    assert sorted((tuple(r["apiGroups"]), tuple(r["resources"]), tuple(sorted(r["verbs"]))) for r in rules) == [
        (("",), ("pods",), ("get", "list", "watch")),
        (("discovery.k8s.io",), ("endpointslices",), ("get", "list", "watch")),
    ]
    assert not [r for r in rules if set(r) - {"apiGroups", "resources", "verbs"}]    # no resourceNames/nonResourceURLs
    text = yaml.safe_dump(rules)
    assert "*" not in text and "secrets" not in text
    b = objs["ClusterRoleBinding"]
    assert b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": objs["ClusterRole"]["metadata"]["name"]}
    assert b["subjects"] == [{"kind": "ServiceAccount", "name": objs["ServiceAccount"]["metadata"]["name"],
                              "namespace": objs["ServiceAccount"]["metadata"]["namespace"]}]
    assert objs["DaemonSet"]["spec"]["template"]["spec"]["serviceAccountName"] == objs["ServiceAccount"]["metadata"]["name"]


def test_control_plane_nodes_only_when_asked():
    pod, _ = agent_container()
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term == {"matchExpressions": [{"key": "node-role.kubernetes.io/control-plane", "operator": "DoesNotExist"}]}
    cp, c_cp = agent_container("with-control-plane")
    assert "affinity" not in cp and {k: v for k, v in pod.items() if k != "affinity"} == cp


def test_pre_5_11_overlay_adds_sys_resource_and_nothing_else():
    _, base = agent_container()
    _, old = agent_container("kernel-pre-5.11")
    assert set(old["securityContext"]["capabilities"]["add"]) == ALLOWED_CAPS | {"SYS_RESOURCE"}
    assert {**old, "securityContext": None} == {**base, "securityContext": None}


def test_pre_5_8_overlay_adds_sys_admin_and_nothing_else():
    _, base = agent_container()
    _, old = agent_container("kernel-pre-5.8")
    assert set(old["securityContext"]["capabilities"]["add"]) == ALLOWED_CAPS | {"SYS_RESOURCE", "SYS_ADMIN"}
    # the API rejects allowPrivilegeEscalation=false with CAP_SYS_ADMIN
    assert old["securityContext"]["allowPrivilegeEscalation"] is True
    strip = lambda c: {**c, "securityContext": {k: v for k, v in c["securityContext"].items()
                                                if k not in ("capabilities", "allowPrivilegeEscalation")}}
    assert strip(old) == strip(base)
    assert old["securityContext"]["privileged"] is False


def test_namespace_and_image_overrides_for_deploy():
    objs = manifests.render(namespace="observability", image="registry.example/sigtrace-agent:9")
    byk = {o["kind"]: o for o in objs}
    assert byk["Namespace"]["metadata"]["name"] == "observability"
    assert byk["DaemonSet"]["metadata"]["namespace"] == "observability"
    assert byk["ClusterRoleBinding"]["subjects"][0]["namespace"] == "observability"
    assert byk["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/sigtrace-agent:9"


# ---- Dockerfile: parsed, not built (no Docker engine on this machine) ------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DS_DIR / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)          # join continuation lines
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile_base_packages_probes_and_entrypoint():
    ins = dockerfile_instructions()
    assert ins[0] == ("FROM", "debian:bookworm-slim")
    runs = " ".join(r for op, r in ins if op == "RUN")
    apt = re.search(r"apt-get install (.*?)(&&|$)", runs).group(1).split()
    assert {"python3-bpfcc", "strace", "linux-headers-amd64", "python3-venv"} <= set(apt)
    assert "--system-site-packages" in runs                       # the venv sees Debian's bcc
    copies = [shlex.split(r) for op, r in ins if op == "COPY"]
    assert ["probes/", "probes/"] in copies and ["sigtrace/", "sigtrace/"] in copies
    assert ["pyproject.toml", "setup.py", "README.md", "./"] in copies   # setup.py lists the mapped packages
    assert "r.files('sigtrace.probes')" in runs                  # the build fails without the probes
    entry = next(r for op, r in ins if op == "ENTRYPOINT")
    assert yaml.safe_load(entry) == ["sigtrace", "agent"]
    _, c = agent_container()
    assert c["command"] == yaml.safe_load(entry)
    # every path the Dockerfile COPYs exists in the repository
    for *srcs, _dst in copies:
        for src in srcs:
            assert (REPO / src).exists(), src
    # the fallback headers the Dockerfile moves are where `sigtrace agent` looks
    env = next(r for op, r in ins if op == "ENV")
    assert "SIGTRACE_FALLBACK_USR_SRC=/opt/sigtrace/fallback-usr-src" in env
    assert "mv /usr/src /opt/sigtrace/fallback-usr-src" in runs


@pytest.mark.parametrize("overlay", list(manifests.OVERLAYS))
def test_kubectl_kustomize_renders_the_same_objects(overlay):
    """What the plugin deploys (manifests.render) is what `kubectl apply -k` would apply."""
    import shutil
    import subprocess
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (it is not a Debian 12 package); manifests.render is checked above")
    p = subprocess.run(["kubectl", "kustomize", str(DS_DIR / manifests.OVERLAYS[overlay])],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    key = lambda o: (o["kind"], o["metadata"]["name"])
    assert sorted(yaml.safe_load_all(p.stdout), key=key) == sorted(manifests.render(overlay), key=key)
