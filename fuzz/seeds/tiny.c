/* The ELF seeds (fuzz/corpus/elf/tiny.so, tiny-stripped.so): a few libpq- and
 * MySQL-named functions and a PostgreSQL USDT note, in under 2.5 KB:
 *   gcc -O2 -shared -fPIC -nostdlib -fno-asynchronous-unwind-tables -Wl,--build-id=none \
 *     -Wl,-z,norelro -Wl,--hash-style=gnu -Wl,-z,noseparate-code -o tiny.so tiny.c
 *   strip --strip-unneeded -R .comment tiny.so -o tiny-stripped.so
 * The note is written as <sys/sdt.h> writes it (that header is not needed). */
struct pg_result { int pad[4]; int resultStatus; int ntups; };
int PQresultStatus(const struct pg_result *r) { return r ? r->resultStatus : 7; }
int PQntuples(const struct pg_result *r) { return r->ntups; }
unsigned long mysql_thread_id(const char *m) { return *(const unsigned long *)(m + 0x350); }
void PQexec(void) {}
void f(int x, long y) {
  __asm__ volatile(
    "990: nop\n"
    ".pushsection .note.stapsdt,\"?\",\"note\"\n"
    ".balign 4\n .4byte 992f-991f, 994f-993f, 3\n"
    "991: .asciz \"stapsdt\"\n992: .balign 4\n"
    "993: .8byte 990b\n .8byte _.stapsdt.base\n .8byte 0\n"
    ".asciz \"postgresql\"\n .asciz \"query__start\"\n .asciz \"-4@%%edi 8@%%rsi\"\n"
    "994: .balign 4\n .popsection\n"
    ".ifndef _.stapsdt.base\n .pushsection .stapsdt.base,\"aG\",\"progbits\",.stapsdt.base,comdat\n .weak _.stapsdt.base\n .hidden _.stapsdt.base\n_.stapsdt.base: .space 1\n .size _.stapsdt.base,1\n .popsection\n .endif\n"
    :: "D"(x), "S"(y));
}
