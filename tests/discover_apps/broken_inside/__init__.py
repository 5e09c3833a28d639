"""An app whose handlers module imports a module that does not exist: that is its failure,
not a missing ``handlers`` submodule."""
