"""The audit trail: one append-only table written by every domain through ``audit.services.record``."""
