"""The workbench's HTTP and WebSocket API (FastAPI), served with `uvicorn asrlib.api.app:app`."""
