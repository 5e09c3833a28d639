"""An app whose events module exists and fails to import: it must stop a worker at start."""
