/*
 * log.c: the logging facade and its backends.
 *
 * The level filter is one atomic int read with a relaxed load, so a message
 * that is filtered out costs a call to zn_log_enabled(), a load and two
 * compares (2-5 ns, bench/log_bench.c); the ZN_LOG macros test the level
 * before they evaluate any argument.
 *
 * Everything else a message needs (the backend, its output file, the user
 * handler) sits behind one read-write lock. Threads that log take it for
 * reading and run concurrently; zn_log_init(), zn_log_fini() and
 * zn_log_set_handler() take it for writing, so no thread writes to a file
 * that is being closed or calls a handler that is being replaced.
 *
 * A backend is a small table of functions. The built-in one is always
 * there; the zlog one is compiled only when the build found zlog, and then
 * reads every configuration file given to zn_log_init(). The built-in one
 * reads a file with log_conf.c, which takes from it the outputs of the
 * category, each with the set of levels its zlog rule selects.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "log_int.h"
#include "znet/config.h"
#include "znet/log.h"

#if ZN_HAVE_ZLOG
#include <zlog.h>
#endif

#define LOG_LINE_SIZE 1024     /* a line that fits needs no allocation */
#define LOG_CATEGORY_SIZE 64
#define LOG_CONF_MAX (1 << 20) /* a larger configuration file is refused */
#define LOG_DEFAULT_CATEGORY "znet"

/* Writers prefer the lock, so a reconfiguration is not starved by loggers. */
#ifdef PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP
#define LOG_LOCK_INITIALIZER PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP
#else
#define LOG_LOCK_INITIALIZER PTHREAD_RWLOCK_INITIALIZER
#endif

/* A configuration file, read once by zn_log_init(). */
typedef struct {
    const char *path; /* NULL: the defaults */
    char *text;       /* the whole file, NUL-terminated */
    size_t len;
    char why[ZN__LOG_WHY_SIZE]; /* on error, what to log */
} log_src_t;

typedef struct {
    /* Switches to `src` for `category`; stores the level the configuration
     * asks for. On error nothing changes and src->why may say why. */
    int (*open)(log_src_t *src, const char *category, zn_log_level_t *level);
    void (*emit)(zn_log_level_t level, const char *file, int line,
                 const char *fmt, va_list ap);
    void (*close)(void);
} log_backend_t;

/* An open output of the built-in backend. */
typedef struct {
    int fd;
    bool own_fd;
    unsigned levels; /* bit L set: a message at level L goes here */
} log_sink_t;

static void log_builtin_emit(zn_log_level_t level, const char *file,
                             int line, const char *fmt, va_list ap);
static int log_builtin_open(log_src_t *src, const char *category,
                            zn_log_level_t *level);
static void log_builtin_close(void);

static const log_backend_t log_builtin_backend = {
    log_builtin_open, log_builtin_emit, log_builtin_close};

static const char *const log_level_names[] = {
    "TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF"};

static _Atomic int log_level = ZN_LOG_INFO;
static pthread_rwlock_t log_lock = LOG_LOCK_INITIALIZER;

/* Guarded by log_lock. */
static const log_backend_t *log_backend = &log_builtin_backend;
static zn_log_cb log_cb;
static void *log_cb_ud;
static struct {
    log_sink_t sink[ZN__LOG_OUTPUTS_MAX];
    int nsink;
    char category[LOG_CATEGORY_SIZE];
} log_builtin = {
    {{STDERR_FILENO, false, ZN__LOG_ALL_LEVELS}}, 1, LOG_DEFAULT_CATEGORY};

static _Thread_local struct {
    bool busy;           /* inside zn_log_writev(): no recursion */
    uint32_t suppressed; /* to report after this thread's next message */
    time_t stamp_sec;
    char stamp[24]; /* "2026-11-28 03:04:05" for stamp_sec */
} log_tls;


/* ---- the zlog backend, compiled only when the build found zlog ---------- */

#if ZN_HAVE_ZLOG

static zlog_category_t *log_zlog_cat; /* NULL while zlog is closed */


/* zlog has no TRACE; such messages go out as DEBUG. */
static int
log_zlog_level(zn_log_level_t level)
{
    static const int map[] = {ZLOG_LEVEL_DEBUG, ZLOG_LEVEL_DEBUG,
                              ZLOG_LEVEL_INFO,  ZLOG_LEVEL_WARN,
                              ZLOG_LEVEL_ERROR, ZLOG_LEVEL_FATAL};

    return map[level];
}


/*
 * zlog_init() works once per process and zlog_reload() only after it; a
 * failed reload keeps zlog's previous configuration, which is the rule of
 * zn_log_init(). The level filter is set to the lowest level that one of
 * the category's rules takes, so the facade formats nothing zlog would drop.
 */
static int
log_zlog_open(log_src_t *src, const char *category, zn_log_level_t *level)
{
    const char *conf = src->path;
    zlog_category_t *cat;
    int lv;

    if ((log_zlog_cat == NULL ? zlog_init(conf) : zlog_reload(conf)) != 0) {
        snprintf(src->why, sizeof(src->why),
                 "%s: refused by zlog (ZLOG_PROFILE_ERROR=file shows why)",
                 conf);
        return ZN_EINVAL;
    }
    cat = zlog_get_category(category);
    if (cat == NULL) {
        if (log_zlog_cat == NULL)
            zlog_fini();
        return ZN_ENOMEM;
    }
    log_zlog_cat = cat;
    for (lv = ZN_LOG_TRACE; lv < ZN_LOG_OFF; lv++)
        if (zlog_level_enabled(cat, log_zlog_level(lv)))
            break;
    *level = lv;
    return 0;
}


static void
log_zlog_emit(zn_log_level_t level, const char *file, int line,
              const char *fmt, va_list ap)
{
    vzlog(log_zlog_cat, file, strlen(file), "", 0, line,
          log_zlog_level(level), fmt, ap);
}


static void
log_zlog_close(void)
{
    if (log_zlog_cat != NULL)
        zlog_fini();
    log_zlog_cat = NULL;
}


static const log_backend_t log_zlog_backend = {log_zlog_open, log_zlog_emit,
                                               log_zlog_close};
#define LOG_CONF_BACKEND (&log_zlog_backend)

#else
#define LOG_CONF_BACKEND (&log_builtin_backend)
#endif


/* ---- levels ------------------------------------------------------------- */

bool
zn_log_enabled(zn_log_level_t level)
{
    return (unsigned)level < ZN_LOG_OFF &&
           (int)level >= atomic_load_explicit(&log_level,
                                              memory_order_relaxed);
}


void
zn_log_set_level(zn_log_level_t level)
{
    if ((unsigned)level <= ZN_LOG_OFF)
        atomic_store_explicit(&log_level, level, memory_order_relaxed);
}


zn_log_level_t
zn_log_get_level(void)
{
    return atomic_load_explicit(&log_level, memory_order_relaxed);
}


int
zn_log_level_parse(const char *name, zn_log_level_t *level)
{
    size_t i;

    if (name == NULL || level == NULL)
        return ZN_EINVAL;
    for (i = 0; i < ZN__ARRAY_SIZE(log_level_names); i++) {
        if (strcasecmp(name, log_level_names[i]) == 0) {
            *level = (zn_log_level_t)i;
            return 0;
        }
    }
    return ZN_EINVAL;
}


const char *
zn_log_level_name(zn_log_level_t level)
{
    if ((unsigned)level >= ZN__ARRAY_SIZE(log_level_names))
        return "UNKNOWN";
    return log_level_names[level];
}


/* ---- configuration and handler ------------------------------------------ */

/*
 * Reads the whole file, once: the built-in backend parses this copy. A
 * missing file is ZN_ENOENT whatever the backend (zlog would take a path
 * it cannot stat for the text of a configuration). On error src->why says
 * what failed.
 */
static int
log_conf_read(log_src_t *src)
{
    struct stat st;
    size_t len = 0;
    ssize_t n;
    int fd, rc = 0;

    if ((fd = open(src->path, O_RDONLY | O_CLOEXEC)) < 0) {
        rc = -errno;
        goto why;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
        st.st_size > LOG_CONF_MAX) {
        rc = ZN_EINVAL;
        goto close_fd;
    }
    if ((src->text = zn__malloc((size_t)st.st_size + 1)) == NULL) {
        rc = ZN_ENOMEM;
        goto close_fd;
    }
    while (len < (size_t)st.st_size &&
           (n = read(fd, src->text + len, (size_t)st.st_size - len)) != 0) {
        if (n < 0 && errno != EINTR) {
            rc = -errno;
            zn__free(src->text);
            src->text = NULL;
            goto close_fd;
        }
        len += n > 0 ? (size_t)n : 0;
    }
    src->text[len] = '\0';
    src->len = len;
close_fd:
    zn__close_fd(fd);
why:
    if (rc != 0)
        snprintf(src->why, sizeof(src->why), "%s: %s", src->path,
                 rc == ZN_EINVAL ? "not a regular file of at most 1 MiB"
                                 : zn_strerror(rc));
    return rc;
}


/*
 * The file is read before the lock is taken, and the new backend is opened
 * before the old one is closed, so a failure at any step leaves the
 * configuration in force as it was; the reason is then logged through it.
 * A file goes to the backend the build chose; NULL always means the
 * built-in defaults.
 */
int
zn_log_init(const char *conf, const char *category)
{
    const log_backend_t *b = conf ? LOG_CONF_BACKEND : &log_builtin_backend;
    log_src_t src = {.path = conf};
    zn_log_level_t level = ZN_LOG_INFO;
    int rc;

    if (category == NULL)
        category = LOG_DEFAULT_CATEGORY;
    if (strlen(category) >= LOG_CATEGORY_SIZE ||
        !zn__log_is_word(category, "_-"))
        return ZN_EINVAL;
    if (log_tls.busy)
        return ZN_EBUSY;
    if (conf != NULL && (rc = log_conf_read(&src)) != 0)
        goto log_why;
    pthread_rwlock_wrlock(&log_lock);
    rc = b->open(&src, category, &level);
    if (rc == 0 && b != log_backend) {
        log_backend->close();
        log_backend = b;
    }
    if (rc == 0) {
        /* Kept for the built-in lines, also after zlog is closed. */
        snprintf(log_builtin.category, sizeof(log_builtin.category), "%s",
                 category);
        atomic_store_explicit(&log_level, level, memory_order_relaxed);
    }
    pthread_rwlock_unlock(&log_lock);
    zn__free(src.text);
log_why:
    if (rc != 0 && src.why[0] != '\0')
        ZN_LOG(ZN_LOG_ERROR, "%s", src.why);
    return rc;
}


void
zn_log_fini(void)
{
    if (log_tls.busy)
        return;
    pthread_rwlock_wrlock(&log_lock);
    log_backend->close();
    log_backend = &log_builtin_backend;
    pthread_rwlock_unlock(&log_lock);
}


/* Taken for writing: once this returns, no thread is in the old handler. */
void
zn_log_set_handler(zn_log_cb cb, void *ud)
{
    if (log_tls.busy)
        return;
    pthread_rwlock_wrlock(&log_lock);
    log_cb = cb;
    log_cb_ud = cb != NULL ? ud : NULL;
    pthread_rwlock_unlock(&log_lock);
}


/* ---- formatting and dispatch -------------------------------------------- */

/*
 * Formats a message after the `hdr` bytes already in `buf`, keeping one
 * spare byte after the text for a newline. A message too long for `buf`
 * goes into a block from the allocator (the header copied in front), which
 * the caller frees when the result is not `buf`; if that allocation fails
 * the message is cut short instead. *len gets the length of the message.
 */
static char *
log_vformat(char *buf, size_t size, size_t hdr, size_t *len, const char *fmt,
            va_list ap)
{
    size_t room = size - hdr - 1;
    char *big;
    va_list aq;
    int n;

    va_copy(aq, ap);
    n = vsnprintf(buf + hdr, room, fmt, aq);
    va_end(aq);
    if (n < 0) {
        buf[hdr] = '\0';
        n = 0;
    }
    *len = (size_t)n < room ? (size_t)n : room - 1;
    if ((size_t)n < room || (big = zn__malloc(hdr + n + 2)) == NULL)
        return buf;
    memcpy(big, buf, hdr);
    vsnprintf(big + hdr, (size_t)n + 1, fmt, ap);
    *len = (size_t)n;
    return big;
}


/* The handler, when there is one, replaces the backend. Lock held. */
static void
log_dispatch(zn_log_level_t level, const char *file, int line,
             const char *fmt, va_list ap)
{
    char buf[LOG_LINE_SIZE];
    size_t len;
    char *msg;

    if (log_cb == NULL) {
        log_backend->emit(level, file, line, fmt, ap);
        return;
    }
    msg = log_vformat(buf, sizeof(buf), 0, &len, fmt, ap);
    log_cb(level, file, line, msg, log_cb_ud);
    if (msg != buf)
        zn__free(msg);
}


static void log_dispatchf(zn_log_level_t level, const char *file, int line,
                          const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void
log_dispatchf(zn_log_level_t level, const char *file, int line,
              const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    log_dispatch(level, file, line, fmt, ap);
    va_end(ap);
}


void
zn_log_write(zn_log_level_t level, const char *file, int line,
             const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    zn_log_writev(level, file, line, fmt, ap);
    va_end(ap);
}


/*
 * The level is checked again for callers that skip the macros. A message
 * logged from inside a handler (or a backend) is dropped rather than
 * recursing. errno is kept, so code may log between a failing call and its
 * look at errno.
 */
void
zn_log_writev(zn_log_level_t level, const char *file, int line,
              const char *fmt, va_list ap)
{
    int saved_errno = errno;
    uint32_t n;

    if (!zn_log_enabled(level) || fmt == NULL || log_tls.busy)
        return;
    if (file == NULL)
        file = "?";
    log_tls.busy = true;
    pthread_rwlock_rdlock(&log_lock);
    log_dispatch(level, file, line, fmt, ap);
    n = log_tls.suppressed;
    log_tls.suppressed = 0;
    if (n > 0)
        log_dispatchf(level, file, line,
                      "%" PRIu32 " similar messages suppressed", n);
    pthread_rwlock_unlock(&log_lock);
    log_tls.busy = false;
    errno = saved_errno;
}


/*
 * state holds the second of the window and the count allowed in it; a
 * compare-and-swap either opens a new window or takes one of its `burst`
 * slots. A clock reading older than the window (a thread preempted across
 * the second) counts against the newer window rather than reopening an old
 * one. The refused are counted; the thread that gets the next slot takes
 * the count and reports it after its message (see zn_log_writev()).
 */
bool
zn_log_ratelimit(zn_log_rl_t *rl, unsigned burst)
{
    uint64_t now = (zn_now_ms() / 1000) & UINT32_MAX;
    uint64_t old = atomic_load_explicit(&rl->state, memory_order_relaxed);
    uint64_t next;

    if (burst == 0)
        burst = 1;
    do {
        if ((old >> 32) < now)
            next = now << 32 | 1;
        else if ((old & UINT32_MAX) < burst)
            next = old + 1;
        else {
            atomic_fetch_add_explicit(&rl->suppressed, 1,
                                      memory_order_relaxed);
            return false;
        }
    } while (!atomic_compare_exchange_weak_explicit(
        &rl->state, &old, next, memory_order_relaxed, memory_order_relaxed));
    log_tls.suppressed +=
        atomic_exchange_explicit(&rl->suppressed, 0, memory_order_relaxed);
    return true;
}


/* ---- the built-in backend ----------------------------------------------- */

/*
 * "2026-11-28 03:04:05.123 WARN  [tid 1234] category file.c:42: ". The
 * date is formatted once per second per thread (localtime_r takes a lock).
 * The thread id is not cached: a forked child would show its parent's.
 */
static size_t
log_header(char *buf, size_t size, zn_log_level_t level, const char *file,
           int line)
{
    const char *base = strrchr(file, '/');
    struct timespec ts;
    struct tm tm;
    int n;

    clock_gettime(CLOCK_REALTIME, &ts);
    if (ts.tv_sec != log_tls.stamp_sec || log_tls.stamp[0] == '\0') {
        localtime_r(&ts.tv_sec, &tm);
        strftime(log_tls.stamp, sizeof(log_tls.stamp), "%Y-%m-%d %H:%M:%S",
                 &tm);
        log_tls.stamp_sec = ts.tv_sec;
    }
    n = snprintf(buf, size, "%s.%03ld %-5s [tid %ld] %s %.128s:%d: ",
                 log_tls.stamp, ts.tv_nsec / 1000000,
                 zn_log_level_name(level), (long)gettid(),
                 log_builtin.category, base != NULL ? base + 1 : file, line);
    return n > 0 ? (size_t)n : 0;
}


/* A short write (a pipe near full) is finished; nothing is reported. */
static void
log_write_all(int fd, const char *p, size_t n)
{
    ssize_t w;

    while (n > 0) {
        w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}


/*
 * One write() per line and output, so lines from threads never interleave.
 * The message is formatted only if one of the outputs takes its level:
 * the facade's filter lets through every level above the lowest one taken,
 * and a rule such as "=ERROR" takes fewer.
 */
static void
log_builtin_emit(zn_log_level_t level, const char *file, int line,
                 const char *fmt, va_list ap)
{
    char buf[LOG_LINE_SIZE], *out = NULL;
    size_t hdr = 0, len = 0;
    int i;

    for (i = 0; i < log_builtin.nsink; i++) {
        if (!(log_builtin.sink[i].levels & 1u << level))
            continue;
        if (out == NULL) {
            hdr = log_header(buf, sizeof(buf), level, file, line);
            out = log_vformat(buf, sizeof(buf), hdr, &len, fmt, ap);
            out[hdr + len] = '\n';
        }
        log_write_all(log_builtin.sink[i].fd, out, hdr + len + 1);
    }
    if (out != NULL && out != buf)
        zn__free(out);
}


static void
log_sinks_close(log_sink_t *sink, int n)
{
    int i;

    for (i = 0; i < n; i++)
        if (sink[i].own_fd)
            zn__close_fd(sink[i].fd);
}


/* Back to the defaults: every level to stderr. */
static void
log_builtin_close(void)
{
    log_sinks_close(log_builtin.sink, log_builtin.nsink);
    log_builtin.sink[0] =
        (log_sink_t){STDERR_FILENO, false, ZN__LOG_ALL_LEVELS};
    log_builtin.nsink = 1;
}


/* Opens every output of `c`, or none: on error those opened are closed. */
static int
log_sinks_open(const zn__log_conf_t *c, log_src_t *src, log_sink_t *sink)
{
    const zn__log_output_t *o;
    int i, fd;

    for (i = 0; i < c->nout; i++) {
        o = &c->out[i];
        fd = o->target == ZN__LOG_TO_STDOUT ? STDOUT_FILENO : STDERR_FILENO;
        if (o->target == ZN__LOG_TO_FILE &&
            (fd = open(o->path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC,
                       c->file_perms)) < 0) {
            fd = -errno;
            snprintf(src->why, sizeof(src->why), "%s:%d: cannot open %s: %s",
                     src->path, o->line, o->path, zn_strerror(fd));
            log_sinks_close(sink, i);
            return fd;
        }
        sink[i] = (log_sink_t){fd, o->target == ZN__LOG_TO_FILE, o->levels};
    }
    return 0;
}


/*
 * Everything that can fail (parsing, opening the new outputs) happens
 * before the old outputs are closed, so a failure changes nothing. Without
 * a file: every level to stderr, the facade at INFO.
 */
static int
log_builtin_open(log_src_t *src, const char *category, zn_log_level_t *level)
{
    log_sink_t sink[ZN__LOG_OUTPUTS_MAX];
    zn__log_conf_t c;
    int rc;

    if (src->path == NULL) {
        log_builtin_close();
        *level = ZN_LOG_INFO;
        return 0;
    }
    rc = zn__log_conf_parse(&c, src->path, src->text, src->len, category);
    if (rc != 0) {
        memcpy(src->why, c.why, sizeof(src->why));
        return rc;
    }
    if ((rc = log_sinks_open(&c, src, sink)) != 0)
        return rc;
    log_sinks_close(log_builtin.sink, log_builtin.nsink);
    memcpy(log_builtin.sink, sink, sizeof(sink[0]) * (size_t)c.nout);
    log_builtin.nsink = c.nout;
    *level = c.level;
    return 0;
}
