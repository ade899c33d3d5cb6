"""Wire formats at the edges: request checks and pure converters between protocols and core types."""
