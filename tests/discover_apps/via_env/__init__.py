"""Discovered through EARNEVENTS_AUTODISCOVER by init() in the tests."""
