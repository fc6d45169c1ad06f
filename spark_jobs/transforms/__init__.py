"""Pure DataFrame -> DataFrame transforms: no sessions, no paths, no writes."""
