"""Print the dev requirements `make test-lowest` installs beside the lowest versions.

nx-27017 (the MongoDB stand-in) needs a newer PyMongo than earnevents' lowest: it runs as
a server process from the main venv instead. The linters are not needed there.
"""

import tomllib

with open("pyproject.toml", "rb") as fh:
    dev = tomllib.load(fh)["project"]["optional-dependencies"]["dev"]
print("\n".join(req for req in dev if not req.startswith(("nx-27017", "mypy", "ruff"))))
