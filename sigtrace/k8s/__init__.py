"""Kubernetes side of sigtrace: the API watcher of `sigtrace agent`.

translate.py turns pod and EndpointSlice objects (plain JSON dicts, exactly as the API
returns them) into pod_lifecycle events; watcher.py is a thin list+watch loop over the
official client that feeds it; client.py loads in-cluster or kubeconfig credentials.
"""
