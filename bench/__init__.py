"""sigtrace benchmarks: `make bench` (python -m bench) measures what recording costs a busy pod,
how many events per second the recorder takes without loss, its startup, and how fast the
report/analyze path is; it writes docs/benchmarks.md and docs/benchmarks.json."""
