"""momentum modules."""

__all__: list[str] = []
