/*
 * test_log.c: the logging facade, the built-in backend and its reading of
 * configuration files, the rate limiter, and logging from many threads.
 *
 * The configuration files written here are valid zlog files whose "simple"
 * format mirrors the built-in line, so the shared tests pass with either
 * backend; the tests of the built-in reading of a file, and of zlog's own
 * behaviour, are compiled for their backend only.
 */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <regex.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "znet/config.h"
#include "znet/log.h"

#define TEST_TIMEOUT_S 20
#define NTHREADS 8
#define MSG_MAX 256
#define CAPTURE_MAX 64

#define FORMAT_SIMPLE                                                         \
    "[formats]\n"                                                             \
    "simple = \"%d(%F %T).%ms %-5V [tid %k] %c %f:%L: %m%n\"\n"

/* A logged line: time, level, thread id, category, file:line, message. */
#define LINE_RE                                                               \
    "^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3} "      \
    "(TRACE|DEBUG|INFO |WARN |ERROR|FATAL) \\[tid ([0-9]+)\\] "               \
    "([A-Za-z0-9_-]+) test_log\\.c:[0-9]+: (.*)$"

static char tmpdir[64];

/* What the test handler saw; it may be called from any thread. */
static struct {
    pthread_mutex_t mu;
    atomic_int count;
    atomic_ullong suppressed; /* sum of the "N similar..." lines */
    int nmsgs;
    zn_log_level_t levels[CAPTURE_MAX];
    int lines[CAPTURE_MAX];
    char msgs[CAPTURE_MAX][MSG_MAX];
    size_t last_len;
    const char *last_file;
} cap = {.mu = PTHREAD_MUTEX_INITIALIZER};


static void
capture_cb(zn_log_level_t level, const char *file, int line, const char *msg,
           void *ud)
{
    unsigned long long n;
    int i;

    atomic_fetch_add(&cap.count, 1);
    if (sscanf(msg, "%llu similar messages suppressed", &n) == 1)
        atomic_fetch_add(&cap.suppressed, n);
    if (ud != NULL)
        return; /* the threaded tests only count */
    pthread_mutex_lock(&cap.mu);
    i = cap.nmsgs < CAPTURE_MAX ? cap.nmsgs++ : CAPTURE_MAX - 1;
    cap.levels[i] = level;
    cap.lines[i] = line;
    snprintf(cap.msgs[i], MSG_MAX, "%s", msg);
    cap.last_len = strlen(msg);
    cap.last_file = file;
    pthread_mutex_unlock(&cap.mu);
}


static void
capture_reset(void)
{
    atomic_store(&cap.count, 0);
    atomic_store(&cap.suppressed, 0);
    cap.nmsgs = 0;
    cap.last_len = 0;
    cap.last_file = NULL;
}


static void
tmp_path(char *buf, size_t size, const char *name)
{
    snprintf(buf, size, "%s/%s", tmpdir, name);
}


static void
write_text(const char *path, const char *text, size_t len)
{
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}


/* Writes a zlog configuration that sends `category` at `level` to `out`. */
static void
write_rule_conf(const char *path, const char *category, const char *level,
                const char *out)
{
    char text[1024];
    int n = snprintf(text, sizeof(text),
                     "[global]\nstrict init = true\n%s"
                     "[rules]\n%s.%s \"%s\"; simple\n",
                     FORMAT_SIMPLE, category, level, out);

    write_text(path, text, (size_t)n);
}


/* The whole file, NUL-terminated; the caller frees it. */
static char *
read_text(const char *path)
{
    FILE *f = fopen(path, "r");
    char *buf;
    long n;

    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    n = ftell(f);
    rewind(f);
    buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    return buf;
}


static int
count_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;

    assert_non_null(d);
    while (readdir(d) != NULL)
        n++;
    closedir(d);
    return n;
}


/* Every test starts and ends with the defaults: INFO to stderr. */
static int
setup(void **state)
{
    alarm(TEST_TIMEOUT_S);
    zn_log_set_handler(NULL, NULL);
    zn_log_fini();
    assert_int_equal(zn_log_init(NULL, NULL), 0);
    capture_reset();
    return 0;
}


static int
teardown(void **state)
{
    zn_log_set_handler(NULL, NULL);
    zn_log_fini();
    zn_log_set_level(ZN_LOG_INFO);
    alarm(0);
    return 0;
}


static int
group_setup(void **state)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/znet-test-log.%ld",
             (long)getpid());
    return mkdir(tmpdir, 0700);
}


/* The directory is flat: the files the tests wrote, then itself. */
static int
group_teardown(void **state)
{
    DIR *d = opendir(tmpdir);
    struct dirent *e;
    char path[PATH_MAX];

    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "%s/%s", tmpdir, e->d_name);
        unlink(path);
    }
    closedir(d);
    return rmdir(tmpdir);
}


static void
test_level_names_parse_both_ways(void **state)
{
    zn_log_level_t lv;
    int i;

    for (i = ZN_LOG_TRACE; i <= ZN_LOG_OFF; i++) {
        assert_int_equal(zn_log_level_parse(zn_log_level_name(i), &lv), 0);
        assert_int_equal(lv, i);
    }
    assert_int_equal(zn_log_level_parse("wArN", &lv), 0);
    assert_int_equal(lv, ZN_LOG_WARN);
    assert_string_equal(zn_log_level_name(ZN_LOG_INFO), "INFO");
    lv = ZN_LOG_ERROR;
    assert_int_equal(zn_log_level_parse("loud", &lv), ZN_EINVAL);
    assert_int_equal(zn_log_level_parse("", &lv), ZN_EINVAL);
    assert_int_equal(zn_log_level_parse(NULL, &lv), ZN_EINVAL);
    assert_int_equal(lv, ZN_LOG_ERROR);
}


static void
test_enabled_follows_level(void **state)
{
    assert_int_equal(zn_log_get_level(), ZN_LOG_INFO);
    assert_false(zn_log_enabled(ZN_LOG_DEBUG));
    assert_true(zn_log_enabled(ZN_LOG_INFO));
    zn_log_set_level(ZN_LOG_ERROR);
    assert_int_equal(zn_log_get_level(), ZN_LOG_ERROR);
    assert_false(zn_log_enabled(ZN_LOG_WARN));
    assert_true(zn_log_enabled(ZN_LOG_FATAL));
    zn_log_set_level(ZN_LOG_TRACE);
    assert_true(zn_log_enabled(ZN_LOG_TRACE));
    assert_false(zn_log_enabled(ZN_LOG_OFF));
    zn_log_set_level(ZN_LOG_OFF);
    assert_false(zn_log_enabled(ZN_LOG_FATAL));
    zn_log_set_level((zn_log_level_t)42);
    assert_int_equal(zn_log_get_level(), ZN_LOG_OFF);
}


static int
bump(int *calls)
{
    return ++*calls;
}


static void
test_filtered_arguments_are_not_evaluated(void **state)
{
    int calls = 0;

    zn_log_set_handler(capture_cb, NULL);
    zn_log_set_level(ZN_LOG_WARN);
    ZN_LOG(ZN_LOG_DEBUG, "filtered %d", bump(&calls));
    ZN_LOG(ZN_LOG_INFO, "filtered %d", calls++);
    ZN_LOG_RL(ZN_LOG_TRACE, 5, "filtered %d", bump(&calls));
    assert_int_equal(calls, 0);
    assert_int_equal(atomic_load(&cap.count), 0);
    ZN_LOG(ZN_LOG_WARN, "kept %d", bump(&calls));
    assert_int_equal(calls, 1);
    assert_int_equal(atomic_load(&cap.count), 1);
    zn_log_write(ZN_LOG_DEBUG, __FILE__, __LINE__, "direct, filtered");
    assert_int_equal(atomic_load(&cap.count), 1);
}


static void
test_handler_gets_formatted_message(void **state)
{
    int line;

    zn_log_set_handler(capture_cb, NULL);
    line = __LINE__ + 1;
    ZN_LOG(ZN_LOG_ERROR, "hello %s %d", "world", 42);
    assert_int_equal(cap.nmsgs, 1);
    assert_string_equal(cap.msgs[0], "hello world 42");
    assert_int_equal(cap.levels[0], ZN_LOG_ERROR);
    assert_int_equal(cap.lines[0], line);
    assert_string_equal(cap.last_file, __FILE__);
}


static void
test_handler_gets_long_message_whole(void **state)
{
    size_t n = 10000;
    char *big = malloc(n + 1);

    assert_non_null(big);
    memset(big, 'x', n);
    big[n] = '\0';
    zn_log_set_handler(capture_cb, NULL);
    ZN_LOG(ZN_LOG_WARN, "<%s>", big);
    assert_int_equal(cap.last_len, n + 2);
    free(big);
}


/* A handler that logs: its own message must not recurse. */
static void
reentrant_cb(zn_log_level_t level, const char *file, int line,
             const char *msg, void *ud)
{
    (*(int *)ud)++;
    errno = 0;
    ZN_LOG(ZN_LOG_ERROR, "from inside the handler");
    assert_int_equal(zn_log_init(NULL, NULL), ZN_EBUSY);
}


static void
test_handler_logging_does_not_recurse(void **state)
{
    int calls = 0;

    zn_log_set_handler(reentrant_cb, &calls);
    errno = EAGAIN;
    ZN_LOG(ZN_LOG_ERROR, "outer");
    assert_int_equal(errno, EAGAIN);
    assert_int_equal(calls, 1);
}


/* One call site, limited to 3 lines per second. */
static void
log_limited(int i)
{
    ZN_LOG_RL(ZN_LOG_WARN, 3, "limited %d", i);
}


static void
wait_for_next_second(void)
{
    uint64_t s = zn_now_ms() / 1000;

    while (zn_now_ms() / 1000 == s)
        usleep(2000);
}


static void
test_ratelimit_allows_burst_then_reports_suppressed(void **state)
{
    int i;

    zn_log_set_handler(capture_cb, NULL);
    wait_for_next_second();
    for (i = 0; i < 10; i++)
        log_limited(i);
    assert_int_equal(cap.nmsgs, 3);
    assert_string_equal(cap.msgs[2], "limited 2");
    wait_for_next_second();
    log_limited(10);
    log_limited(11);
    assert_int_equal(cap.nmsgs, 6);
    assert_string_equal(cap.msgs[3], "limited 10");
    assert_string_equal(cap.msgs[4], "7 similar messages suppressed");
    assert_int_equal(cap.levels[4], ZN_LOG_WARN);
    assert_int_equal(cap.lines[4], cap.lines[3]);
    assert_string_equal(cap.msgs[5], "limited 11");
}


static void
test_ratelimit_zero_burst_counts_as_one(void **state)
{
    static zn_log_rl_t rl;

    wait_for_next_second();
    assert_true(zn_log_ratelimit(&rl, 0));
    assert_false(zn_log_ratelimit(&rl, 0));
    assert_int_equal(atomic_load(&rl.suppressed), 1);
}


static zn_log_rl_t shared_rl;

struct rl_result {
    int allowed;
    int refused;
};


static void *
rl_thread(void *arg)
{
    struct rl_result *r = arg;
    int i;

    for (i = 0; i < 5000; i++) {
        if (zn_log_ratelimit(&shared_rl, 100)) {
            r->allowed++;
            ZN_LOG(ZN_LOG_INFO, "allowed");
        } else {
            r->refused++;
        }
    }
    return NULL;
}


/*
 * Eight threads share one limiter: no window lets more than `burst` through,
 * and every refusal is reported exactly once (or still waits in the
 * limiter), whatever the interleaving.
 */
static void
test_ratelimit_is_exact_across_threads(void **state)
{
    pthread_t th[NTHREADS];
    struct rl_result r[NTHREADS] = {{0}};
    uint64_t first, last;
    int i, allowed = 0, refused = 0;

    zn_log_set_handler(capture_cb, &cap);
    first = zn_now_ms() / 1000;
    for (i = 0; i < NTHREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, rl_thread, &r[i]), 0);
    for (i = 0; i < NTHREADS; i++) {
        pthread_join(th[i], NULL);
        allowed += r[i].allowed;
        refused += r[i].refused;
    }
    last = zn_now_ms() / 1000;
    assert_int_equal(allowed + refused, NTHREADS * 5000);
    assert_true(allowed >= 100);
    assert_true((uint64_t)allowed <= 100 * (last - first + 1));
    assert_int_equal(atomic_load(&cap.suppressed) +
                         atomic_load(&shared_rl.suppressed),
                     refused);
}


static void
test_missing_conf_is_enoent(void **state)
{
    zn_log_set_level(ZN_LOG_DEBUG);
    assert_int_equal(zn_log_init("/nonexistent/znet/log.conf", "server"),
                     ZN_ENOENT);
    assert_int_equal(zn_log_init(tmpdir, "server"), ZN_EINVAL);
    assert_int_equal(zn_log_get_level(), ZN_LOG_DEBUG);
}


static void
test_bad_category_is_einval(void **state)
{
    char conf[128];

    tmp_path(conf, sizeof(conf), "cat.conf");
    write_rule_conf(conf, "server", "INFO", "/dev/null");
    assert_int_equal(zn_log_init(conf, ""), ZN_EINVAL);
    assert_int_equal(zn_log_init(conf, "a b"), ZN_EINVAL);
    assert_int_equal(zn_log_init(conf, "a/b"), ZN_EINVAL);
}


/* Logs a line at ERROR and checks it landed, alone, at the end of `path`. */
static void
assert_logs_to(const char *path, const char *tag)
{
    char *text, *last;

    ZN_LOG(ZN_LOG_ERROR, "%s", tag);
    text = read_text(path);
    last = strstr(text, tag);
    assert_non_null(last);
    assert_string_equal(last + strlen(tag), "\n");
    free(text);
}


/* zlog takes the ones marked "lax" (it reads an unknown level as -1). */
static const struct {
    const char *text;
    bool lax;
} garbage_confs[] = {
    {"this is not a configuration\n", false},
    {"[bogus]\n", false},
    {"[rules\n", true},
    {"[rules]\nserver.INFO\n", false},
    {"[rules]\nserver.LOUD >stderr\n", true},
    {"[rules]\nserver.INFO >nowhere\n", false},
    {"[rules]\nserver INFO >stderr\n", false},
    {"[rules]\nserver.INFO \"/tmp/unterminated\n", false},
    {"[rules]\n[global]\n", false},
    {"\x01\x02\x03\x04\n\x7f\xff\xfe = \x80\n", false},
};


/*
 * Garbage of all kinds is refused with ZN_EINVAL and the configuration in
 * force (level, output file) stays as it was.
 */
static void
test_garbage_conf_keeps_previous(void **state)
{
    char conf[128], bad[128], out[128], noise[4096];
    size_t i;

    tmp_path(conf, sizeof(conf), "good.conf");
    tmp_path(bad, sizeof(bad), "bad.conf");
    tmp_path(out, sizeof(out), "good.log");
    write_rule_conf(conf, "server", "ERROR", out);
    assert_int_equal(zn_log_init(conf, "server"), 0);
    assert_int_equal(zn_log_get_level(), ZN_LOG_ERROR);
    for (i = 0; i < sizeof(garbage_confs) / sizeof(garbage_confs[0]); i++) {
        if (ZN_HAVE_ZLOG && garbage_confs[i].lax)
            continue;
        write_text(bad, garbage_confs[i].text, strlen(garbage_confs[i].text));
        assert_int_equal(zn_log_init(bad, "server"), ZN_EINVAL);
    }
    srand(7);
    for (i = 0; i < sizeof(noise); i++)
        noise[i] = (char)(rand() & 0xff);
    write_text(bad, noise, sizeof(noise));
    assert_int_equal(zn_log_init(bad, "server"), ZN_EINVAL);
    assert_int_equal(zn_log_get_level(), ZN_LOG_ERROR);
    assert_logs_to(out, "still here");
}


static void
sample_conf_path(char *buf, size_t size)
{
    const char *me = __FILE__;
    const char *t = strstr(me, "tests/test_log.c");

    /* CMake compiles with an absolute __FILE__; a relative one only works
     * from the source directory. */
    if (t == NULL)
        skip();
    snprintf(buf, size, "%.*sconf/log.conf", (int)(t - me), me);
    if (access(buf, R_OK) != 0)
        skip();
}


/* conf/log.conf: "server" logs from INFO, unnamed categories from WARN. */
static void
test_sample_conf_is_accepted(void **state)
{
    char conf[PATH_MAX];

    sample_conf_path(conf, sizeof(conf));
    zn_log_set_level(ZN_LOG_TRACE);
    assert_int_equal(zn_log_init(conf, "server"), 0);
    assert_int_equal(zn_log_get_level(), ZN_LOG_INFO);
    assert_int_equal(zn_log_init(conf, "other"), 0);
    assert_int_equal(zn_log_get_level(), ZN_LOG_WARN);
}


static void
test_fini_closes_output_file(void **state)
{
    char conf[128], out[128], *text;
    int before = count_open_fds();

    tmp_path(conf, sizeof(conf), "fini.conf");
    tmp_path(out, sizeof(out), "fini.log");
    write_rule_conf(conf, "server", "INFO", out);
    assert_int_equal(zn_log_init(conf, "server"), 0);
    assert_logs_to(out, "before fini");
    assert_true(count_open_fds() > before);
    zn_log_fini();
    assert_int_equal(count_open_fds(), before);
    zn_log_set_level(ZN_LOG_OFF); /* keep stderr quiet */
    ZN_LOG(ZN_LOG_ERROR, "after fini");
    zn_log_set_level(ZN_LOG_INFO);
    text = read_text(out);
    assert_null(strstr(text, "after fini"));
    free(text);
}


struct line_check {
    regex_t re;
    long tids[NTHREADS];
    int next_seq[NTHREADS];
    int lines;
};


/* One line: the layout, then "thread T seq S" in order with T's thread id. */
static void
check_line(struct line_check *lc, const char *line)
{
    regmatch_t m[5];
    int t, s;
    long tid;

    assert_int_equal(regexec(&lc->re, line, 5, m, 0), 0);
    assert_int_equal(strncmp(line + m[1].rm_so, "INFO ", 5), 0);
    assert_int_equal(strncmp(line + m[3].rm_so, "server", 6), 0);
    tid = strtol(line + m[2].rm_so, NULL, 10);
    assert_int_equal(sscanf(line + m[4].rm_so, "thread %d seq %d", &t, &s),
                     2);
    assert_true(t >= 0 && t < NTHREADS);
    assert_int_equal(tid, lc->tids[t]);
    assert_int_equal(s, lc->next_seq[t]);
    lc->next_seq[t]++;
    lc->lines++;
}


static void
check_log_file(struct line_check *lc, const char *path)
{
    char *text = read_text(path);
    char *line, *save = NULL;

    assert_int_equal(regcomp(&lc->re, LINE_RE, REG_EXTENDED), 0);
    assert_true(text[0] == '\0' || text[strlen(text) - 1] == '\n');
    for (line = strtok_r(text, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save))
        check_line(lc, line);
    regfree(&lc->re);
    free(text);
}


#define LINES_PER_THREAD 300

struct log_thread {
    int index;
    long tid;
};


static void *
log_thread(void *arg)
{
    struct log_thread *lt = arg;
    int i;

    lt->tid = (long)gettid();
    for (i = 0; i < LINES_PER_THREAD; i++)
        ZN_LOG(ZN_LOG_INFO, "thread %d seq %d", lt->index, i);
    return NULL;
}


/*
 * Eight threads log to one file: every line is whole and well formed, and
 * each thread's lines carry its thread id and come in its order.
 */
static void
test_threads_log_whole_lines_to_file(void **state)
{
    pthread_t th[NTHREADS];
    struct log_thread lt[NTHREADS];
    struct line_check lc = {.lines = 0};
    char conf[128], out[128];
    int i;

    tmp_path(conf, sizeof(conf), "threads.conf");
    tmp_path(out, sizeof(out), "threads.log");
    write_rule_conf(conf, "server", "INFO", out);
    assert_int_equal(zn_log_init(conf, "server"), 0);
    for (i = 0; i < NTHREADS; i++) {
        lt[i].index = i;
        assert_int_equal(pthread_create(&th[i], NULL, log_thread, &lt[i]),
                         0);
    }
    for (i = 0; i < NTHREADS; i++) {
        pthread_join(th[i], NULL);
        lc.tids[i] = lt[i].tid;
    }
    zn_log_fini();
    check_log_file(&lc, out);
    assert_int_equal(lc.lines, NTHREADS * LINES_PER_THREAD);
    for (i = 0; i < NTHREADS; i++)
        assert_int_equal(lc.next_seq[i], LINES_PER_THREAD);
}


static atomic_bool reconfig_stop;


static void *
spam_thread(void *arg)
{
    while (!atomic_load(&reconfig_stop))
        ZN_LOG(ZN_LOG_WARN, "spam %d", *(int *)arg);
    return NULL;
}


/*
 * Loggers keep going while the output file, the handler and the level
 * change under them: no torn line, no race (run under TSan), no crash.
 */
static void
test_reconfigure_while_threads_log(void **state)
{
    char conf[2][128], out[2][128];
    pthread_t th[NTHREADS];
    int idx[NTHREADS], i;

    for (i = 0; i < 2; i++) {
        tmp_path(conf[i], sizeof(conf[i]), i ? "re1.conf" : "re0.conf");
        tmp_path(out[i], sizeof(out[i]), i ? "re1.log" : "re0.log");
        write_rule_conf(conf[i], "server", "INFO", out[i]);
    }
    assert_int_equal(zn_log_init(conf[0], "server"), 0);
    atomic_store(&reconfig_stop, false);
    for (i = 0; i < NTHREADS; i++) {
        idx[i] = i;
        assert_int_equal(pthread_create(&th[i], NULL, spam_thread, &idx[i]),
                         0);
    }
    for (i = 0; i < 40; i++) {
        assert_int_equal(zn_log_init(conf[i & 1], "server"), 0);
        zn_log_set_handler(i % 3 == 0 ? capture_cb : NULL, &cap);
        zn_log_set_level(i % 5 == 0 ? ZN_LOG_ERROR : ZN_LOG_INFO);
        usleep(1000);
    }
    atomic_store(&reconfig_stop, true);
    for (i = 0; i < NTHREADS; i++)
        pthread_join(th[i], NULL);
    zn_log_fini();
    for (i = 0; i < 2; i++) {
        char *text = read_text(out[i]);
        assert_true(text[0] == '\0' || text[strlen(text) - 1] == '\n');
        free(text);
    }
}


#if !ZN_HAVE_ZLOG

static void
test_builtin_line_layout(void **state)
{
    char conf[128], out[128], *text;
    regmatch_t m[5];
    regex_t re;

    tmp_path(conf, sizeof(conf), "layout.conf");
    tmp_path(out, sizeof(out), "layout.log");
    write_rule_conf(conf, "server", "WARN", out);
    assert_int_equal(zn_log_init(conf, "server"), 0);
    ZN_LOG(ZN_LOG_WARN, "hello %d", 7);
    text = read_text(out);
    assert_int_equal(regcomp(&re, LINE_RE, REG_EXTENDED | REG_NEWLINE), 0);
    assert_int_equal(regexec(&re, text, 5, m, 0), 0);
    assert_int_equal(strncmp(text + m[1].rm_so, "WARN ", 5), 0);
    assert_int_equal(strtol(text + m[2].rm_so, NULL, 10), (long)gettid());
    assert_string_equal(text + m[4].rm_so, "hello 7\n");
    regfree(&re);
    free(text);
}


/* Writes `text` as the configuration, inits "server" with it. */
static int
init_with(const char *text)
{
    char conf[128];

    tmp_path(conf, sizeof(conf), "builtin.conf");
    write_text(conf, text, strlen(text));
    return zn_log_init(conf, "server");
}


static void
test_builtin_plain_keys(void **state)
{
    char out[128], text[256];

    tmp_path(out, sizeof(out), "plain.log");
    snprintf(text, sizeof(text),
             "# plain keys\nlevel = error\nfile = \"%s\"  # quoted\n", out);
    assert_int_equal(init_with(text), 0);
    assert_int_equal(zn_log_get_level(), ZN_LOG_ERROR);
    assert_logs_to(out, "plain key file");
    assert_int_equal(init_with("[global]\nlevel = trace\n"), 0);
    assert_int_equal(zn_log_get_level(), ZN_LOG_TRACE);
    assert_int_equal(init_with("level = noisy\n"), ZN_EINVAL);
    assert_int_equal(init_with("file =\n"), ZN_EINVAL);
}


#define LV(name) (1u << ZN_LOG_##name)
#define ALL_LEVELS ((1u << ZN_LOG_OFF) - 1)

/* Logs one line at each level, TRACE to FATAL, tagged with serial numbers
 * not used before; returns the first. */
static int
log_each_level(void)
{
    static int serial;
    int lv, first = serial;

    /* A filtered call evaluates no argument: the serial moves here. */
    for (lv = ZN_LOG_TRACE; lv < ZN_LOG_OFF; lv++)
        ZN_LOG(lv, "tag-%d-%s", first + lv, zn_log_level_name(lv));
    serial += ZN_LOG_OFF;
    return first;
}


/* The levels whose line from log_each_level() reached `path`: bit L. */
static unsigned
levels_found(const char *path, int first)
{
    char tag[64], *text;
    unsigned found = 0;
    int lv;

    if (access(path, F_OK) != 0)
        return 0;
    text = read_text(path);
    for (lv = ZN_LOG_TRACE; lv < ZN_LOG_OFF; lv++) {
        snprintf(tag, sizeof(tag), ": tag-%d-%s\n", first + lv,
                 zn_log_level_name(lv));
        if (strstr(text, tag) != NULL)
            found |= 1u << lv;
    }
    free(text);
    return found;
}


static unsigned
levels_written(const char *path)
{
    return levels_found(path, log_each_level());
}


/* levels_written() with the fd `fd` (1 or 2) sent to the file `path`. */
static unsigned
levels_written_to_fd(int fd, const char *path)
{
    int saved = dup(fd), f = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int first;

    assert_true(saved >= 0 && f >= 0);
    assert_int_equal(dup2(f, fd), fd);
    first = log_each_level();
    assert_int_equal(dup2(saved, fd), fd);
    close(saved);
    close(f);
    return levels_found(path, first);
}


static int init_fmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* init_with() on the text that `fmt` makes with its arguments. */
static int
init_fmt(const char *fmt, ...)
{
    char text[4096];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    return init_with(text);
}


static int init_rules(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

/* init_fmt() after "[formats]" with "simple" and "[rules]". */
static int
init_rules(const char *fmt, ...)
{
    char text[4096];
    size_t n =
        (size_t)snprintf(text, sizeof(text), "%s[rules]\n", FORMAT_SIMPLE);
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text + n, sizeof(text) - n, fmt, ap);
    va_end(ap);
    return init_with(text);
}


static void
test_builtin_bad_output_keeps_previous(void **state)
{
    char out[128];

    tmp_path(out, sizeof(out), "prev.log");
    assert_int_equal(init_rules("server.INFO \"%s\"; simple\n", out), 0);
    assert_int_equal(init_rules("server.ERROR \"/nonexistent/d/x\"; simple\n"),
                     ZN_ENOENT);
    assert_int_equal(zn_log_get_level(), ZN_LOG_INFO);
    assert_logs_to(out, "previous output");
}


/*
 * A rule's level selects what zlog's selects (its User's Guide, 5.5.1, and
 * src/rule.c): "LEVEL" that level and above, "=LEVEL" that level only,
 * "!LEVEL" all but that one, "*" all, names in any case. zlog's NOTICE
 * lies between INFO and WARN, and znet never logs it; TRACE goes to zlog
 * as DEBUG.
 */
static void
test_builtin_rule_levels_mean_zlogs(void **state)
{
    static const struct {
        const char *level;
        unsigned written;
        zn_log_level_t filter;
    } cases[] = {
        {"WARN", LV(WARN) | LV(ERROR) | LV(FATAL), ZN_LOG_WARN},
        {"=ERROR", LV(ERROR), ZN_LOG_ERROR},
        {"!WARN", ALL_LEVELS & ~LV(WARN), ZN_LOG_TRACE},
        {"*", ALL_LEVELS, ZN_LOG_TRACE},
        {"=DEBUG", LV(TRACE) | LV(DEBUG), ZN_LOG_TRACE},
        {"info", ALL_LEVELS & ~(LV(TRACE) | LV(DEBUG)), ZN_LOG_INFO},
        {"NOTICE", LV(WARN) | LV(ERROR) | LV(FATAL), ZN_LOG_WARN},
        {"=NOTICE", 0, ZN_LOG_OFF},
        {"!FATAL", ALL_LEVELS & ~LV(FATAL), ZN_LOG_TRACE},
        {"UNKNOWN", 0, ZN_LOG_OFF},
    };
    char out[128];
    unsigned got;
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(out, sizeof(out), "%s/levels-%zu.log", tmpdir, i);
        assert_int_equal(
            init_rules("server.%s \"%s\"; simple\n", cases[i].level, out), 0);
        assert_int_equal(zn_log_get_level(), cases[i].filter);
        zn_log_set_level(ZN_LOG_TRACE); /* only the rule filters */
        got = levels_written(out);
        if (got != cases[i].written)
            fail_msg("server.%s wrote levels %#x, not %#x", cases[i].level, got,
                     cases[i].written);
    }
}


/* Every rule whose category matches applies, each with its level. */
static void
test_builtin_all_matching_rules_apply(void **state)
{
    char a[128], b[128], c[128];
    int first;

    tmp_path(a, sizeof(a), "all-a.log");
    tmp_path(b, sizeof(b), "all-b.log");
    tmp_path(c, sizeof(c), "all-c.log");
    assert_int_equal(init_rules("*.ERROR \"%s\"; simple\n"
                                "server.=INFO \"%s\"; simple\n"
                                "other.* \"%s\"; simple\n",
                                a, b, c),
                     0);
    assert_int_equal(zn_log_get_level(), ZN_LOG_INFO);
    first = log_each_level();
    assert_int_equal(levels_found(a, first), LV(ERROR) | LV(FATAL));
    assert_int_equal(levels_found(b, first), LV(INFO));
    assert_int_equal(access(c, F_OK), -1);
}


/* "!" rules apply only when no other rule matched, and only the last. */
static void
test_builtin_wastebin_rule_is_last_and_only_unmatched(void **state)
{
    char a[128], b[128], c[128];

    tmp_path(a, sizeof(a), "bin-a.log");
    tmp_path(b, sizeof(b), "bin-b.log");
    tmp_path(c, sizeof(c), "bin-c.log");
    assert_int_equal(init_rules("!.* \"%s\"; simple\n"
                                "!.=INFO \"%s\"; simple\n",
                                a, b),
                     0);
    assert_int_equal(levels_written(b), LV(INFO));
    assert_int_equal(access(a, F_OK), -1);
    assert_int_equal(init_rules("!.* \"%s\"; simple\n"
                                "server.=WARN \"%s\"; simple\n",
                                a, c),
                     0);
    assert_int_equal(levels_written(c), LV(WARN));
    assert_int_equal(access(a, F_OK), -1);
}


/* "aa_" matches "aa" and "aa_xx"; other names match exactly (zlog's
 * User's Guide, 5.5.2). */
static void
test_builtin_category_match(void **state)
{
    static const struct {
        const char *category;
        zn_log_level_t filter;
    } cases[] = {{"server", ZN_LOG_WARN},
                 {"server_x", ZN_LOG_WARN},
                 {"server_x_y", ZN_LOG_WARN},
                 {"serv", ZN_LOG_ERROR},
                 {"serverx", ZN_LOG_OFF}};
    char conf[128], out[128];
    size_t i;

    tmp_path(conf, sizeof(conf), "builtin.conf");
    tmp_path(out, sizeof(out), "cat.log");
    assert_int_equal(init_rules("serv_.ERROR \"%s\"; simple\n"
                                "server_.WARN \"%s\"; simple\n",
                                out, out),
                     0);
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(zn_log_init(conf, cases[i].category), 0);
        if (zn_log_get_level() != cases[i].filter)
            fail_msg("category %s: level %d, not %d", cases[i].category,
                     zn_log_get_level(), cases[i].filter);
    }
}


/* A category that no rule takes logs nothing, as with zlog (not even to
 * stderr, nor to the file of another category's rule); so does a file
 * without rules (and without the plain keys). */
static void
test_builtin_unmatched_category_logs_nothing(void **state)
{
    char out[128];

    tmp_path(out, sizeof(out), "unmatched.log");
    assert_int_equal(init_rules("other.* \"%s\"; simple\n", out), 0);
    assert_int_equal(zn_log_get_level(), ZN_LOG_OFF);
    zn_log_set_level(ZN_LOG_TRACE);
    assert_int_equal(levels_written_to_fd(2, out), 0);
    assert_int_equal(init_with("# nothing but a comment\n"), 0);
    assert_int_equal(zn_log_get_level(), ZN_LOG_OFF);
}


static void
test_builtin_stdout_and_stderr_outputs(void **state)
{
    char out[128];

    tmp_path(out, sizeof(out), "fd.log");
    assert_int_equal(init_rules("server.=WARN >stdout; simple\n"), 0);
    assert_int_equal(levels_written_to_fd(1, out), LV(WARN));
    assert_int_equal(init_rules("server.=ERROR >stderr ; simple\n"), 0);
    assert_int_equal(levels_written_to_fd(2, out), LV(ERROR));
}


/* A rule without a format is accepted when zlog's default format is set
 * to the built-in line. */
static void
test_builtin_default_format(void **state)
{
    char out[128];

    tmp_path(out, sizeof(out), "default.log");
    assert_int_equal(init_fmt("[global]\ndefault format = \"%s\"\n"
                              "[rules]\nserver.=INFO \"%s\"\n"
                              "server.=WARN \"%s\";\n",
                              "%d(%F %T).%ms %-5V [tid %k] %c %f:%L: %m%n", out,
                              out),
                     0);
    assert_int_equal(levels_written(out), LV(INFO) | LV(WARN));
}


/* "file perms" sets the mode of the files the rules create. */
static void
test_builtin_file_perms(void **state)
{
    char out[128];
    mode_t old = umask(0);
    struct stat st;

    tmp_path(out, sizeof(out), "perms.log");
    assert_int_equal(init_fmt("[global]\nfile perms = 640\n%s"
                              "[rules]\nserver.* \"%s\"; simple\n",
                              FORMAT_SIMPLE, out),
                     0);
    umask(old);
    assert_int_equal(stat(out, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0640);
}


/*
 * A line ending in '\' goes on with the next one, joined as zlog joins
 * them: the blanks around the break are dropped. Comment lines in
 * between are skipped; a '#' inside quotes is kept.
 */
static void
test_builtin_joins_lines_as_zlog(void **state)
{
    char out[128];

    tmp_path(out, sizeof(out), "jo");
    assert_int_equal(init_rules("server.=ERROR \"%s \\\n"
                                "# a comment line\n"
                                "    ined#1.log\" ; simple # the end\n",
                                out),
                     0);
    tmp_path(out, sizeof(out), "joined#1.log");
    assert_int_equal(levels_written(out), LV(ERROR));
}


/* zn_log_init() opens the configuration file once. */
static void
test_builtin_reads_conf_once(void **state)
{
    char conf[128], buf[4096];
    int in, opens = 0;
    ssize_t n, i;
    struct inotify_event *ev;

    tmp_path(conf, sizeof(conf), "once.conf");
    write_rule_conf(conf, "server", "INFO", "/dev/null");
    in = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    assert_true(in >= 0);
    /* Closes are watched too: inotify merges identical events in a row. */
    assert_true(inotify_add_watch(in, conf, IN_OPEN | IN_CLOSE) >= 0);
    assert_int_equal(zn_log_init(conf, "server"), 0);
    while ((n = read(in, buf, sizeof(buf))) > 0)
        for (i = 0; i < n; i += (ssize_t)sizeof(*ev) + ev->len) {
            ev = (struct inotify_event *)(buf + i);
            opens += (ev->mask & IN_OPEN) != 0;
        }
    close(in);
    assert_int_equal(opens, 1);
}


#define B_FORMAT "simple = \"%d(%F %T).%ms %-5V [tid %k] %c %f:%L: %m%n\"\n"
#define B_RULES "[formats]\n" B_FORMAT "[rules]\n"

/*
 * What the built-in backend refuses: zn_log_init() fails, and the message
 * it logs names the file, the line and what is refused. ZN_ENOTSUP for
 * what zlog accepts, ZN_EINVAL for what zlog refuses too.
 */
static const struct {
    const char *text;
    int rc;
    int line;
    const char *why;
} refused_confs[] = {
    {B_RULES "server.INFO >syslog, LOG_LOCAL0; simple\n", ZN_ENOTSUP, 4,
     "syslog output"},
    {B_RULES "# a pipe\n\nserver.INFO |cat; simple\n", ZN_ENOTSUP, 6,
     "pipe output"},
    {B_RULES "server.INFO $myout; simple\n", ZN_ENOTSUP, 4,
     "user-defined output"},
    {B_RULES "server.INFO -\"/tmp/znet-x.log\"; simple\n", ZN_ENOTSUP, 4,
     "synchronous file output"},
    {B_RULES "server.INFO \"/tmp/znet-x.log\", 10MB * 3; simple\n", ZN_ENOTSUP,
     4, "file rotation"},
    {B_RULES "server.INFO \"/tmp/%d(%F).log\"; simple\n", ZN_ENOTSUP, 4,
     "'%' conversions"},
    {B_RULES "server.INFO >stdout, x; simple\n", ZN_ENOTSUP, 4,
     "options after \">stdout\""},
    {B_RULES "other.INFO >stderr; simple\nserver.INFO >stderr\n", ZN_ENOTSUP, 5,
     "rule without a format"},
    {"[formats]\n" B_FORMAT "other = \"%m%n\"\n", ZN_ENOTSUP, 3,
     "format \"%m%n\" is not supported"},
    {"[global]\ndefault format = \"%d %V %m%n\"\n", ZN_ENOTSUP, 2,
     "format \"%d %V %m%n\" is not supported"},
    {"[global]\n[levels]\nTRACE = 10, LOG_DEBUG\n", ZN_ENOTSUP, 3,
     "user-defined levels"},
    {"[global]\nstrict init = false\n", ZN_ENOTSUP, 2,
     "\"strict init = false\""},
    {"[global]\nreload  conf period = 1M\n", ZN_ENOTSUP, 2,
     "\"reload conf period\" is not supported"},
    {"[global]\nbuffer min = 1024\n", ZN_ENOTSUP, 2, "\"buffer min\""},
    {"[global]\nbuffer max = 2MB\n", ZN_ENOTSUP, 2, "\"buffer max\""},
    {"[global]\nrotate lock file = /tmp/zlog.lock\n", ZN_ENOTSUP, 2,
     "\"rotate lock file\""},
    {"[global]\nfsync period = 1K\n", ZN_ENOTSUP, 2, "\"fsync period\""},
    {"[global]\nlog level = INFO\n", ZN_ENOTSUP, 2, "\"log level\""},
    {"[global]\nuse_writer_thread = 1\n", ZN_ENOTSUP, 2,
     "\"use_writer_thread\""},
    {"[global]\nfifo_size = 4096\n", ZN_ENOTSUP, 2, "\"fifo_size\""},
    {B_RULES "server.TRACE >stderr; simple\n", ZN_EINVAL, 4,
     "unknown level \"TRACE\""},
    {B_RULES "server.=* >stderr; simple\n", ZN_EINVAL, 4,
     "unknown level \"*\""},
    {B_RULES "server.INFO >stderr; fancy\n", ZN_EINVAL, 4,
     "format \"fancy\" is not in [formats]"},
    {"[global]\nnot a key = 1\n", ZN_EINVAL, 2, "unknown [global] key"},
    {"[global]\nfile perms = 9\n", ZN_EINVAL, 2, "bad file perms"},
    {"strict init = true\n", ZN_EINVAL, 1, "outside any section"},
    {B_RULES "server.INFO \\\n", ZN_EINVAL, 4, "ends in '\\'"},
    {B_RULES "server.INFO \\\n  >stderr; simple\n", ZN_EINVAL, 4,
     "unknown level \"INFO>stderr;\""},
    {"[rules]\n[formats]\n", ZN_EINVAL, 2, "out of zlog's order"},
    {"[global]\n\n[global]\n", ZN_EINVAL, 3, "out of zlog's order"},
};


static void
test_builtin_refusals_name_the_line(void **state)
{
    char out[128], where[160];
    size_t i;

    tmp_path(out, sizeof(out), "refused.log");
    for (i = 0; i < sizeof(refused_confs) / sizeof(refused_confs[0]); i++) {
        assert_int_equal(init_rules("server.=WARN \"%s\"; simple\n", out), 0);
        zn_log_set_handler(capture_cb, NULL);
        capture_reset();
        snprintf(where, sizeof(where), "%s/builtin.conf:%d: ", tmpdir,
                 refused_confs[i].line);
        if (init_with(refused_confs[i].text) != refused_confs[i].rc ||
            cap.nmsgs != 1 || strstr(cap.msgs[0], where) != cap.msgs[0] ||
            strstr(cap.msgs[0], refused_confs[i].why) == NULL)
            fail_msg("case %zu: %d messages, the first \"%s\"", i, cap.nmsgs,
                     cap.nmsgs > 0 ? cap.msgs[0] : "");
        assert_int_equal(cap.levels[0], ZN_LOG_ERROR);
        zn_log_set_handler(NULL, NULL);
        assert_int_equal(levels_written(out), LV(WARN));
    }
}


/* Rules and formats beyond what the backend holds are refused. */
static void
test_builtin_refuses_too_many_rules_and_formats(void **state)
{
    char text[4096];
    size_t n;
    int i;

    zn_log_set_handler(capture_cb, NULL);
    n = (size_t)snprintf(text, sizeof(text), "%s", B_RULES);
    for (i = 0; i < 9; i++)
        n += (size_t)snprintf(text + n, sizeof(text) - n,
                              "server.* >stderr; simple\n");
    assert_int_equal(init_with(text), ZN_ENOTSUP);
    assert_non_null(strstr(cap.msgs[0], "builtin.conf:12: more than 8 rules"));
    n = (size_t)snprintf(text, sizeof(text), "[formats]\n");
    for (i = 0; i < 17; i++)
        n += (size_t)snprintf(text + n, sizeof(text) - n, "f%d = %s", i,
                              strchr(B_FORMAT, '"'));
    assert_int_equal(init_with(text), ZN_ENOTSUP);
    assert_non_null(strstr(cap.msgs[1], "builtin.conf:18: more than 16 "));
}

#define BACKEND_TESTS                                                          \
    T(test_builtin_line_layout), T(test_builtin_plain_keys),                   \
        T(test_builtin_bad_output_keeps_previous),                             \
        T(test_builtin_rule_levels_mean_zlogs),                                \
        T(test_builtin_all_matching_rules_apply),                              \
        T(test_builtin_wastebin_rule_is_last_and_only_unmatched),              \
        T(test_builtin_category_match),                                        \
        T(test_builtin_unmatched_category_logs_nothing),                       \
        T(test_builtin_stdout_and_stderr_outputs),                             \
        T(test_builtin_default_format), T(test_builtin_file_perms),            \
        T(test_builtin_joins_lines_as_zlog), T(test_builtin_reads_conf_once),  \
        T(test_builtin_refusals_name_the_line),                                \
        T(test_builtin_refuses_too_many_rules_and_formats)

#else /* ZN_HAVE_ZLOG */

/* zlog has no TRACE: such a message goes out under DEBUG. */
static void
test_zlog_trace_goes_out_as_debug(void **state)
{
    char conf[128], out[128], *text;

    tmp_path(conf, sizeof(conf), "trace.conf");
    tmp_path(out, sizeof(out), "trace.log");
    write_rule_conf(conf, "server", "DEBUG", out);
    assert_int_equal(zn_log_init(conf, "server"), 0);
    assert_int_equal(zn_log_get_level(), ZN_LOG_TRACE);
    ZN_LOG(ZN_LOG_TRACE, "traced");
    text = read_text(out);
    assert_non_null(strstr(text, " DEBUG [tid "));
    assert_non_null(strstr(text, ": traced\n"));
    free(text);
}

#define BACKEND_TESTS                                                         \
    cmocka_unit_test_setup_teardown(test_zlog_trace_goes_out_as_debug,       \
                                    setup, teardown)

#endif


#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int
main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_level_names_parse_both_ways),
        T(test_enabled_follows_level),
        T(test_filtered_arguments_are_not_evaluated),
        T(test_handler_gets_formatted_message),
        T(test_handler_gets_long_message_whole),
        T(test_handler_logging_does_not_recurse),
        T(test_ratelimit_allows_burst_then_reports_suppressed),
        T(test_ratelimit_zero_burst_counts_as_one),
        T(test_ratelimit_is_exact_across_threads),
        T(test_missing_conf_is_enoent),
        T(test_bad_category_is_einval),
        T(test_garbage_conf_keeps_previous),
        T(test_sample_conf_is_accepted),
        T(test_fini_closes_output_file),
        T(test_threads_log_whole_lines_to_file),
        T(test_reconfigure_while_threads_log),
        BACKEND_TESTS,
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
