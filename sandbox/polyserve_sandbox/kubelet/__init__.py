"""Pods as processes: the sandbox's kubelet and container runtime."""
