"""Running commands in a pod's network namespace."""
from __future__ import annotations

from pathlib import Path

NETNS_DIR = Path("/run/netns")       # where `ip netns add` puts them


def in_netns(netns: str, argv: list[str]) -> list[str]:
    """argv run inside a pod's network namespace. nsenter joins only the network namespace;
    `ip netns exec` also remounts / and /sys, which fails where / is no mount point (a chroot)."""
    return ["nsenter", f"--net={NETNS_DIR / netns}", "--", *argv]
