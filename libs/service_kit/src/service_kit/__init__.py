"""Shared runtime for the blog platform's services (no service logic lives here)."""
