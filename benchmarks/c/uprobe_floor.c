/* The kernel's floor for one uprobe hit on this machine, free of Go: two leaf functions called in
 * a loop, one starting with `push %rbp` (emulated by the kernel's x86 uprobe code, as at gotel's
 * probe on runtime.casgstatus), one with a 5-byte NOP (the instruction recent kernels can turn into
 * a call to a uprobe trampoline instead of a trap). Prints ns per call. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

__attribute__((noinline)) void starts_with_nop5(void) { __asm__ volatile(".byte 0x0f,0x1f,0x44,0x00,0x00"); }
__attribute__((noinline)) void starts_with_push(void) { __asm__ volatile("push %rbp; pop %rbp"); }

int main(int argc, char **argv)
{
    int nop5 = argc > 1 && argv[1][0] == 'n';
    long n = argc > 2 ? atol(argv[2]) : 1000000;
    getchar(); /* a tracer attaches first */
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        if (nop5)
            starts_with_nop5();
        else
            starts_with_push();
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("ns/call %.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
    return 0;
}
