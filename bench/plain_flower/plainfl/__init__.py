"""Plain Flower baseline app (no privfl): see ../pyproject.toml."""
