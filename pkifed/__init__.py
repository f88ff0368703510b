"""pkifed: a multi-cloud PKI federation controller."""

__version__ = "0.1.0"
