"""Cluster definitions: local, `ray up` on AWS and GCP, KubeRay, SLURM (see clusters/README.md).

``python -m clusters.validate [PATH ...]`` checks them, and edited copies, offline.
"""
