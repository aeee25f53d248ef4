"""optimizers package."""

__all__: list[str] = []
