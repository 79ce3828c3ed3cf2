"""Tie processes to pods: cgroup path parsing (cgroup.py) and pid -> pod lookup (resolver.py)."""
