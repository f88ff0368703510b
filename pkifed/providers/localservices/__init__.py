"""Local stand-ins for cloud key services, for tests and for trying pkifed offline.

Each one speaks the service's wire protocol closely enough that the real SDK
client talks to it unchanged, and enforces the service's documented rules.
They listen on loopback addresses only.
"""
