/*
 * common.c: error names, allocator hooks, clock.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "znet/common.h"

static struct {
    zn_malloc_fn malloc;
    zn_realloc_fn realloc;
    zn_calloc_fn calloc;
    zn_free_fn free;
} zn__allocator = {malloc, realloc, calloc, free};


const char *
zn_strerror(int err)
{
#define ZN__STRERROR_CASE(name, msg)                                         \
    case ZN_##name:                                                          \
        return msg;
    switch (err) {
    case 0:
        return "success";
        ZN_ERRNO_MAP(ZN__STRERROR_CASE)
    default:
        return "unknown error";
    }
#undef ZN__STRERROR_CASE
}


const char *
zn_err_name(int err)
{
#define ZN__ERRNAME_CASE(name, msg)                                          \
    case ZN_##name:                                                          \
        return #name;
    switch (err) {
    case 0:
        return "OK";
        ZN_ERRNO_MAP(ZN__ERRNAME_CASE)
    default:
        return "UNKNOWN";
    }
#undef ZN__ERRNAME_CASE
}


int
zn_set_allocator(zn_malloc_fn m, zn_realloc_fn r, zn_calloc_fn c, zn_free_fn f)
{
    if (m == NULL || r == NULL || c == NULL || f == NULL)
        return ZN_EINVAL;
    zn__allocator.malloc = m;
    zn__allocator.realloc = r;
    zn__allocator.calloc = c;
    zn__allocator.free = f;
    return 0;
}


void *
zn__malloc(size_t size)
{
    return zn__allocator.malloc(size ? size : 1);
}


void *
zn__realloc(void *ptr, size_t size)
{
    return zn__allocator.realloc(ptr, size ? size : 1);
}


void *
zn__calloc(size_t count, size_t size)
{
    return zn__allocator.calloc(count ? count : 1, size ? size : 1);
}


void
zn__free(void *ptr)
{
    if (ptr != NULL)
        zn__allocator.free(ptr);
}


char *
zn__strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = zn__malloc(n);

    if (p != NULL)
        memcpy(p, s, n);
    return p;
}


/* Below glibc's smallest default rep_movsb threshold (2 KiB + 64). */
#define ZN__COPY_PIECE 2048

void
zn__copy(void *dst, const void *src, size_t n)
{
    size_t dist = ((uintptr_t)dst - (uintptr_t)src) & 4095;
    char *d = dst;
    const char *s = src;

    if (n > ZN__COPY_PIECE && dist > 0 && dist < 64) {
        while (n > ZN__COPY_PIECE) {
            memmove(d, s, ZN__COPY_PIECE);
            d += ZN__COPY_PIECE;
            s += ZN__COPY_PIECE;
            n -= ZN__COPY_PIECE;
        }
    }
    memmove(d, s, n);
}


void
zn__close_fd(int fd)
{
    if (fd >= 0)
        (void)close(fd);
}


uint64_t
zn_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}


uint64_t
zn_now_ms(void)
{
    return zn_now_ns() / 1000000u;
}


int
zn__thread_start(pthread_t *th, void *(*fn)(void *), void *arg)
{
    sigset_t all, old;
    int rc;

    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(th, NULL, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return -rc;
}
