/*
 * znet/log.h: the logging facade.
 *
 * znet never prints on its own: the framework's messages and the
 * application's go through zn_log(), which checks the level before anything
 * is formatted and hands the line to a backend:
 *
 *   - the built-in backend (always available): one line per message to
 *     stderr, stdout or files, with a timestamp, the level, the thread id
 *     and the category;
 *   - the zlog backend, when the build found zlog (ZN_HAVE_ZLOG is then 1 in
 *     znet/config.h): zn_log_init() reads a zlog configuration file and logs
 *     to a zlog category;
 *   - a user handler set with zn_log_set_handler(), which replaces both.
 *
 * All functions here are safe to call from any thread.
 */
#ifndef ZNET_LOG_H
#define ZNET_LOG_H

#include <stdarg.h>
#include <stdbool.h>

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    ZN_LOG_TRACE = 0,
    ZN_LOG_DEBUG = 1,
    ZN_LOG_INFO = 2,
    ZN_LOG_WARN = 3,
    ZN_LOG_ERROR = 4,
    ZN_LOG_FATAL = 5,
    ZN_LOG_OFF = 6
} zn_log_level_t;

/*
 * The seed's initLog(conf, category). Reads the configuration file `conf`
 * (NULL: the defaults, every level to stderr, the level filter at INFO),
 * opening it once, and logs to `category` (NULL: "znet"): letters, digits,
 * '_' and '-', at most 63 characters.
 *
 * With the zlog backend, `conf` is zlog's to read. The built-in backend
 * reads the same zlog file and either gives every line zlog's meaning or
 * refuses the file. It accepts:
 *   - [global] "strict init = true", "file perms = 0640" (octal, for the
 *     files it creates), and "default format" set to the built-in line;
 *   - [formats] entries whose pattern is the built-in line,
 *     "%d(%F %T).%ms %-5V [tid %k] %c %f:%L: %m%n";
 *   - [rules] "category.level output[; format]": the category "*", "aa"
 *     (exactly), "aa_" (aa and aa_xx) or "!" (when no other rule matched);
 *     the level "*", "LEVEL" (that and above), "=LEVEL" (that one only) or
 *     "!LEVEL" (all but that one), of zlog's DEBUG, INFO, NOTICE, WARN,
 *     ERROR, FATAL and UNKNOWN, where TRACE counts as DEBUG; the output a
 *     quoted file path, >stdout or >stderr; the format one from [formats],
 *     or none if "default format" is the built-in line. As in zlog, every
 *     rule that matches the category applies, at most 8 of them.
 * It refuses with ZN_ENOTSUP what zlog accepts but it cannot do: >syslog,
 * |pipe, $user and -"synchronous" outputs, rotation, '%' in paths, other
 * formats (and rules that would use zlog's default one), [levels], and
 * zlog's other [global] keys. It also takes its own plain keys "level =
 * WARN" and "file = /path" (before any section or in [global]; zlog
 * refuses them), used when no rule applies. A category that no rule or
 * plain key takes logs nothing, as with zlog. See docs/logging.md.
 *
 * On success the level filter is set to the lowest level that the
 * category's rules take (replacing an earlier zn_log_set_level()). The
 * rules still choose the levels written (as zlog does), so a later
 * zn_log_set_level() can hide messages they take but never add others;
 * with the plain keys or the defaults, the filter alone decides.
 *
 * Returns 0; ZN_ENOENT, ZN_EACCES (or another error of open() or read())
 * if the file cannot be read; ZN_EINVAL if it is not a regular file of at
 * most 1 MiB, if it cannot be parsed, or if `category` is bad; ZN_ENOTSUP
 * if the built-in backend refuses a line that zlog accepts; ZN_ENOMEM;
 * ZN_EBUSY if called from a log handler; or the error from opening an
 * output file. On error the previous configuration stays in force, and
 * (unless the category is bad or the call is from a handler) the reason is
 * logged at ERROR through it, for the built-in backend as
 * "file:line: what".
 */
ZN_EXTERN int zn_log_init(const char *conf, const char *category);

/* Closes the output files or zlog; later messages go to stderr. */
ZN_EXTERN void zn_log_fini(void);

/* Sets and reads the lowest level that is logged. */
ZN_EXTERN void zn_log_set_level(zn_log_level_t level);
ZN_EXTERN zn_log_level_t zn_log_get_level(void);

/* Parses "trace", "debug", "info", "warn", "error", "fatal", "off" (any
 * case). Returns 0 and stores the level, or ZN_EINVAL. */
ZN_EXTERN int zn_log_level_parse(const char *name, zn_log_level_t *level);

/* The upper-case name of a level ("INFO"). */
ZN_EXTERN const char *zn_log_level_name(zn_log_level_t level);

/*
 * A user handler gets every message that passes the level filter, already
 * formatted, without a trailing newline. It may be called from any thread,
 * concurrently. NULL restores the backend. Once zn_log_set_handler()
 * returns, no thread is still inside the previous handler. Inside a handler,
 * messages logged by that thread are dropped (no recursion), and
 * zn_log_init(), zn_log_fini() and zn_log_set_handler() do nothing.
 */
typedef void (*zn_log_cb)(zn_log_level_t level, const char *file, int line,
                          const char *msg, void *ud);
ZN_EXTERN void zn_log_set_handler(zn_log_cb cb, void *ud);

/*
 * True if a message at `level` passes the level filter (a backend's rules
 * may still drop it, e.g. a rule "=ERROR" drops FATAL). It is a call into
 * the library (not inlined): a relaxed atomic load and two compares. The
 * ZN_LOG* macros make this call first, so a message that is filtered out
 * costs this call and nothing else; its arguments are not evaluated.
 * Measured with bench/log_bench.c on a 2-core Xeon VM: about 2 ns linked
 * to libznet.a, 4-5.5 ns linked to libznet.so (the call goes through the
 * PLT), against 0.5 ns for an empty loop iteration.
 */
ZN_EXTERN bool zn_log_enabled(zn_log_level_t level);

/* Formats and logs a message; prefer the ZN_LOG* macros, which check the
 * level first. errno is preserved. */
ZN_EXTERN void zn_log_write(zn_log_level_t level, const char *file, int line,
                            const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
ZN_EXTERN void zn_log_writev(zn_log_level_t level, const char *file,
                             int line, const char *fmt, va_list ap);

/*
 * Rate limit for repeated messages, one zn_log_rl_t per call site (static,
 * zero-initialised). zn_log_ratelimit() returns true at most `burst` times
 * per second for one limiter, and counts what it refused; the first message
 * allowed after a refusal is followed by a line "N similar messages
 * suppressed": the count is handed to the calling thread and reported after
 * the next message that thread logs, so call it only right before logging,
 * as ZN_LOG_RL does. A `burst` of 0 counts as 1. Lock-free; any thread.
 */
typedef struct {
    _Atomic uint64_t state;      /* second << 32 | count in that second */
    _Atomic uint32_t suppressed; /* refused since the last allowed line */
} zn_log_rl_t;

ZN_EXTERN bool zn_log_ratelimit(zn_log_rl_t *rl, unsigned burst);

#define ZN_LOG(level, ...)                                                    \
    do {                                                                      \
        if (zn_log_enabled(level))                                            \
            zn_log_write((level), __FILE__, __LINE__, __VA_ARGS__);           \
    } while (0)

/* Logs at most `burst` lines per second from this call site. */
#define ZN_LOG_RL(level, burst, ...)                                          \
    do {                                                                      \
        static zn_log_rl_t zn__rl_;                                           \
        if (zn_log_enabled(level) && zn_log_ratelimit(&zn__rl_, (burst)))     \
            zn_log_write((level), __FILE__, __LINE__, __VA_ARGS__);           \
    } while (0)

#ifdef __cplusplus
}
#endif
#endif /* ZNET_LOG_H */
