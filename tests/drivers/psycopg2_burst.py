"""Queries right after importing psycopg2 (psycopg2-binary: its bundled libpq is
loaded by the import): 20 statements of distinct texts, autocommit, then exit."""
import sys

import psycopg2

conn = psycopg2.connect(sys.argv[1])
conn.autocommit = True
cur = conn.cursor()
for n in range(1, 21):
    cur.execute(f"select {n} as q{n}")
conn.close()
