"""Route modules of the API, one per resource; `asrlib.api.app` mounts them under `/api`."""
