"""Process-level concerns: configuration, the one place that wires dependencies, embedded services."""
