"""The strace backend: the same events as the bpf backend where eBPF is not allowed.

command.py   the strace command line and the permission checks before it runs
parser.py    strace output lines -> records (syscalls, received signals, exits)
translate.py records -> schema events; what strace cannot see is stated there
procs.py     /proc facts: thread groups, PID-namespace pids, pods, a target's container
backend.py   StraceBackend (the Backend protocol): attach, poll, rescan, stop
"""
