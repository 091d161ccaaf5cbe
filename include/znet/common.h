/*
 * znet/common.h: export macro, error codes, allocator hooks, version.
 *
 * All functions in this header are safe to call from any thread, except
 * zn_set_allocator(), which must be called before any other znet function.
 */
#ifndef ZNET_COMMON_H
#define ZNET_COMMON_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The library is built with -fvisibility=hidden; this marks the API. */
#if defined(__GNUC__)
#define ZN_EXTERN __attribute__((visibility("default")))
#else
#define ZN_EXTERN
#endif

#define ZN_VERSION_MAJOR 0
#define ZN_VERSION_MINOR 1
#define ZN_VERSION_PATCH 0

/*
 * Error codes. Every fallible znet function returns 0 on success or one of
 * these negative codes; each is equal to the negated errno value of the same
 * name (ZN_EAGAIN == -EAGAIN), so a system error passes through unchanged.
 * A function that returns an error never runs the callback it was given.
 */
#define ZN_ERRNO_MAP(X)                                                      \
    X(E2BIG, "argument list too long")                                      \
    X(EACCES, "permission denied")                                          \
    X(EADDRINUSE, "address already in use")                                 \
    X(EADDRNOTAVAIL, "address not available")                               \
    X(EAFNOSUPPORT, "address family not supported")                         \
    X(EAGAIN, "resource temporarily unavailable")                           \
    X(EALREADY, "operation already in progress")                            \
    X(EBADF, "bad file descriptor")                                         \
    X(EBADMSG, "bad message")                                               \
    X(EBUSY, "resource busy or locked")                                     \
    X(ECANCELED, "operation canceled")                                      \
    X(ECONNABORTED, "software caused connection abort")                     \
    X(ECONNREFUSED, "connection refused")                                   \
    X(ECONNRESET, "connection reset by peer")                               \
    X(EDEADLK, "resource deadlock avoided")                                 \
    X(EEXIST, "already exists")                                             \
    X(EHOSTUNREACH, "host is unreachable")                                  \
    X(EINVAL, "invalid argument")                                           \
    X(EIO, "i/o error")                                                     \
    X(EMFILE, "too many open files")                                        \
    X(EMSGSIZE, "message too long")                                         \
    X(ENETUNREACH, "network is unreachable")                                \
    X(ENFILE, "file table overflow")                                        \
    X(ENOBUFS, "no buffer space available")                                 \
    X(ENOENT, "no such file or directory")                                  \
    X(ENOMEM, "not enough memory")                                          \
    X(ENOSPC, "no space left on device")                                    \
    X(ENOSYS, "function not implemented")                                   \
    X(ENOTCONN, "socket is not connected")                                  \
    X(ENOTSUP, "operation not supported")                                   \
    X(EPERM, "operation not permitted")                                     \
    X(EPIPE, "broken pipe")                                                 \
    X(EPROTO, "protocol error")                                             \
    X(ERANGE, "result out of range")                                        \
    X(ESHUTDOWN, "cannot send after shutdown")                              \
    X(ETIMEDOUT, "connection timed out")

#define ZN__ERR_ENUM(name, msg) ZN_##name = -name,
typedef enum { ZN_OK = 0, ZN_ERRNO_MAP(ZN__ERR_ENUM) } zn_errno_t;
#undef ZN__ERR_ENUM

/* The message for an error code ("unknown error" for a code not in the map). */
ZN_EXTERN const char *zn_strerror(int err);

/* The name of an error code, such as "EAGAIN" ("UNKNOWN" if not in the map). */
ZN_EXTERN const char *zn_err_name(int err);

/*
 * Allocator hooks. Every allocation znet makes goes through these. All four
 * must be given, behave like their libc namesakes, and be thread-safe.
 * Must be called before any other znet function. Returns 0, or ZN_EINVAL if
 * a pointer is NULL.
 */
typedef void *(*zn_malloc_fn)(size_t size);
typedef void *(*zn_realloc_fn)(void *ptr, size_t size);
typedef void *(*zn_calloc_fn)(size_t count, size_t size);
typedef void (*zn_free_fn)(void *ptr);

ZN_EXTERN int zn_set_allocator(zn_malloc_fn m, zn_realloc_fn r,
                               zn_calloc_fn c, zn_free_fn f);

/* Monotonic clock, in milliseconds and in nanoseconds. Any thread. */
ZN_EXTERN uint64_t zn_now_ms(void);
ZN_EXTERN uint64_t zn_now_ns(void);

#ifdef __cplusplus
}
#endif
#endif /* ZNET_COMMON_H */
