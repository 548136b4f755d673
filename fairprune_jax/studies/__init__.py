"""The study layer: the shared spine and the config schemas of both studies."""
