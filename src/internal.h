/*
 * internal.h: helpers shared by znet's source files. Not installed.
 */
#ifndef ZNET_INTERNAL_H
#define ZNET_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "znet/common.h"

/* Allocation through the hooks of zn_set_allocator(). */
void *zn__malloc(size_t size);
void *zn__realloc(void *ptr, size_t size);
void *zn__calloc(size_t count, size_t size);
void zn__free(void *ptr);
char *zn__strdup(const char *s);

/*
 * memmove() for bulk copies of payload: the destination must not overlap
 * the source from above (dst <= src or disjoint). Works around a pathology
 * of `rep movsb` on AMD Zen 3/4, which glibc before 2.39 uses for copies
 * above ~2 KiB: when the destination sits 1..63 bytes after the source
 * modulo 4096, the copy runs about 25 times slower (measured here: 2 GB/s
 * against 55; glibc bug 30994). Such pairs are copied in 2 KiB pieces,
 * which glibc copies with vector registers. See docs/performance.md.
 */
void zn__copy(void *dst, const void *src, size_t n);

#define zn__container_of(ptr, type, member)                                   \
    ((type *)((char *)(ptr)-offsetof(type, member)))

#define ZN__ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/*
 * Counters written by one thread and read by any: a relaxed load and store
 * (no locked instruction on the hot path) that TSan accepts.
 */
static inline void
zn__counter_add(_Atomic uint64_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static inline uint64_t
zn__counter_get(const _Atomic uint64_t *c)
{
    return atomic_load_explicit((_Atomic uint64_t *)c, memory_order_relaxed);
}

/*
 * Starts a thread of znet's own (an IO loop, a worker) with every signal
 * blocked, so that process signals such as SIGTERM are never delivered to
 * it: they go to the application's threads (or its signalfd). Returns 0 or
 * a negative error.
 */
int zn__thread_start(pthread_t *th, void *(*fn)(void *), void *arg);

/* Closes an fd, retrying nothing: on Linux the fd is gone even on EINTR. */
void zn__close_fd(int fd);

#endif /* ZNET_INTERNAL_H */
