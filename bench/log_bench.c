/*
 * log_bench.c: what a ZN_LOG call costs when its level is filtered out
 * (include/znet/log.h and docs/logging.md quote the result).
 *
 * Times, in one thread, ITERS iterations of three loops and prints ns per
 * iteration, median of ROUNDS rounds:
 *
 *   nothing    an empty loop body (a compiler barrier, so the loop stays);
 *   filtered   ZN_LOG(ZN_LOG_DEBUG, "...", i), the level at INFO: it calls
 *              zn_log_enabled(), which loads the level and compares;
 *   enabled()  zn_log_enabled(ZN_LOG_DEBUG) alone, its result kept.
 *
 * The cost of a filtered call is "filtered" minus "nothing". Link it both
 * ways: against libznet.a the call is direct; against libznet.so it goes
 * through the PLT, as it does for an application linked to the shared
 * library.
 *
 * Build (after building znet_static and znet_shared in build/normal):
 *   gcc -O2 -I include -I build/normal/include bench/log_bench.c \
 *       build/normal/libznet.a -lpthread -o /tmp/log_bench_static
 *   gcc -O2 -I include -I build/normal/include bench/log_bench.c \
 *       -L build/normal -Wl,-rpath,$PWD/build/normal -lznet \
 *       -o /tmp/log_bench_shared
 * Run:   /tmp/log_bench_static [iterations, default 100000000]
 */
#define _GNU_SOURCE

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "znet/log.h"

#define ROUNDS 7

typedef void (*loop_fn)(unsigned long n);

static volatile unsigned long sink;


static double
now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}


static void
loop_nothing(unsigned long n)
{
    unsigned long i;

    for (i = 0; i < n; i++)
        __asm__ volatile("" ::: "memory");
}


static void
loop_filtered(unsigned long n)
{
    unsigned long i;

    for (i = 0; i < n; i++) {
        __asm__ volatile("" ::: "memory");
        ZN_LOG(ZN_LOG_DEBUG, "filtered %lu", i);
    }
}


static void
loop_enabled(unsigned long n)
{
    unsigned long i, k = 0;

    for (i = 0; i < n; i++) {
        __asm__ volatile("" ::: "memory");
        k += zn_log_enabled(ZN_LOG_DEBUG);
    }
    sink = k;
}


static int
cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}


/* The median over ROUNDS rounds of ns per iteration. */
static double
time_loop(loop_fn fn, unsigned long n)
{
    double t[ROUNDS], t0;
    int r;

    for (r = 0; r < ROUNDS; r++) {
        t0 = now_ns();
        fn(n);
        t[r] = (now_ns() - t0) / (double)n;
    }
    qsort(t, ROUNDS, sizeof(t[0]), cmp_double);
    return t[ROUNDS / 2];
}


int
main(int argc, char **argv)
{
    unsigned long n = argc > 1 ? strtoul(argv[1], NULL, 10) : 100000000UL;
    double nothing, filtered, enabled;

    if (n == 0)
        return 1;
    zn_log_set_level(ZN_LOG_INFO);
    loop_filtered(n / 10); /* warm up */
    nothing = time_loop(loop_nothing, n);
    filtered = time_loop(loop_filtered, n);
    enabled = time_loop(loop_enabled, n);
    printf("ns per iteration, median of %d rounds of %lu\n", ROUNDS, n);
    printf("  nothing    %6.2f\n", nothing);
    printf("  filtered   %6.2f  (+%.2f)\n", filtered, filtered - nothing);
    printf("  enabled()  %6.2f  (+%.2f)\n", enabled, enabled - nothing);
    return 0;
}
