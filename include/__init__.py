"""Code shared by the DAGs, the Spark jobs and the tests: configuration, sources, landing-zone tools."""
