"""Moving images between registries: `copy` and `warm`."""
