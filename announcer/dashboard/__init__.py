"""The operator's console: server-rendered pages at `/`, signed in with the API token (design.md, "The
operator's console"). `setup(app)` is the one call app.py makes; the pages are the modules of
announcer/dashboard/pages/, each with a `routes = Routes()` table (routes.py)."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from aiohttp import web

from announcer.dashboard import pages
from announcer.dashboard.errors import html_errors
from announcer.dashboard.routes import Routes
from announcer.dashboard.services import SERVICES, Services
from announcer.dashboard.views import VIEWS, make_environment

__all__ = ["SERVICES", "Services", "setup"]

STATIC_DIR = Path(__file__).resolve().parent / "static"


def setup(app: web.Application) -> None:
    """Register the dashboard on `app` (before it starts): its pages, its static files, and the
    middleware that answers a browser's errors outside the API as pages. `app[SERVICES]` is set by the
    app's wiring once the stores are open."""
    app[VIEWS] = make_environment()
    app.middlewares.insert(0, html_errors)
    app.router.add_static("/static/", STATIC_DIR, name="static", append_version=True)
    for info in sorted(pkgutil.iter_modules(pages.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{pages.__name__}.{info.name}")
        routes = getattr(module, "routes", None)
        if isinstance(routes, Routes):
            routes.register(app)
