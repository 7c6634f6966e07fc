"""Queries right after importing psycopg (3, binary wheel: its bundled libpq is
loaded by the import): 20 statements of distinct texts, autocommit, then exit."""
import sys

import psycopg

with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    for n in range(1, 21):
        conn.execute(f"select {n} as q{n}")
