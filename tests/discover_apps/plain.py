"""A plain module (not a package) listed for autodiscovery: imported, nothing to discover."""

from discover_apps import IMPORTED

IMPORTED.append(__name__)
