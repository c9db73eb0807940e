"""demoworld package."""
