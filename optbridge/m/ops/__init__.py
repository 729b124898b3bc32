"""ops modules."""

__all__: list[str] = []
