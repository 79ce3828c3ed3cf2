"""Vocabulary of pod_lifecycle events: facts from outside the kernel (the lab driver, the
Kubernetes API watcher). The report uses them when present and never needs them.

Every pod_lifecycle event carries pod_uid; `detail` is a JSON object string.

What the Kubernetes API watcher (sigtrace.k8s, `sigtrace agent`) emits, exactly:

pod_seen        ts = when the agent saw the pod (or a change of the fields below); pod_name, namespace.
                Emitted again whenever containers/grace/prestop/stop_signal change (e.g. container
                IDs appear once the kubelet started them, or a container restarts): the LAST pod_seen
                of a pod_uid is the most complete. detail:
                  "containers": {container id: container name} from status.{init,,ephemeral}
                      ContainerStatuses[].containerID with the "containerd://" (or cri-o://, docker://)
                      prefix stripped: the same id as the container_id of kernel events;
                  "missing_container_ids": [names of spec.containers without an ID yet] (non-empty =
                      the report cannot name those containers: it should say so);
                  "grace_period_s": spec.terminationGracePeriodSeconds (30, the API default, if unset);
                  "prestop": {container name: handler as one line}: the exec command shell-quoted
                      ("nginx -s quit"), "httpGet http://:8080/drain", "sleep 5s", "tcpSocket :80";
                  "stop_signal": {container name: "SIGQUIT"} from spec lifecycle.stopSignal, else the
                      effective one the kubelet reports in containerStatuses[].stopSignal; a container
                      absent here uses its image's STOPSIGNAL (unknown to the API: SIGTERM by default);
                  "node", "phase", "pod_ip", "labels".
pod_deleted     once per pod, when metadata.deletionTimestamp first appears. ts = deletionTimestamp -
                deletionGracePeriodSeconds = when the delete was requested. deletionTimestamp is
                serialized in whole seconds, so the true request time lies in [ts, ts + 1).
                detail: "deletion_timestamp" (RFC 3339 as the API gave it), "deletion_ts" (epoch s:
                when the kubelet will SIGKILL), "grace_period_s" (deletionGracePeriodSeconds: the
                grace this deletion really got, which may differ from the spec), "observed_ts" (epoch s,
                ms precision: when the agent saw it; an upper bound for the request time).
pod_removed     ts = when the pod object left the API (watch DELETED, or missing from a relist with
                detail "via": "relist"): the kubelet confirmed all containers are gone.
endpoints_not_ready / endpoints_terminating / endpoints_removed
                one event per EndpointSlice (= per Service) that has an endpoint for the pod; the
                earliest ts over a pod's slices is when the first Service stopped sending it traffic.
                ts = when the agent received the EndpointSlice update (ms precision). The API keeps
                no per-endpoint time, and the agent watches like kube-proxy on the same node does,
                so ts is about when this node's kube-proxy learned it; other proxies and cloud load
                balancers may learn later. detail: "slice" (ns/name), "service", "ports",
                "addresses", "ready", "serving", "terminating", "trigger_time" (the controller's
                endpoints.kubernetes.io/last-change-trigger-time annotation, RFC 3339, when known),
                "via": "watch" | "relist" (after a missed stretch: the change happened at or before
                ts), "first_seen": true when the agent had no earlier state of that endpoint.
                not_ready: ready went true -> false (or first seen not ready while terminating);
                a pod that is not ready while starting up does NOT produce it.
                terminating: terminating became true. removed: the endpoint left the slice, or the
                slice was deleted ("slice_deleted": true).
For endpoint-race: listener close (tcp_state LISTEN -> CLOSE) minus min(ts of endpoints_not_ready,
endpoints_terminating, endpoints_removed) < 0 means the listener closed before the endpoint update;
pod_deleted ts -> that endpoint update is the propagation delay seen by this node.
"""
from __future__ import annotations

import json
from typing import Any

POD_SEEN = "pod_seen"                        # pod_name, namespace; detail: {"containers": {id: name},
                                             #   "grace_period_s", "prestop": {name: cmd}, "stop_signal": {name: SIG},
                                             #   "owner": {"kind", "name"} (ownerReferences' controller),
                                             #   "disruption": DisruptionTarget condition's reason, when set}
POD_DELETED = "pod_deleted"                  # ts = deletionTimestamp - grace; detail: {"grace_period_s",
                                             #   "owner", "disruption"} (the report's trigger)
ENDPOINTS_NOT_READY = "endpoints_not_ready"  # an EndpointSlice marked the pod's endpoint ready=false
ENDPOINTS_TERMINATING = "endpoints_terminating"
ENDPOINTS_REMOVED = "endpoints_removed"
TRAFFIC_STOPPED = "traffic_stopped"          # lab: the load balancer stopped sending new requests
POD_REMOVED = "pod_removed"                  # the pod object left the API (all containers gone)



def detail_object(detail: Any) -> dict[str, Any]:
    """A pod_lifecycle event's detail as a dict; {} when it is none, not JSON, not an object, or
    nested past the parser's stack (a recording from elsewhere may hold any text there)."""
    if not isinstance(detail, str):
        return {}
    try:
        obj = json.loads(detail)
    except (ValueError, RecursionError):
        return {}
    return obj if isinstance(obj, dict) else {}
