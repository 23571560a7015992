"""The backup engine: planner and archiver (backup), restorer, checker (verify)."""
