"""Data plane: HTTP routes for /v1/* (and /api/* later), the relay and error rendering."""

from superollama.gateway.errors import error_middleware, error_response
from superollama.gateway.openai_routes import OpenAIRoutes, read_json
from superollama.gateway.relay import Relay

__all__ = ["OpenAIRoutes", "Relay", "error_middleware", "error_response", "read_json"]
