"""What the node says about processes and pods: kubelet cgroup paths (cgroup.py), sockets and listeners
(sockets.py), our own capabilities (caps.py), pods found by name or UID on a node (node.py)."""
