"""Local evaluate metric module (see its script beside this file)."""
