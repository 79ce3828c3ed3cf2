"""The installed package (what the agent image gets) carries the probes and the manifests."""
import subprocess
import sys
import zipfile

from conftest import REPO


def test_wheel_contains_probes_manifests_and_every_subpackage(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(REPO)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("sigtrace-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "sigtrace/probes/sigtrace.bpf.c" in names
    assert "sigtrace/probes/sigtrace.h" in names
    assert "sigtrace/daemonset/base/daemonset.yaml" in names
    assert "sigtrace/daemonset/overlays/kernel-pre-5.8/kustomization.yaml" in names
    for module in (REPO / "sigtrace").rglob("*.py"):
        assert str(module.relative_to(REPO)) in names, module
