"""Export formats and the runtime backends that load them."""
