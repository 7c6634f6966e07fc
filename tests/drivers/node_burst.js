// node-postgres (no libpq): prints its PID, waits for a line on stdin, then
// runs 20 statements of distinct texts on one connection and exits.
const { Client } = require("pg");
const readline = require("readline");

console.log(process.pid);
const rl = readline.createInterface({ input: process.stdin });
rl.once("line", async () => {
  rl.close();
  const client = new Client({ connectionString: process.argv[2] });
  await client.connect();
  for (let n = 1; n <= 20; n++) {
    await client.query(`select ${n} as q${n}`);
  }
  await client.end();
  console.log("done");
});
