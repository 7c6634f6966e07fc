/* A "PostgreSQL server" with a single postgresql USDT probe (statement__status):
 * what a build the agent cannot fully use looks like. The note is written by
 * hand, as <sys/sdt.h> would, so no systemtap headers are needed. */
#include <stdio.h>
#include <unistd.h>

#define STAPSDT_BASE                                                        \
    ".ifndef _.stapsdt.base\n"                                              \
    ".pushsection .stapsdt.base,\"aG\",\"progbits\",.stapsdt.base,comdat\n" \
    ".weak _.stapsdt.base\n.hidden _.stapsdt.base\n"                        \
    "_.stapsdt.base: .space 1\n.size _.stapsdt.base, 1\n"                   \
    ".popsection\n.endif\n"

#define PROBE1(name, arg)                                                   \
    __asm__ volatile("990: nop\n"                                           \
                     ".pushsection .note.stapsdt,\"?\",\"note\"\n"          \
                     ".balign 4\n"                                          \
                     ".4byte 992f-991f, 994f-993f, 3\n"                     \
                     "991: .asciz \"stapsdt\"\n"                            \
                     "992: .balign 4\n"                                     \
                     "993: .8byte 990b\n"                                   \
                     ".8byte _.stapsdt.base\n"                              \
                     ".8byte 0\n"                                           \
                     ".asciz \"postgresql\"\n"                              \
                     ".asciz \"" #name "\"\n"                               \
                     ".asciz \"8@%0\"\n"                                    \
                     "994: .balign 4\n"                                     \
                     ".popsection\n" STAPSDT_BASE                           \
                     :                                                      \
                     : "r"(arg))

int main(void) {
    const char *q = "select 1";
    PROBE1(statement__status, q);
    printf("%d\n", getpid());
    fflush(stdout);
    sleep(30);
    return 0;
}
