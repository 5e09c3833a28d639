"""An app with a handler subscribed to a name no define_event defines (strict mode refuses it)."""
