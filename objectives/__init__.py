"""objectives package."""
