"""The agent's endpoints, one module per resource. ``agent/app.py`` registers them, in the order docs/openapi.json
lists them."""
