"""Polyserve worker: the Open Inference Protocol server that runs in every serving pod."""

__version__ = "0.1.0"
