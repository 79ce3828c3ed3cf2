"""Vocabulary of pod_lifecycle events: facts from outside the kernel (the lab driver, the
Kubernetes API watcher). The report uses them when present and never needs them.

Every pod_lifecycle event carries pod_uid; `detail` is a JSON object string.
"""
POD_SEEN = "pod_seen"                        # pod_name, namespace; detail: {"containers": {id: name},
                                             #   "grace_period_s", "prestop": {name: cmd}, "stop_signal": {name: SIG}}
POD_DELETED = "pod_deleted"                  # ts = deletionTimestamp - grace; detail: {"grace_period_s"}
ENDPOINTS_NOT_READY = "endpoints_not_ready"  # an EndpointSlice marked the pod's endpoint ready=false
ENDPOINTS_TERMINATING = "endpoints_terminating"
ENDPOINTS_REMOVED = "endpoints_removed"
TRAFFIC_STOPPED = "traffic_stopped"          # lab: the load balancer stopped sending new requests

EVENTS = (POD_SEEN, POD_DELETED, ENDPOINTS_NOT_READY, ENDPOINTS_TERMINATING, ENDPOINTS_REMOVED, TRAFFIC_STOPPED)
