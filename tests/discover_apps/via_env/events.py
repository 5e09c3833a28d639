from earnevents import define_event

define_event("via_env.defined")
