"""Connection arguments for Airflow's embedded SQLite metadata database.

The scheduler, DAG processor, API server, triggerer and CLI commands (`airflow backfill create`) all
write to one SQLite file. A writer waits for the others' write locks for sqlite3's `timeout`: the
default 5 s is shorter than a busy scheduler's transactions, and the CLI then fails with "database is
locked". Airflow reads these through AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS(_ASYNC), which the
Makefile and include/tools/airflow_stack.py set for SQLite only (PostgreSQL takes other arguments).
"""

CONNECT_ARGS = {"timeout": 60}
