"""Thin adapters from the wire (REST, gRPC) to the transport-neutral ``dataplane``."""
