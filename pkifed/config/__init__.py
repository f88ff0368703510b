"""The federation file's schema, loading and validation."""
