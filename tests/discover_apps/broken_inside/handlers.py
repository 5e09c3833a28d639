import discover_apps_no_such_module  # noqa: F401
