"""A subpackage with nothing to discover."""
