"""Cluster definitions (local, ray up, KubeRay, SLURM) live beside this file."""
