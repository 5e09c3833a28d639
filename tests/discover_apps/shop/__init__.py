"""An app with events, handlers and receivers modules, and subpackages (Django-style apps)."""
