"""Sources of model files: the ``Source`` seam, its plan types and the built-in implementations."""

from superollama.store.sources.base import Source, SourceFile, SourcePlan, split_scheme
from superollama.store.sources.file import FileSource

__all__ = ["FileSource", "Source", "SourceFile", "SourcePlan", "split_scheme"]
