"""Workshop tooling: find the images a workshop uses (`lint`) and pin their tags (`pin`)."""
