"""An ORM's lazy loading (SQLAlchemy 2 on psycopg2) for dbtel's N+1 test
(tests/tests/detectors.rs). Prints its PID, waits for "go", then in order:
1. one transaction listing 20 authors and touching each one's books: a lazy
   load per author (the N+1 dbtel must report);
2. the same with eager loading (selectinload): two statements, no N+1;
3. a batch job inserting 200 rows one statement at a time: writes, quiet;
4. 50 autocommit point lookups without a listing: quiet.
Prints "done".
"""
import os
import sys

import psycopg2

from sqlalchemy import ForeignKey, create_engine, insert, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, selectinload

dsn = sys.argv[1]


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    books: Mapped[list["Book"]] = relationship(back_populates="author", lazy="select")


class Book(Base):
    __tablename__ = "books"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"))
    title: Mapped[str]
    author: Mapped[Author] = relationship(back_populates="books")


engine = create_engine("postgresql+psycopg2://", creator=lambda: psycopg2.connect(dsn), pool_size=1)
Base.metadata.drop_all(engine)
Base.metadata.create_all(engine)
with Session(engine) as s:
    for i in range(20):
        s.add(Author(id=i + 1, name="author %d" % i, books=[Book(title="b%d" % i)]))
    s.commit()
with engine.connect() as c:
    c.execute(text("select 1"))
print(os.getpid(), flush=True)
sys.stdin.readline()

with Session(engine) as s:
    titles = sum(len(a.books) for a in s.scalars(select(Author)).all())
    s.commit()
assert titles == 20, titles

with Session(engine) as s:
    authors = s.scalars(select(Author).options(selectinload(Author.books))).all()
    assert sum(len(a.books) for a in authors) == 20
    s.commit()

with Session(engine) as s:
    for i in range(200):
        s.execute(insert(Book).values(author_id=1 + i % 20, title="batch %d" % i))
    s.commit()

with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
    for i in range(50):
        c.execute(text("select title from books where id = :id"), {"id": i + 1})

print("done", flush=True)
