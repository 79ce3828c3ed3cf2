"""sigtrace: explains why pods drop requests when they stop.

probes -> backends (bpf, strace) -> events (one schema, JSONL) -> correlate (per pod, pandas)
-> verdicts -> render (text, JSON, HTML, CSV).
"""
__version__ = "0.1.0"
