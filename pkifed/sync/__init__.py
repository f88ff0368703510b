"""Reconciliation, the command line and the daemon."""
