/* gotel's start-up calibration: the cost of one uprobe hit on this machine (receiver/calibrate.py).
 * Two identical leaf functions starting with `push %rbp` (emulated by the kernel's x86 uprobe code,
 * as at gotel's probes); only `probed` carries a uprobe. Blocks of calls alternate between them, so
 * that both see the same machine; prints the ns per call of each. Same method as benchmarks row 6. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

__attribute__((noinline)) void probed(void) { __asm__ volatile("push %rbp; pop %rbp"); }
__attribute__((noinline)) void unprobed(void) { __asm__ volatile("push %rbp; pop %rbp"); }

static double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 20000, blocks = 10;
    double with = 0, without = 0;
    getchar(); /* the probe is attached first */
    for (long b = 0; b < blocks; b++) {
        double t0 = now_ns();
        for (long i = 0; i < n / blocks; i++)
            unprobed();
        double t1 = now_ns();
        for (long i = 0; i < n / blocks; i++)
            probed();
        double t2 = now_ns();
        without += t1 - t0;
        with += t2 - t1;
    }
    printf("%.2f %.2f\n", with / n, without / n);
    return 0;
}
