"""Apply and remove the agents' objects (manifests.render) like `kubectl apply` / `kubectl delete`:
create or replace each object, namespaced where it must be; API failures become one line."""
from __future__ import annotations

from typing import Any, Callable

from ..errors import SigtraceError
from .client import api_error

# kind -> (API group, method suffix, namespaced)
_KINDS = {
    "Namespace": ("CoreV1Api", "namespace", False),
    "ServiceAccount": ("CoreV1Api", "namespaced_service_account", True),
    "ClusterRole": ("RbacAuthorizationV1Api", "cluster_role", False),
    "ClusterRoleBinding": ("RbacAuthorizationV1Api", "cluster_role_binding", False),
    "DaemonSet": ("AppsV1Api", "namespaced_daemon_set", True),
}


def _ops(api: Any, obj: dict) -> tuple[Callable[[], Any], ...]:
    """(read, create, replace, delete) for one object, namespaced where it must be."""
    from kubernetes import client
    group_name, suffix, namespaced = _KINDS[obj["kind"]]
    group = getattr(client, group_name)(api)
    name, ns = obj["metadata"]["name"], obj["metadata"].get("namespace")
    args = (name, ns) if namespaced else (name,)
    cargs = (ns,) if namespaced else ()
    return (lambda: getattr(group, f"read_{suffix}")(*args),
            lambda: getattr(group, f"create_{suffix}")(*cargs, obj),
            lambda: getattr(group, f"replace_{suffix}")(*args, obj),
            lambda: getattr(group, f"delete_{suffix}")(*args))


def _what(obj: dict) -> str:
    return f"{obj['kind'].lower()}/{obj['metadata']['name']}"


def deploy_objects(api: Any, objs: list[dict]) -> list[str]:
    """Create or replace each object; returns 'kind/name created|configured' lines like kubectl apply."""
    from kubernetes.client.exceptions import ApiException
    done = []
    for obj in objs:
        read, create, _, _ = _ops(api, obj)
        what = _what(obj)
        try:
            try:
                current = read()
            except ApiException as exc:
                if exc.status != 404:
                    raise
                create()
                done.append(f"{what} created")
                continue
            obj = dict(obj, metadata={**obj["metadata"], "resourceVersion": current.metadata.resource_version})
            _ops(api, obj)[2]()
            done.append(f"{what} configured")
        except SigtraceError:
            raise
        except Exception as exc:  # noqa: BLE001 - ApiException and connection errors become one line
            raise api_error(exc, f"deploy {what}") from None
    return done


def undeploy_objects(api: Any, objs: list[dict]) -> list[str]:
    """Delete each object, last first; returns 'kind/name deleted|not found' lines."""
    from kubernetes.client.exceptions import ApiException
    done = []
    for obj in reversed(objs):
        what = _what(obj)
        try:
            _ops(api, obj)[3]()
            done.append(f"{what} deleted")
        except ApiException as exc:
            if exc.status != 404:
                raise api_error(exc, f"undeploy {what}") from None
            done.append(f"{what} not found")
        except Exception as exc:  # noqa: BLE001 - connection errors become one line
            raise api_error(exc, f"undeploy {what}") from None
    return done
