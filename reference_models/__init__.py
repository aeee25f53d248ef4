"""reference_models package."""

__all__: list[str] = []
