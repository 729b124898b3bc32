"""weight_decay modules."""

__all__: list[str] = []
