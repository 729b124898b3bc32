"""``optbridge.native``: fused native optimizers (CPU path and Triton kernels).

Installed as ``optbridge.native`` (package-dir mapping in pyproject.toml). The optimizer set is
tracked in its own issue; this package is importable with torch alone.
"""

__all__: list[str] = []
