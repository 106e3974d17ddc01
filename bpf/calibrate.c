/* The cost of one uprobe hit on this machine: gotel's start-up calibration (receiver/calibrate.py)
 * and benchmark row 6 (benchmarks/bench_uprobe_floor.py). Two pairs of identical leaf functions: one
 * starting with `push %rbp` (emulated by the kernel's x86 uprobe code, as at gotel's probes), one
 * with a 5-byte NOP (which kernels with arch_uprobe_optimize can turn into a call to a trampoline
 * instead of a trap); of each pair only `probed*` carries a uprobe. Usage: calibrate CALLS [push|nop5].
 * Short blocks of calls alternate between the two functions of a pair, so that both see the same
 * machine; prints the ns per call of the fastest block of each: other tenants only ever add time,
 * so the fastest block is the one they disturbed least. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

__attribute__((noinline)) void probed(void) { __asm__ volatile("push %rbp; pop %rbp"); }
__attribute__((noinline)) void unprobed(void) { __asm__ volatile("push %rbp; pop %rbp"); }
__attribute__((noinline)) void probed_nop5(void) { __asm__ volatile(".byte 0x0f,0x1f,0x44,0x00,0x00"); }
__attribute__((noinline)) void unprobed_nop5(void) { __asm__ volatile(".byte 0x0f,0x1f,0x44,0x00,0x00"); }

static double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 50000, blocks = 100, per = n / blocks;
    int nop5 = argc > 2 && strcmp(argv[2], "nop5") == 0;
    void (*with_probe)(void) = nop5 ? probed_nop5 : probed;
    void (*without_probe)(void) = nop5 ? unprobed_nop5 : unprobed;
    double with = 1e18, without = 1e18;
    getchar(); /* the probe is attached first */
    for (long b = 0; b < blocks; b++) {
        double t0 = now_ns();
        for (long i = 0; i < per; i++)
            without_probe();
        double t1 = now_ns();
        for (long i = 0; i < per; i++)
            with_probe();
        double t2 = now_ns();
        if (t1 - t0 < without)
            without = t1 - t0;
        if (t2 - t1 < with)
            with = t2 - t1;
    }
    printf("%.2f %.2f\n", with / per, without / per);
    return 0;
}
