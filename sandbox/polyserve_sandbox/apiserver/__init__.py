"""The emulated Kubernetes API server: an in-memory object store and its HTTP front."""
