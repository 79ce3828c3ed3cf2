"""Which kernel headers bcc compiles the probes against.

bcc uses /lib/modules/$(uname -r)/build (+ /source) of the running kernel. Kernels without
headers (like this one) fall back to the distribution's headers (Debian linux-headers-*-<flavour>
plus its -common tree): the probes read tracepoint fields, whose layout bcc takes from the running
kernel's format files, and socket fields at offsets from the running kernel's BTF (btf.py), never a
header's struct layout, so another version's headers are safe for them. bcc takes one tree
through BCC_KERNEL_SOURCE, so the split Debian trees are joined into a private symlink tree; the
host's /lib/modules is never written.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ...errors import KernelProblem

USR_SRC = Path("/usr/src")
ENV = "BCC_KERNEL_SOURCE"


@dataclass
class HeaderSource:
    path: str            # what bcc compiles against
    kind: str            # "running-kernel", "fallback" or "env"
    note: str            # one line for stderr / meta.json header_source
    _tmp: str | None = None

    def cleanup(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def _arch_dir() -> str:
    m = platform.machine()
    return {"x86_64": "x86", "aarch64": "arm64"}.get(m, m)


def _version_key(path: Path) -> tuple:
    return tuple(int(x) for x in re.findall(r"\d+", path.name))


CACHE_DIRS = (Path("/run/sigtrace"), Path(tempfile.gettempdir()) / f"sigtrace-{os.getuid()}")


def _cache_dir() -> Path | None:
    """A private (0700, ours) directory for the joined tree, reused by later runs: a SIGKILLed
    recorder must not leave a temp tree behind each time."""
    for d in CACHE_DIRS:
        try:
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = d.lstat()
            if st.st_uid == os.getuid() and not (st.st_mode & 0o077) and d.is_dir() and not d.is_symlink():
                return d
        except OSError:
            continue
    return None


def _join_debian(flavour: Path, common: Path, arch: str) -> tuple[str, str | None]:
    """(path, temp dir to remove or None): a tree where bcc's relative -I paths (include/,
    arch/<arch>/include/...) find both halves of Debian's split headers."""
    cache = _cache_dir()
    final = cache / f"headers-{flavour.name}" if cache else None
    if final is not None and (final / "include" / "linux" / "kconfig.h").exists():
        return str(final), None
    tmp = tempfile.mkdtemp(prefix="sigtrace-headers-", dir=cache)
    root = Path(tmp)
    (root / "include").mkdir()
    (root / "arch" / arch / "include").mkdir(parents=True)
    for part in (common / "include", flavour / "include"):
        for entry in part.iterdir():
            link = root / "include" / entry.name
            if not link.exists():
                link.symlink_to(entry)
    for part in (common / "arch" / arch / "include", flavour / "arch" / arch / "include"):
        if part.is_dir():
            for entry in part.iterdir():
                link = root / "arch" / arch / "include" / entry.name
                if not link.exists():
                    link.symlink_to(entry)
    for name in (".config", "Makefile", "scripts"):
        if (flavour / name).exists():
            (root / name).symlink_to(flavour / name)
    if final is not None:
        try:
            os.rename(tmp, final)            # atomic: a concurrent recorder sees all or nothing
            return str(final), None
        except OSError:
            if (final / "include" / "linux" / "kconfig.h").exists():   # another one won the race
                shutil.rmtree(tmp, ignore_errors=True)
                return str(final), None
    return tmp, tmp


def find_headers(release: str | None = None, usr_src: Path = USR_SRC) -> HeaderSource:
    """Pick the header tree; program.py points bcc at it (BCC_KERNEL_SOURCE) while compiling."""
    release = release or os.uname().release
    if os.environ.get(ENV):
        path = os.environ[ENV]
        return HeaderSource(path, "env", f"kernel headers from {ENV}={path}")
    build = Path("/lib/modules") / release / "build"
    if (build / "include").is_dir() or (build / "Makefile").is_file():
        return HeaderSource(str(build), "running-kernel", f"kernel headers of the running kernel ({build})")
    arch = _arch_dir()
    candidates = []
    for flavour in usr_src.glob("linux-headers-*"):
        if flavour.name.endswith("-common") or not (flavour / "include" / "generated").is_dir():
            continue
        common = next(iter(sorted(usr_src.glob(re.sub(r"-[^-]+$", "", flavour.name) + "-common"))), None)
        if common is None:
            # a self-contained tree (other distributions)
            if (flavour / "include" / "linux" / "kconfig.h").is_file():
                candidates.append((flavour, None))
            continue
        candidates.append((flavour, common))
    if not candidates:
        raise KernelProblem(f"no kernel headers for {release}: neither /lib/modules/{release}/build nor "
                            f"{usr_src}/linux-headers-*; install linux-headers-amd64 (or your kernel's headers)")
    flavour, common = max(candidates, key=lambda c: _version_key(c[0]))
    if common is None:
        path, tmp = str(flavour), None
    else:
        path, tmp = _join_debian(flavour, common, arch)
    note = (f"no headers for kernel {release}: using {flavour.name} (no header struct layout used: "
            f"the running kernel's format files and BTF)")
    return HeaderSource(path, "fallback", note, tmp)
