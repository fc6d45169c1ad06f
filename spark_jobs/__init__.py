"""The Spark jobs, one entry file per medallion layer; pure transforms live in `transforms`."""
