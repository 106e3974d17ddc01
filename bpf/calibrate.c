/* gotel's start-up calibration: the cost of one uprobe hit on this machine (receiver/calibrate.py).
 * Two identical leaf functions starting with `push %rbp` (emulated by the kernel's x86 uprobe code,
 * as at gotel's probes); only `probed` carries a uprobe. Short blocks of calls alternate between
 * them, so that both see the same machine; prints the ns per call of the fastest block of each:
 * other tenants only ever add time, so the fastest block is the one they disturbed least. */
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
    long n = argc > 1 ? atol(argv[1]) : 50000, blocks = 100, per = n / blocks;
    double with = 1e18, without = 1e18;
    getchar(); /* the probe is attached first */
    for (long b = 0; b < blocks; b++) {
        double t0 = now_ns();
        for (long i = 0; i < per; i++)
            unprobed();
        double t1 = now_ns();
        for (long i = 0; i < per; i++)
            probed();
        double t2 = now_ns();
        if (t1 - t0 < without)
            without = t1 - t0;
        if (t2 - t1 < with)
            with = t2 - t1;
    }
    printf("%.2f %.2f\n", with / per, without / per);
    return 0;
}
