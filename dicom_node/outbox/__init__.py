"""Persistent outbox: one row per (instance, destination) until delivered, and its C-STORE sender."""
