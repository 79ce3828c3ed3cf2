"""`sigtrace lab`: reproduce a pod's shutdown locally with real runc containers.

pod.py runs the pod (kubelet + containerd's stop sequence), configs.py makes nginx/php-fpm
containers, load.py drives HTTP load from inside the pod's network namespace.
"""
