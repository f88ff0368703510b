"""Key providers and publish targets: everything that talks to a key home or a store."""
