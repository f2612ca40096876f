"""Ray at the edges: actors that wrap the plain trainers, and the launcher that places them."""
