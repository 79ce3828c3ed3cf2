# Metadata lives in pyproject.toml. This file only lists the packages, because two of them
# (sigtrace.probes from probes/, sigtrace.daemonset from daemonset/) live outside sigtrace/
# by the repository's layout, and setuptools' find cannot be combined with such mappings.
from setuptools import find_namespace_packages, setup

setup(packages=find_namespace_packages(include=["sigtrace", "sigtrace.*"]) + ["sigtrace.probes", "sigtrace.daemonset"])
