"""`vla_stress`: the reliability benchmark (the node under load, signals and time jumps)."""
