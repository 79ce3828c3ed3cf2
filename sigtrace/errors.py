"""One error hierarchy, mapped to exit codes in one place (cli.main).

Every user-facing failure is a SigtraceError whose message is one line: what went
wrong, why, and what to do. The CLI prints it to stderr without a traceback.
"""
from __future__ import annotations


class SigtraceError(Exception):
    exit_code = 1


class UsageProblem(SigtraceError):
    """Bad input from the user (a dead --pid, a bad file): click's convention, exit 2."""
    exit_code = 2


class PermissionProblem(SigtraceError):
    """Missing privileges: root, CAP_BPF/CAP_PERFMON, ptrace."""
    exit_code = 77


class KernelProblem(SigtraceError):
    """The kernel cannot do what is needed: no BPF, no tracefs, no headers, a tracepoint without a field."""
    exit_code = 3


class OutputError(SigtraceError):
    exit_code = 73


class DataError(SigtraceError):
    """A recording or export that cannot be used at all (no events, not CSV...)."""
    exit_code = 2


class LabError(SigtraceError):
    """sigtrace lab could not run its pod: missing nginx/php-fpm/runc, bad config, port in use."""
    exit_code = 1
