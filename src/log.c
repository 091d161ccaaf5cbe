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
 * reads every configuration file given to zn_log_init().
 */
#include <ctype.h>
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
#include "znet/config.h"
#include "znet/log.h"

#if ZN_HAVE_ZLOG
#include <zlog.h>
#endif

#define LOG_LINE_SIZE 1024     /* a line that fits needs no allocation */
#define LOG_CATEGORY_SIZE 64
#define LOG_CONF_MAX (1 << 20) /* a larger configuration file is refused */
#define LOG_DEFAULT_CATEGORY "znet"
#define LOG_FILE_PERMS 0600    /* zlog's default */

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
} log_src_t;

typedef struct {
    /* Switches to `src` for `category`; stores the level the configuration
     * asks for. On error nothing changes. */
    int (*open)(log_src_t *src, const char *category, zn_log_level_t *level);
    void (*emit)(zn_log_level_t level, const char *file, int line,
                 const char *fmt, va_list ap);
    void (*close)(void);
} log_backend_t;

typedef enum { LOG_TO_STDERR, LOG_TO_STDOUT, LOG_TO_FILE } log_target_t;

typedef struct {
    zn_log_level_t level;
    log_target_t target;
    char path[PATH_MAX];
} log_output_t;

/* Sections of a zlog configuration file, in the order zlog requires. */
enum { LOG_SEC_NONE, LOG_SEC_GLOBAL, LOG_SEC_LEVELS, LOG_SEC_FORMATS,
       LOG_SEC_RULES };

/* What the built-in backend takes from a configuration file. */
typedef struct {
    const char *category;
    log_output_t out;    /* defaults, then plain keys, then the first rule */
    log_output_t orphan; /* the first "!" rule, used if no rule matched */
    int section;
    bool matched;
    bool have_orphan;
} log_conf_t;

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
    int fd;
    bool own_fd;
    char category[LOG_CATEGORY_SIZE];
} log_builtin = {STDERR_FILENO, false, LOG_DEFAULT_CATEGORY};

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

    if ((log_zlog_cat == NULL ? zlog_init(conf) : zlog_reload(conf)) != 0)
        return ZN_EINVAL;
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

/* Letters and digits plus `extra`: zlog's rule for category names. */
static bool
log_is_word(const char *s, const char *extra)
{
    if (*s == '\0')
        return false;
    for (; *s != '\0'; s++)
        if (!isalnum((unsigned char)*s) && strchr(extra, *s) == NULL)
            return false;
    return true;
}


/*
 * Reads the whole file, once: the built-in backend parses this copy. A
 * missing file is ZN_ENOENT whatever the backend (zlog would take a path
 * it cannot stat for the text of a configuration).
 */
static int
log_conf_read(log_src_t *src)
{
    struct stat st;
    size_t len = 0;
    ssize_t n;
    int fd, rc = 0;

    if ((fd = open(src->path, O_RDONLY | O_CLOEXEC)) < 0)
        return -errno;
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
    return rc;
}


/*
 * The file is read before the lock is taken, and the new backend is
 * opened before the old one is closed, so a failure at any step leaves the
 * configuration in force as it was. A file goes to the backend the build
 * chose; NULL always means the built-in defaults.
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
    if (strlen(category) >= LOG_CATEGORY_SIZE || !log_is_word(category, "_-"))
        return ZN_EINVAL;
    if (log_tls.busy)
        return ZN_EBUSY;
    if (conf != NULL && (rc = log_conf_read(&src)) != 0)
        return rc;
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


/* One write() per line, so lines from threads never interleave. */
static void
log_builtin_emit(zn_log_level_t level, const char *file, int line,
                 const char *fmt, va_list ap)
{
    char buf[LOG_LINE_SIZE];
    size_t hdr = log_header(buf, sizeof(buf), level, file, line);
    size_t len;
    char *out = log_vformat(buf, sizeof(buf), hdr, &len, fmt, ap);

    out[hdr + len] = '\n';
    log_write_all(log_builtin.fd, out, hdr + len + 1);
    if (out != buf)
        zn__free(out);
}


static void
log_builtin_close(void)
{
    if (log_builtin.own_fd)
        zn__close_fd(log_builtin.fd);
    log_builtin.fd = STDERR_FILENO;
    log_builtin.own_fd = false;
}


/* ---- the built-in backend's reading of a configuration file ------------- */

static char *
log_trim(char *s)
{
    char *end;

    while (isspace((unsigned char)*s))
        s++;
    end = s + strlen(s);
    while (end > s && isspace((unsigned char)end[-1]))
        *--end = '\0';
    return s;
}


/* zlog ends a line at a '#' that is not between double quotes. */
static char *
log_strip_comment(char *s)
{
    bool quoted = false;
    char *p;

    for (p = s; *p != '\0'; p++) {
        if (*p == '"')
            quoted = !quoted;
        else if (*p == '#' && !quoted)
            *p = '\0';
    }
    return s;
}


/* zlog continues a line that ends with a backslash. */
static void
log_conf_join_lines(char *text)
{
    char *p, *q;

    for (p = strchr(text, '\\'); p != NULL; p = strchr(p + 1, '\\')) {
        q = p + 1 + strspn(p + 1, " \t\r");
        if (*q == '\n')
            memset(p, ' ', (size_t)(q - p) + 1);
    }
}


/* zlog's conversion patterns (%d, %E(HOME)...) in a path are not handled. */
static int
log_set_path(log_output_t *out, const char *path)
{
    size_t n = strlen(path);

    if (n == 0 || n >= sizeof(out->path) || strchr(path, '%') != NULL)
        return ZN_EINVAL;
    memcpy(out->path, path, n + 1);
    out->target = LOG_TO_FILE;
    return 0;
}


/* zlog's level names: ours, plus NOTICE (between INFO and WARN) and
 * UNKNOWN (above FATAL). */
static int
log_zlog_level_parse(const char *name, zn_log_level_t *level)
{
    if (strcasecmp(name, "NOTICE") == 0)
        *level = ZN_LOG_WARN;
    else if (strcasecmp(name, "UNKNOWN") == 0)
        *level = ZN_LOG_OFF;
    else
        return zn_log_level_parse(name, level);
    return 0;
}


/*
 * A rule's level: "*" (all), "LEVEL" (that and above), "=LEVEL" (zlog: only
 * that one; here that and above) or "!LEVEL" (zlog: all but that one; here
 * all).
 */
static int
log_rule_level(const char *s, zn_log_level_t *level)
{
    char op = *s;
    int rc;

    if (op == '=' || op == '!')
        s++;
    if (strcmp(s, "*") == 0) {
        *level = ZN_LOG_TRACE;
        return 0;
    }
    rc = log_zlog_level_parse(s, level);
    if (rc == 0 && op == '!')
        *level = ZN_LOG_TRACE;
    return rc;
}


/*
 * A rule's output: "path", >stdout or >stderr. zlog's other outputs
 * (>syslog, |pipe, $user) are valid but not ours: they log to stderr. The
 * options after the output (rotation, "; format") are left to zlog.
 */
static int
log_rule_action(char *a, log_output_t *out)
{
    size_t n;
    char *end;

    out->target = LOG_TO_STDERR;
    switch (*a) {
    case '"':
        end = strchr(a + 1, '"');
        if (end == NULL)
            return ZN_EINVAL;
        *end = '\0';
        return log_set_path(out, a + 1);
    case '>':
        n = strcspn(++a, " \t,;");
        if (n == 6 && strncmp(a, "stdout", n) == 0)
            out->target = LOG_TO_STDOUT;
        else if (!(n == 6 && strncmp(a, "stderr", n) == 0) &&
                 !(n == 6 && strncmp(a, "syslog", n) == 0))
            return ZN_EINVAL;
        return 0;
    case '|':
    case '$':
        return 0;
    default:
        return ZN_EINVAL;
    }
}


/* zlog: "*" matches all, "aa_" matches "aa" and "aa_xx". */
static bool
log_rule_matches(const char *rule, const char *category)
{
    size_t n = strlen(rule);

    if (strcmp(rule, "*") == 0 || strcmp(rule, category) == 0)
        return true;
    if (rule[n - 1] != '_')
        return false;
    return strncmp(rule, category, n) == 0 ||
           (strlen(category) == n - 1 && strncmp(rule, category, n - 1) == 0);
}


/* "category.level  output[, options][; format]" */
static int
log_conf_rule(log_conf_t *c, char *line)
{
    char *action = line + strcspn(line, " \t");
    char *dot;
    log_output_t out;
    int rc;

    if (*action != '\0')
        *action++ = '\0';
    dot = strchr(line, '.');
    if (dot == NULL || dot == line || dot[1] == '\0')
        return ZN_EINVAL;
    *dot = '\0';
    if (!log_is_word(line, "_-*!"))
        return ZN_EINVAL;
    rc = log_rule_level(dot + 1, &out.level);
    if (rc == 0)
        rc = log_rule_action(log_trim(action), &out);
    if (rc != 0)
        return rc;
    if (!c->matched && log_rule_matches(line, c->category)) {
        c->out = out;
        c->matched = true;
    } else if (!c->have_orphan && strcmp(line, "!") == 0) {
        c->orphan = out;
        c->have_orphan = true;
    }
    return 0;
}


/*
 * "key = value", before any section or in [global]: "level" and "file" are
 * ours, other keys are zlog's settings and are skipped.
 */
static int
log_conf_keyval(log_conf_t *c, char *line)
{
    char *eq = strchr(line, '=');
    char *key, *val;
    size_t n;

    if (eq == NULL)
        return ZN_EINVAL;
    *eq = '\0';
    key = log_trim(line);
    val = log_trim(eq + 1);
    if (*val == '\0' || !log_is_word(key, " _"))
        return ZN_EINVAL;
    if (strcmp(key, "level") == 0)
        return zn_log_level_parse(val, &c->out.level);
    if (strcmp(key, "file") != 0)
        return 0;
    n = strlen(val);
    if (n >= 2 && val[0] == '"' && val[n - 1] == '"') {
        val[n - 1] = '\0';
        val++;
    }
    return log_set_path(&c->out, val);
}


/* "[name]"; zlog requires the sections in the order of the enum. */
static int
log_conf_section(log_conf_t *c, char *line)
{
    static const char *const names[] = {"global", "levels", "formats",
                                        "rules"};
    size_t len = strlen(line);
    char *name;
    int i;

    if (line[len - 1] != ']')
        return ZN_EINVAL;
    line[len - 1] = '\0';
    name = log_trim(line + 1);
    for (i = 0; i < (int)ZN__ARRAY_SIZE(names); i++)
        if (strcmp(name, names[i]) == 0)
            break;
    if (i == (int)ZN__ARRAY_SIZE(names) || i + 1 <= c->section)
        return ZN_EINVAL;
    c->section = i + 1;
    return 0;
}


static int
log_conf_line(log_conf_t *c, char *line)
{
    line = log_trim(log_strip_comment(line));
    if (*line == '\0')
        return 0;
    if (*line == '[')
        return log_conf_section(c, line);
    switch (c->section) {
    case LOG_SEC_NONE:
    case LOG_SEC_GLOBAL:
        return log_conf_keyval(c, line);
    case LOG_SEC_RULES:
        return log_conf_rule(c, line);
    default: /* [levels] and [formats]: "name = ..." lines left to zlog */
        return strchr(line, '=') != NULL ? 0 : ZN_EINVAL;
    }
}


/* A NUL byte means the file is not text; anything unknown is an error.
 * `text` is modified. */
static int
log_conf_parse(log_conf_t *c, char *text, size_t len)
{
    char *line, *next;
    int rc;

    if (strlen(text) != len)
        return ZN_EINVAL;
    log_conf_join_lines(text);
    for (line = text; line != NULL; line = next) {
        next = strchr(line, '\n');
        if (next != NULL)
            *next++ = '\0';
        rc = log_conf_line(c, line);
        if (rc != 0)
            return rc;
    }
    if (!c->matched && c->have_orphan)
        c->out = c->orphan;
    return 0;
}


static int
log_output_open(const log_output_t *out)
{
    int fd;

    if (out->target == LOG_TO_STDERR)
        return STDERR_FILENO;
    if (out->target == LOG_TO_STDOUT)
        return STDOUT_FILENO;
    fd = open(out->path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC,
              LOG_FILE_PERMS);
    return fd >= 0 ? fd : -errno;
}


/*
 * Everything that can fail (parsing, opening the new output)
 * happens before the old output is closed, so a failure changes nothing.
 */
static int
log_builtin_open(log_src_t *src, const char *category, zn_log_level_t *level)
{
    log_conf_t c = {.category = category,
                    .out = {.level = ZN_LOG_INFO, .target = LOG_TO_STDERR}};
    int fd, rc;

    if (src->path != NULL &&
        (rc = log_conf_parse(&c, src->text, src->len)) != 0)
        return rc;
    if ((fd = log_output_open(&c.out)) < 0)
        return fd;
    log_builtin_close();
    log_builtin.fd = fd;
    log_builtin.own_fd = c.out.target == LOG_TO_FILE;
    *level = c.out.level;
    return 0;
}
