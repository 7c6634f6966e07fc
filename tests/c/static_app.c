/* A C program with libpq linked into the executable (libpq.a), for dbtel's
 * end-to-end tests: connects, prints "ready", waits for a line on stdin (so
 * the agent can attach by PID), runs one call of each kind, prints "done". */
#include <stdio.h>
#include <libpq-fe.h>
int main(int argc, char **argv) {
    PGconn *c = PQconnectdb(argv[1]);
    if (PQstatus(c) != CONNECTION_OK) { fprintf(stderr, "%s", PQerrorMessage(c)); return 1; }
    printf("ready\n"); fflush(stdout);
    char line[16]; if (!fgets(line, sizeof line, stdin)) return 1;
    PQclear(PQexec(c, "select 1"));
    const char *v[1] = {"2"};
    PQclear(PQexecParams(c, "select $1::int + 40", 1, NULL, v, NULL, NULL, 0));
    PQclear(PQprepare(c, "s1", "select $1::int * 2", 1, NULL));
    PQclear(PQexecPrepared(c, "s1", 1, v, NULL, NULL, 0));
    PQclear(PQexec(c, "select * from missing"));
    PQfinish(c);
    printf("done\n");
    return 0;
}
