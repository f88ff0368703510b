"""The federation domain: hierarchy, certificates, bundles, state and reports."""
