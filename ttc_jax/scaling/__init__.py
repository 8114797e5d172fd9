"""Compute-optimal scaling."""
