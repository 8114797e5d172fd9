"""Verifiable tasks for test-time compute: problems, verifiers, step labels."""
