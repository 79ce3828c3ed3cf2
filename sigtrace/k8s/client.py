"""Credentials for the Kubernetes API: the service account inside a pod, a kubeconfig outside.

Only this module and watcher.py touch the `kubernetes` package's configuration; errors become
one-line ClusterProblem messages instead of the client's tracebacks.
"""
from __future__ import annotations

import os
import re

from ..errors import SigtraceError


class ClusterProblem(SigtraceError):
    """No cluster access: no credentials, unreachable API server, RBAC denied."""
    exit_code = 69   # EX_UNAVAILABLE


def in_cluster() -> bool:
    # the kubelet sets these in every pod; the token file is the service account's
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(
        "/var/run/secrets/kubernetes.io/serviceaccount/token")


def api_client(kubeconfig: str | None = None, context: str | None = None):
    """An ApiClient: in-cluster config when running in a pod and no kubeconfig was given."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        if kubeconfig is None and context is None and in_cluster():
            cfg = client.Configuration()
            config.load_incluster_config(client_configuration=cfg)
        else:
            cfg = client.Configuration()
            config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
    except (ConfigException, OSError, TypeError, ValueError) as exc:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise ClusterProblem(f"no Kubernetes credentials ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): "
                             f"run inside a pod with a service account, or pass --kubeconfig (tried {where})") from None
    cfg.retries = 0   # the watcher retries with its own backoff; urllib3's would hide outages
    return client.ApiClient(cfg)


def api_error(exc: Exception, what: str) -> ClusterProblem:
    """A user's one-shot API call that failed (the kubectl plugin's): one line, no retry promised."""
    from kubernetes.client.exceptions import ApiException
    if isinstance(exc, ApiException) and exc.status == 403:
        return ClusterProblem(f"{what}: forbidden (403): your user lacks the RBAC for it; see `kubectl sigtrace --help`")
    if isinstance(exc, ApiException) and exc.status:
        return ClusterProblem(f"{what}: the API server answered {exc.status} {exc.reason}")
    return ClusterProblem(f"{what}: cannot reach the API server ({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}); "
                          f"check --context/--kubeconfig")


def explain(exc: BaseException, what: str) -> str:
    """One line for an API failure of the agent's watcher: what, why, what to do."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        if exc.status == 403:
            return (f"{what}: RBAC denied (403): the service account may not list/watch it; "
                    f"apply daemonset/clusterrole.yaml (kubectl sigtrace deploy)")
        if exc.status == 401:
            return f"{what}: unauthorized (401): the credentials were rejected; check the token or kubeconfig"
        if exc.status == 0 or exc.status is None:
            return f"{what}: API request failed ({(exc.reason or '').splitlines()[0]}); retrying"
        if exc.status == 429:
            # API Priority and Fairness shedding load: its Retry-After is honoured (no seconds here:
            # the line must be the same on every retry to be logged once)
            return f"{what}: API server is overloaded (429 Too Many Requests); retrying after its Retry-After"
        return f"{what}: API server answered {exc.status} {exc.reason}; retrying with backoff"
    if type(exc).__name__ == "WatchError":
        return f"{what}: the API server ended the watch with an error ({exc}); retrying with backoff"
    if type(exc).__name__ == "Malformed":
        return f"{what}: the API server's list answer was unusable ({exc}); retrying with backoff"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "timed out" in text or "Timeout" in type(exc).__name__:
        return f"{what}: the API server did not answer in time; retrying with backoff"
    if type(exc).__name__ in ("ProtocolError", "ReadTimeoutError", "IncompleteRead"):
        return f"{what}: the connection broke mid-stream; reconnecting from the last resourceVersion"
    pool = getattr(exc, "pool", None)
    where = f" {pool.host}:{pool.port}" if pool is not None and getattr(pool, "host", None) else ""
    # the same line on every retry (no object addresses), so it is logged once
    return f"{what}: cannot reach the API server{where} ({_cause(text)}); retrying with backoff"


def _cause(text: str) -> str:
    """The root cause out of urllib3's nested wrapping, the same on every retry."""
    m = re.search(r"\[Errno -?\d+\] [^'\")\]]+", text)
    if m:
        return m.group(0).rstrip(" ,")
    m = re.search(r"(\w+Error)\((\d+), '([^']+)'\)", text)        # ConnectionResetError(104, '...')
    if m:
        return f"[Errno {m.group(2)}] {m.group(3)}"
    m = re.search(r"Caused by (\w+)\(", text)
    if m:
        return m.group(1)
    return re.sub(r" at 0x[0-9a-f]+", "", text)[:160]
