"""The agent's Kubernetes manifests, installed as package data (sigtrace.daemonset) so that
`kubectl sigtrace deploy` finds them in an installed package as well as in the repository."""
