"""Facts per pod from a recording's events: processes and their roles, signals, connections,
listeners, lifecycle, what cut the recording (PodContext, sigtrace.correlate.build.build_contexts).
Knows nothing of verdicts or rendering: sigtrace.verdicts asks these facts questions, and
sigtrace.report assembles facts and verdicts into reports."""
