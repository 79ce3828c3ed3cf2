"""What the node says about processes and pods: everything read from /proc (proc.py), kubelet cgroup
paths (cgroup.py), sockets a process holds (sockets.py), our own capabilities (caps.py), pods found by
name or UID on a node (node.py)."""
