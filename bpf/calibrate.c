/* The cost of one uprobe hit on this machine: gotel's start-up calibration (receiver/calibrate.py)
 * and benchmark row 6 (benchmarks/bench_uprobe_floor.py). Two pairs of identical leaf functions: one
 * starting with `push %rbp` (emulated by the kernel's x86 uprobe code, as at gotel's probes), one
 * with a 5-byte NOP (which kernels with arch_uprobe_optimize can turn into a call to a trampoline
 * instead of a trap); of each pair only `probed*` carries a uprobe. Usage:
 * calibrate CALLS [push|nop5] [THREADS]; with THREADS > 1 (benchmark row 6) that many threads run
 * the blocks at once, as a multi-threaded program's hits of one probe do, and the figures are their
 * averages.
 * Short blocks of calls alternate between the two functions of a pair, so that both see the same
 * machine; prints the ns per call of the fastest block of each: other tenants only ever add time,
 * so the fastest block is the one they disturbed least. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

__attribute__((noinline)) void probed(void) { __asm__ volatile("push %rbp; pop %rbp"); }
__attribute__((noinline)) void unprobed(void) { __asm__ volatile("push %rbp; pop %rbp"); }
__attribute__((noinline)) void probed_nop5(void) { __asm__ volatile(".byte 0x0f,0x1f,0x44,0x00,0x00"); }
__attribute__((noinline)) void unprobed_nop5(void) { __asm__ volatile(".byte 0x0f,0x1f,0x44,0x00,0x00"); }

#define BLOCKS 100
#define MAX_THREADS 64

static long per;
static void (*with_probe)(void), (*without_probe)(void);

struct best {
    double with, without;
};

static double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static void *blocks(void *arg)
{
    struct best *b = arg;
    b->with = b->without = 1e18;
    for (long k = 0; k < BLOCKS; k++) {
        double t0 = now_ns();
        for (long i = 0; i < per; i++)
            without_probe();
        double t1 = now_ns();
        for (long i = 0; i < per; i++)
            with_probe();
        double t2 = now_ns();
        if (t1 - t0 < b->without)
            b->without = t1 - t0;
        if (t2 - t1 < b->with)
            b->with = t2 - t1;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 50000;
    int nop5 = argc > 2 && strcmp(argv[2], "nop5") == 0;
    int threads = argc > 3 ? atoi(argv[3]) : 1;
    if (threads < 1 || threads > MAX_THREADS)
        threads = 1;
    per = n / BLOCKS;
    with_probe = nop5 ? probed_nop5 : probed;
    without_probe = nop5 ? unprobed_nop5 : unprobed;
    struct best best[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    getchar(); /* the probe is attached first */
    for (int t = 1; t < threads; t++)
        pthread_create(&ids[t], NULL, blocks, &best[t]);
    blocks(&best[0]);
    double with = best[0].with, without = best[0].without;
    for (int t = 1; t < threads; t++) {
        pthread_join(ids[t], NULL);
        with += best[t].with;
        without += best[t].without;
    }
    printf("%.2f %.2f\n", with / threads / per, without / threads / per);
    return 0;
}
