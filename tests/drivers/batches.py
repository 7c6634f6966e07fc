"""Python batches, their statements sent without a Sync between them:
   batches.py asyncpg DSN   asyncpg executemany of 5 rows (ids 201-205)
   batches.py psycopg DSN   psycopg 3 cursor.executemany of 50 rows (ids 301-350), in
                            pipeline mode, in one transaction
Prints "done"."""
import asyncio
import sys


async def with_asyncpg(dsn):
    import asyncpg

    conn = await asyncpg.connect(dsn)
    await conn.executemany("insert into items (id, v) values ($1, $2)", [(i, f"item {i}") for i in range(201, 206)])
    await conn.close()


def with_psycopg(dsn):
    import psycopg

    with psycopg.connect(dsn) as conn:
        with conn.cursor() as cur:
            cur.executemany("insert into items (id, v) values (%s, %s)", [(i, f"item {i}") for i in range(301, 351)])
        conn.commit()


if __name__ == "__main__":
    driver, dsn = sys.argv[1], sys.argv[2]
    if driver == "asyncpg":
        asyncio.run(with_asyncpg(dsn))
    else:
        with_psycopg(dsn)
    print("done")
