// mysql2 (pure JavaScript: only the server side of dbtel sees it) over the
// unix socket, for the MariaDB server tests.
//
// Usage: node mysql2_app.js SOCKET DATABASE
// The table `t (id int primary key, v int)` holds rows 1 and 2 beforehand.
// Prints `conn ID` for each connection (its server thread id), `error ERRNO`
// for each error caught, then `done`.
//   main: text-protocol queries (query), prepared statements (execute: a
//         COM_STMT_PREPARE, then COM_STMT_EXECUTEs), a missing table (1146),
//         an explicit transaction
//   A, B: A begins, updates row 1, holds it 0.5 s, commits; B, 0.1 s after A
//         began, updates row 1 (a prepared statement) and waits for A
"use strict";

const mysql = require("mysql2/promise");

const [socketPath, database] = process.argv.slice(2);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function connect() {
  const c = await mysql.createConnection({ socketPath, user: "root", database });
  console.log("conn", c.threadId);
  return c;
}

async function main() {
  const c = await connect();
  await c.query("select v from t where id = 1");
  await c.query("select v from t where id = ?", [2]); // interpolated by mysql2: text protocol
  await c.execute("select v from t where id = ?", [1]);
  await c.execute("select v from t where id = ?", [2]); // the same prepared statement again
  await c.execute("update t set v = v + ? where id = ?", [1, 2]);
  try {
    await c.query("select * from missing");
  } catch (e) {
    console.log("error", e.errno);
  }
  await c.beginTransaction();
  await c.query("update t set v = v + 1 where id = 2");
  await c.execute("select v from t where id = ?", [2]);
  await c.commit();
  await c.end();

  const a = await connect();
  const b = await connect();
  await Promise.all([
    (async () => {
      await a.query("begin");
      await a.query("update t set v = v + 1 where id = 1");
      await sleep(500);
      await a.query("commit");
    })(),
    (async () => {
      await sleep(100);
      await b.execute("update t set v = v + ? where id = ?", [10, 1]);
    })(),
  ]);
  await a.end();
  await b.end();
  console.log("done");
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
