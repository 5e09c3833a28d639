"""The version bounds pyproject.toml promises are the ones CI tests (`make test-lowest`)."""

from __future__ import annotations

from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).parent.parent


def _bounds(reqs: list[str]) -> dict[str, Version]:
    bounds = {}
    for raw in reqs:
        req = Requirement(raw)
        lows = [Version(spec.version) for spec in req.specifier if spec.operator == ">="]
        assert len(lows) == 1, f"{raw}: one >= lower bound expected"
        bounds[req.name] = lows[0]
    return bounds


def lower_bounds() -> dict[str, Version]:
    """The lower bounds of the dependencies and of the optional extra ``otel``."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return _bounds(project["dependencies"] + project["optional-dependencies"]["otel"])


def dev_bounds() -> dict[str, Version]:
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    return _bounds([raw.split("#", 1)[0] for raw in dev])


def pinned_lowest() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / ".ci" / "lowest-constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip()] = Version(version.strip())
    return pins


def test_every_dependency_is_tested_at_its_lower_bound():
    # Given pyproject's lower bounds and the versions `make test-lowest` pins
    # Then they name the same packages at the same versions; any other pin is a dev
    # dependency at its own lower bound (the OpenTelemetry SDK must match the API's version)
    pinned = pinned_lowest()
    bounds = lower_bounds()
    assert {name: pinned.get(name) for name in bounds} == bounds
    dev = dev_bounds()
    assert {name: dev.get(name) for name in pinned.keys() - bounds.keys()} == {
        name: pinned[name] for name in pinned.keys() - bounds.keys()
    }


def test_the_dev_extra_installs_the_otel_extra_at_its_lower_bound():
    # Given the otel extra (opentelemetry-api) and the dev extra the tests run with
    otel = _bounds(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["otel"])
    # Then the tests have the API at the same bound, and the SDK of that version
    assert {name: dev_bounds().get(name) for name in otel} == otel
    assert dev_bounds()["opentelemetry-sdk"] == otel["opentelemetry-api"]


def test_lower_bounds_exclude_versions_the_worker_cannot_run_on():
    # Given the lower bounds
    bounds = lower_bounds()
    # Then kombu has brpop_timeout and a configurable restore sweep (5.7; before it a dead
    # worker's message waited ~100 s), Celery accepts that kombu (5.6), and redis-py is
    # one kombu 5.7 accepts at run time (6.1)
    assert bounds["kombu"] >= Version("5.7")
    assert bounds["celery"] >= Version("5.6")
    assert bounds["redis"] >= Version("6.1")
