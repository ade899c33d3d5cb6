"""Super Ollama: a model gateway that provisions, manages and serves models behind the OpenAI API."""

__version__ = "0.1.0"
__all__ = ["__version__"]
