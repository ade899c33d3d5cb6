"""The admin web UI at ``/ui``: server-rendered page shells, our own small script and CSS, no third-party
front-end code and no build step.

Why this stack: an operator's pages are tables, forms and a few live feeds. Each page is an HTML shell
rendered here (navigation, the CSRF token, the open-mode banner) and one small script of ours that reads
and changes everything through the admin API (``/admin/v1``) and the client APIs (``/v1``) — the same
calls the CLI makes, so the UI can do nothing the API cannot. ``pip install`` ships it (package data);
there is nothing to build, bundle or check against a build output, and no Node.js anywhere.

Sign-in: ``ui/session.py`` (cookie, CSRF, expiry in ``security/sessions.py``); pages: ``ui/pages.py``.
"""

from __future__ import annotations

from superollama.ui.routes import UiRoutes

__all__ = ["UiRoutes"]
