/* A libmariadb client using the prepared-statement API, the split
 * send/read query calls, and a multi-statement text. Prints what the API
 * reported, one tab-separated line per fact, for the test to compare with
 * the spans:
 *   conn ID                      the connection id (mysql_thread_id)
 *   affected N                   each successful insert execution
 *   error CALL ERRNO SQLSTATE    each expected failure
 *   stmt_rows N                  rows buffered by mysql_stmt_store_result
 *   fetched N                    rows fetched from them
 *   send_rows N                  rows of mysql_send_query's result
 *   result I ROWS|-AFFECTED      each result of the multi-statement text
 * Usage: mysql_prepared SOCKET DATABASE
 */
#include <mysql.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void die(MYSQL *m, const char *what) {
  fprintf(stderr, "%s: %u %s\n", what, mysql_errno(m), mysql_error(m));
  exit(1);
}

static void die_stmt(MYSQL_STMT *s, const char *what) {
  fprintf(stderr, "%s: %u %s\n", what, mysql_stmt_errno(s), mysql_stmt_error(s));
  exit(1);
}

static MYSQL_STMT *prepare(MYSQL *m, const char *sql) {
  MYSQL_STMT *s = mysql_stmt_init(m);
  if (!s) die(m, "mysql_stmt_init");
  if (mysql_stmt_prepare(s, sql, strlen(sql))) die_stmt(s, sql);
  return s;
}

/* Inserts (id, name) with the prepared insert; returns mysql_stmt_execute's result. */
static int insert(MYSQL_STMT *s, int id, const char *name) {
  MYSQL_BIND b[2];
  unsigned long len = strlen(name);
  memset(b, 0, sizeof b);
  b[0].buffer_type = MYSQL_TYPE_LONG;
  b[0].buffer = &id;
  b[1].buffer_type = MYSQL_TYPE_STRING;
  b[1].buffer = (void *)name;
  b[1].buffer_length = len;
  b[1].length = &len;
  if (mysql_stmt_bind_param(s, b)) die_stmt(s, "bind insert");
  return mysql_stmt_execute(s);
}

static void prepared(MYSQL *m) {
  MYSQL_STMT *ins = prepare(m, "insert into items (id, name) values (?, ?)");
  const char *names[] = {"ten", "eleven", "twelve"};
  for (int i = 0; i < 3; i++) {
    if (insert(ins, 10 + i, names[i])) die_stmt(ins, "execute insert");
    printf("affected\t%llu\n", (unsigned long long)mysql_stmt_affected_rows(ins));
  }
  /* A duplicate key: the execution fails with 1062. */
  if (!insert(ins, 10, "again")) die_stmt(ins, "duplicate insert succeeded");
  printf("error\tmysql_stmt_execute\t%u\t%s\n", mysql_stmt_errno(ins), mysql_stmt_sqlstate(ins));
  if (mysql_stmt_close(ins)) die(m, "close insert");

  MYSQL_STMT *sel = prepare(m, "select id, name from items where id >= ? order by id");
  int from = 11;
  MYSQL_BIND p;
  memset(&p, 0, sizeof p);
  p.buffer_type = MYSQL_TYPE_LONG;
  p.buffer = &from;
  if (mysql_stmt_bind_param(sel, &p)) die_stmt(sel, "bind select");
  if (mysql_stmt_execute(sel)) die_stmt(sel, "execute select");
  int id = 0;
  char name[64];
  unsigned long name_len = 0;
  MYSQL_BIND r[2];
  memset(r, 0, sizeof r);
  r[0].buffer_type = MYSQL_TYPE_LONG;
  r[0].buffer = &id;
  r[1].buffer_type = MYSQL_TYPE_STRING;
  r[1].buffer = name;
  r[1].buffer_length = sizeof name;
  r[1].length = &name_len;
  if (mysql_stmt_bind_result(sel, r)) die_stmt(sel, "bind result");
  if (mysql_stmt_store_result(sel)) die_stmt(sel, "store result");
  printf("stmt_rows\t%llu\n", (unsigned long long)mysql_stmt_num_rows(sel));
  int fetched = 0;
  while (mysql_stmt_fetch(sel) == 0) fetched++;
  printf("fetched\t%d\n", fetched);
  if (mysql_stmt_close(sel)) die(m, "close select");

  /* Preparing a statement on a missing table fails with 1146. */
  MYSQL_STMT *bad = mysql_stmt_init(m);
  const char *missing = "select * from no_such_table where id = ?";
  if (!mysql_stmt_prepare(bad, missing, strlen(missing))) die_stmt(bad, "prepare on a missing table succeeded");
  printf("error\tmysql_stmt_prepare\t%u\t%s\n", mysql_stmt_errno(bad), mysql_stmt_sqlstate(bad));
  mysql_stmt_close(bad);
}

static void send_and_read(MYSQL *m) {
  const char *sql = "select count(*) from items where name <> 'none'";
  if (mysql_send_query(m, sql, strlen(sql))) die(m, "mysql_send_query");
  if (mysql_read_query_result(m)) die(m, "mysql_read_query_result");
  MYSQL_RES *res = mysql_store_result(m);
  if (!res) die(m, "store send_query result");
  printf("send_rows\t%llu\n", (unsigned long long)mysql_num_rows(res));
  mysql_free_result(res);
}

static void multi(MYSQL *m) {
  const char *sql = "select 1; select id from items where id > 10; update items set name = 'z' where id = 10";
  if (mysql_real_query(m, sql, strlen(sql))) die(m, "multi-statement");
  int i = 0, more;
  do {
    MYSQL_RES *res = mysql_store_result(m);
    if (res) {
      printf("result\t%d\t%llu\n", i, (unsigned long long)mysql_num_rows(res));
      mysql_free_result(res);
    } else if (mysql_field_count(m) == 0) {
      printf("result\t%d\t-%llu\n", i, (unsigned long long)mysql_affected_rows(m));
    } else {
      die(m, "multi result");
    }
    i++;
    more = mysql_next_result(m);
    if (more > 0) die(m, "mysql_next_result");
  } while (more == 0);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s SOCKET DATABASE\n", argv[0]);
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  MYSQL *m = mysql_init(NULL);
  if (!mysql_real_connect(m, NULL, "root", NULL, argv[2], 0, argv[1], CLIENT_MULTI_STATEMENTS)) die(m, "connect");
  printf("conn\t%lu\n", mysql_thread_id(m));
  prepared(m);
  send_and_read(m);
  multi(m);
  mysql_close(m);
  return 0;
}
