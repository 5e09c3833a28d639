"""Small packages for the autodiscovery tests (EARNEVENTS_AUTODISCOVER=discover_apps.shop, ...).

Each module records that it was imported in ``IMPORTED``, so a test can see what was
discovered and in which order.
"""

IMPORTED: list[str] = []
