/* Checks struct offsets decoded from libmariadb's accessors on live
 * handles: for each field, the value the public API gives and the value at
 * the decoded offset. Prints
 *   check NAME API RAW      (tab-separated; the test wants API == RAW)
 *   offsetof NAME N         (Connector/C's headers, for comparison)
 * Usage: mysql_layout SOCKET PORT name=offset...
 */
#include <mysql.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int nargs;
static char **args;

static long off(const char *name) {
  size_t n = strlen(name);
  for (int i = 0; i < nargs; i++)
    if (!strncmp(args[i], name, n) && args[i][n] == '=') return strtol(args[i] + n + 1, NULL, 0);
  fprintf(stderr, "no offset for %s\n", name);
  exit(2);
}

#define AT(p, name, type) (*(type *)((char *)(p) + off(name)))
#define STR(s) ((s) ? (s) : "(null)")

static void die(MYSQL *m, const char *what) {
  fprintf(stderr, "%s: %s\n", what, mysql_error(m));
  exit(1);
}

static void check_u(const char *name, unsigned long long api, unsigned long long raw) {
  printf("check\t%s\t%llu\t%llu\n", name, api, raw);
}

static void check_s(const char *name, const char *api, const char *raw) {
  printf("check\t%s\t%s\t%s\n", name, STR(api), STR(raw));
}

static void q(MYSQL *m, const char *sql) {
  if (mysql_query(m, sql)) die(m, sql);
}

/* Fields that say where a connection goes, from the API and at the offsets. */
static void endpoint(MYSQL *m, const char *tag) {
  const char *host = NULL, *sock = NULL, *schema = NULL;
  unsigned int port = 0, status = 0;
  char name[64];
  mariadb_get_infov(m, MARIADB_CONNECTION_HOST, &host);
  mariadb_get_infov(m, MARIADB_CONNECTION_UNIX_SOCKET, &sock);
  mariadb_get_infov(m, MARIADB_CONNECTION_PORT, &port);
  mariadb_get_infov(m, MARIADB_CONNECTION_SCHEMA, &schema);
  mariadb_get_infov(m, MARIADB_CONNECTION_SERVER_STATUS, &status);
  snprintf(name, sizeof name, "%s.host", tag);
  check_s(name, host, AT(m, "host", char *));
  snprintf(name, sizeof name, "%s.unix_socket", tag);
  check_s(name, sock, AT(m, "unix_socket", char *));
  snprintf(name, sizeof name, "%s.port", tag);
  check_u(name, port, AT(m, "port", unsigned int));
  snprintf(name, sizeof name, "%s.db", tag);
  check_s(name, schema, AT(m, "db", char *));
  snprintf(name, sizeof name, "%s.server_status", tag);
  check_u(name, status, AT(m, "server_status", unsigned int));
  snprintf(name, sizeof name, "%s.thread_id", tag);
  check_u(name, mysql_thread_id(m), AT(m, "thread_id", unsigned long));
  snprintf(name, sizeof name, "%s.host_info", tag);
  check_s(name, mysql_get_host_info(m), AT(m, "host_info", char *));
}

int main(int argc, char **argv) {
  if (argc < 3) return 2;
  const char *sock = argv[1];
  unsigned int port = (unsigned int)atoi(argv[2]);
  nargs = argc - 3;
  args = argv + 3;

  printf("offsetof\tthread_id\t%zu\n", offsetof(MYSQL, thread_id));
  printf("offsetof\tlast_errno\t%zu\n", offsetof(MYSQL, net.last_errno));
  printf("offsetof\tsqlstate\t%zu\n", offsetof(MYSQL, net.sqlstate));
  printf("offsetof\taffected_rows\t%zu\n", offsetof(MYSQL, affected_rows));
  printf("offsetof\tfield_count\t%zu\n", offsetof(MYSQL, field_count));
  printf("offsetof\tserver_status\t%zu\n", offsetof(MYSQL, server_status));
  printf("offsetof\tserver_version\t%zu\n", offsetof(MYSQL, server_version));
  printf("offsetof\thost_info\t%zu\n", offsetof(MYSQL, host_info));
  printf("offsetof\tdb\t%zu\n", offsetof(MYSQL, db));
  printf("offsetof\thost\t%zu\n", offsetof(MYSQL, host));
  printf("offsetof\tunix_socket\t%zu\n", offsetof(MYSQL, unix_socket));
  printf("offsetof\tport\t%zu\n", offsetof(MYSQL, port));
  printf("offsetof\tres_row_count\t%zu\n", offsetof(MYSQL_RES, row_count));
  printf("offsetof\tstmt_mysql\t%zu\n", offsetof(MYSQL_STMT, mysql));
  printf("offsetof\tstmt_id\t%zu\n", offsetof(MYSQL_STMT, stmt_id));
  printf("offsetof\tstmt_last_errno\t%zu\n", offsetof(MYSQL_STMT, last_errno));
  printf("offsetof\tstmt_sqlstate\t%zu\n", offsetof(MYSQL_STMT, sqlstate));
  printf("offsetof\tstmt_affected_rows\t%zu\n", offsetof(MYSQL_STMT, upsert_status.affected_rows));
  printf("offsetof\tstmt_row_count\t%zu\n", offsetof(MYSQL_STMT, result.rows));
  printf("offsetof\tstmt_field_count\t%zu\n", offsetof(MYSQL_STMT, field_count));

  /* Over TCP, with a database. */
  MYSQL *t = mysql_init(NULL);
  if (!mysql_real_connect(t, "127.0.0.1", "root", "", "shop", port, NULL, CLIENT_MULTI_STATEMENTS)) die(t, "connect tcp");
  endpoint(t, "tcp");
  check_s("server_version", mysql_get_server_info(t), AT(t, "server_version", char *));

  /* Over the unix socket, without one; then `use`. */
  MYSQL *m = mysql_init(NULL);
  if (!mysql_real_connect(m, NULL, "root", "", NULL, 0, sock, CLIENT_MULTI_STATEMENTS)) die(m, "connect socket");
  endpoint(m, "socket");
  if (mysql_select_db(m, "shop")) die(m, "select_db");
  check_s("select_db.db", "shop", AT(m, "db", char *));
  q(m, "begin");
  endpoint(m, "in_transaction");
  q(m, "rollback");

  /* Results and rows. */
  q(m, "insert into t values (1, 'a'), (2, 'b'), (3, 'c')");
  check_u("affected_rows", mysql_affected_rows(m), AT(m, "affected_rows", unsigned long long));
  q(m, "select a, b from t where a >= 2");
  check_u("field_count", mysql_field_count(m), AT(m, "field_count", unsigned int));
  MYSQL_RES *r = mysql_store_result(m);
  if (!r) die(m, "store");
  check_u("res_row_count", mysql_num_rows(r), AT(r, "res_row_count", unsigned long long));
  mysql_free_result(r);

  /* A multi-statement text: MORE_RESULTS in server_status between results. */
  q(m, "select 1; select 2");
  r = mysql_store_result(m);
  check_u("more_results", mysql_more_results(m), (AT(m, "server_status", unsigned int) & SERVER_MORE_RESULTS_EXIST) != 0);
  mysql_free_result(r);
  if (mysql_next_result(m)) die(m, "next");
  mysql_free_result(mysql_store_result(m));
  check_u("no_more_results", mysql_more_results(m), (AT(m, "server_status", unsigned int) & SERVER_MORE_RESULTS_EXIST) != 0);

  /* A failing statement. */
  if (!mysql_query(m, "select * from missing")) die(m, "should fail");
  check_u("last_errno", mysql_errno(m), AT(m, "last_errno", unsigned int));
  check_s("sqlstate", mysql_sqlstate(m), (char *)m + off("sqlstate"));

  /* Prepared statements. */
  MYSQL_STMT *s = mysql_stmt_init(m), *s2 = mysql_stmt_init(m);
  const char *sel = "select a from t where a >= ?";
  if (mysql_stmt_prepare(s, sel, strlen(sel))) die(m, "prepare");
  const char *ins = "insert into t values (?, 'x')";
  if (mysql_stmt_prepare(s2, ins, strlen(ins))) die(m, "prepare 2");
  check_u("stmt_mysql", (unsigned long long)(size_t)m, (unsigned long long)(size_t)AT(s, "stmt_mysql", MYSQL *));
  /* The server numbers a connection's statements 1, 2, ... */
  check_u("stmt_id.first", 1, AT(s, "stmt_id", unsigned long));
  check_u("stmt_id.second", 2, AT(s2, "stmt_id", unsigned long));
  int v = 2;
  MYSQL_BIND b;
  memset(&b, 0, sizeof b);
  b.buffer_type = MYSQL_TYPE_LONG;
  b.buffer = &v;
  if (mysql_stmt_bind_param(s, &b) || mysql_stmt_execute(s) || mysql_stmt_store_result(s)) die(m, "execute");
  check_u("stmt_row_count", mysql_stmt_num_rows(s), AT(s, "stmt_row_count", unsigned long long));
  v = 7;
  if (mysql_stmt_bind_param(s2, &b) || mysql_stmt_execute(s2)) die(m, "execute 2");
  check_u("stmt_affected_rows", mysql_stmt_affected_rows(s2), AT(s2, "stmt_affected_rows", unsigned long long));
  /* A duplicate key: 1062, 23000. */
  if (!mysql_stmt_execute(s2)) die(m, "should fail");
  check_u("stmt_last_errno", mysql_stmt_errno(s2), AT(s2, "stmt_last_errno", unsigned int));
  check_s("stmt_sqlstate", mysql_stmt_sqlstate(s2), (char *)s2 + off("stmt_sqlstate"));
  mysql_stmt_close(s);
  mysql_stmt_close(s2);
  mysql_close(m);
  mysql_close(t);
  return 0;
}
