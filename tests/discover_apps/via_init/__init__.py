"""Discovered by init(autodiscover=[...]) in the tests."""
