"""clipping modules."""

__all__: list[str] = []
