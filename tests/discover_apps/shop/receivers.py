from discover_apps import IMPORTED

IMPORTED.append(__name__)
