"""Publish targets: places that receive bundles, chains and CRLs."""
