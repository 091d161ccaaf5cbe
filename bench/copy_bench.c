/*
 * copy_bench.c: why znet copies payload with zn__copy() rather than
 * memcpy() (docs/performance.md, "The copy that ran at 2 GB/s").
 *
 * Copies a block from a page-aligned source to destinations placed `dist`
 * bytes after it modulo 4096 and prints GB/s for memcpy() and for
 * zn__copy(), median of 5 rounds. On AMD Zen 3/4 with glibc < 2.39,
 * memcpy() of more than ~2 KiB uses `rep movsb`, which is about 25 times
 * slower for distances 1..63; zn__copy() splits those copies.
 *
 * Build: gcc -O2 -I include -I src src/common.c bench/copy_bench.c
 * Run:   ./a.out [block bytes, default 16384]
 */
#define _GNU_SOURCE

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

#define ROUNDS 5
#define ITERS 20000

typedef void (*copy_fn)(void *, const void *, size_t);


static void
libc_copy(void *d, const void *s, size_t n)
{
    memcpy(d, s, n);
}


static double
now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}


static int
cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}


static double
gbps(copy_fn fn, char *dst, const char *src, size_t n)
{
    double r[ROUNDS], t;
    int i, k;

    for (k = 0; k < ROUNDS; k++) {
        t = now_s();
        for (i = 0; i < ITERS; i++) {
            fn(dst, src, n);
            __asm__ volatile("" : : "r"(dst) : "memory");
        }
        r[k] = (double)ITERS * (double)n / (now_s() - t) / 1e9;
    }
    qsort(r, ROUNDS, sizeof(r[0]), cmp_double);
    return r[ROUNDS / 2];
}


int
main(int argc, char **argv)
{
    static const size_t dists[] = {0, 1, 16, 32, 63, 64, 672, 4032};
    size_t n = argc > 1 ? strtoul(argv[1], NULL, 10) : 16384;
    size_t i, cap = (n + 8192 + 4095) & ~(size_t)4095;
    char *src = aligned_alloc(4096, cap), *dst = aligned_alloc(4096, cap);

    if (src == NULL || dst == NULL || n == 0)
        return 1;
    memset(src, 1, cap);
    memset(dst, 2, cap);
    printf("block %zu bytes, GB/s (median of %d rounds)\n", n, ROUNDS);
    printf("%6s %10s %10s\n", "dist", "memcpy", "zn__copy");
    for (i = 0; i < sizeof(dists) / sizeof(dists[0]); i++)
        printf("%6zu %10.1f %10.1f\n", dists[i],
               gbps(libc_copy, dst + dists[i], src, n),
               gbps(zn__copy, dst + dists[i], src, n));
    free(src);
    free(dst);
    return 0;
}
