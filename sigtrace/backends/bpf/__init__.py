"""The eBPF backend (bcc, tracepoints only). bcc is imported lazily, in program.py."""
