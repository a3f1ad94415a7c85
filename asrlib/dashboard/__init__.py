"""The Voila dashboard of the workbench: training, inference, realtime, models, checkpoints, datasets.

    from asrlib.dashboard import build_app
    build_app()  # the last expression of a cell displays the page

The dashboard is a client of the API (BACKEND_HOST / BACKEND_PORT, default 127.0.0.1:58081), so
closing the page never affects a training run.
"""

from asrlib.dashboard.app import DashboardApp, build_app

__all__ = ["DashboardApp", "build_app"]
