"""Admin API (and, later, the web UI's assets)."""

from superollama.admin.connections import ConnectionRoutes
from superollama.admin.jobs import JobRoutes
from superollama.admin.routes import AdminRoutes

__all__ = ["AdminRoutes", "ConnectionRoutes", "JobRoutes"]
