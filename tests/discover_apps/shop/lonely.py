"""A plain module of the app: not a subpackage, not discovered."""

from discover_apps import IMPORTED

IMPORTED.append(__name__)
