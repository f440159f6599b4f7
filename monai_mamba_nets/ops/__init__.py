"""Selective-scan op and its backends."""

from .reference import selective_scan_ref
from .selective_scan import BACKEND_ENV, BACKENDS, available_backends, resolve_backend, selective_scan

__all__ = ["selective_scan", "selective_scan_ref", "available_backends", "resolve_backend", "BACKEND_ENV", "BACKENDS"]
