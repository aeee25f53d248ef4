"""parametrization package."""

__all__: list[str] = []
