raise RuntimeError("broken.events cannot be imported (on purpose)")
