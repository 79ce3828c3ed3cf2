"""Resets outside a stop: the node-level summary of connections pods reset while they were not
stopping (a pod that never stopped, or before its stop began). Those are real failures a client
saw, but no stop caused them, so they never reach a pod's stop stats or a verdict:

- keep-alive expiry at steady state: nginx closed an idle client connection (keepalive_timeout)
  and the client sent its next request on it; the closed socket (or its TIME_WAIT orphan) reset it;
- php-fpm recycling its children (pm.max_requests): a child exits after its last request, and
  nginx sends the next request on a FastCGI connection it keeps to that child (fastcgi_keep_conn).

The recorder streams a pod's TCP detail only once it stops, unless `record --tcp-detail always`:
this summary is where such a recording's steady-state resets go.
"""
from __future__ import annotations

from typing import Any

from .pod import PodContext
from .processes import FPM_CHILD


def resets_outside_stop(ctxs: dict[str, PodContext]) -> list[dict[str, Any]]:
    """One entry per pod with resets outside its stop, in pod uid order."""
    out = []
    for uid, ctx in ctxs.items():
        entry = pod_resets_outside_stop(ctx)
        if entry is not None:
            out.append(entry)
    return out


def pod_resets_outside_stop(ctx: PodContext) -> dict[str, Any] | None:
    """One pod's entry of resets_outside_stop, None when it has none."""
    # ended outside the stop: on a pod that never stopped, or before its stop began
    outside = ctx.conns.server_side().ended(before=ctx.stop_from)
    client = outside.serving().reset_by_pod()
    upstream = outside.upstream().reset()
    span = (client | upstream).reset_span()
    if span is None:
        return None
    recycled = [p for p in ctx.procs.values() if p.role == FPM_CHILD and p.exit_ts is not None
                and p.exit_code == 0 and not ctx.in_stop(p.exit_ts)
                and not any(s.target is p and s.sig not in ("SIGCHLD",) for s in ctx.signals)]
    n_client, n_up = len(client), len(upstream)
    n_ka, n_fcgi = len(client.reset_after_close()), len(upstream.reset_after_close())
    causes = []
    if n_ka:
        causes.append(f"{n_ka} on idle keep-alive connections the pod had closed (its keepalive_timeout) when the "
                      "client sent its next request")
    if n_fcgi:
        causes.append(f"{n_fcgi} FastCGI request(s) nginx sent on a connection php-fpm had closed")
    other = n_client + n_up - n_ka - n_fcgi
    if other:
        causes.append(f"{other} other reset(s)")
    if recycled:
        causes.append(f"meanwhile {len(recycled)} php-fpm child(ren) exited on their own, code 0 (pm.max_requests "
                      "recycling: a kept FastCGI connection to one is closed under nginx)")
    return {"pod_uid": ctx.pod_uid, "pod_name": ctx.pod_name, "namespace": ctx.namespace, "stopped": ctx.stopped,
            "client_resets": n_client, "keepalive_races": n_ka, "upstream_resets": n_up, "fastcgi_races": n_fcgi,
            "fpm_children_recycled": len(recycled), "first_ts": span[0], "last_ts": span[1],
            "causes": causes}
