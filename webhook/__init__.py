"""Portcullis: admission and runtime security for container and GPU workloads."""

__version__ = "0.1.0"
