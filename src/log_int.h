/*
 * log_int.h: what the built-in logging backend (log.c) takes from a zlog
 * configuration file, and the reader that produces it (log_conf.c).
 * Not installed.
 */
#ifndef ZNET_LOG_INT_H
#define ZNET_LOG_INT_H

#include <stdbool.h>
#include <stddef.h>

#include "znet/log.h"

/* The rules that may apply to one category; more are refused. */
#define ZN__LOG_OUTPUTS_MAX 8

/* The reason of a refusal: "file:line: what". */
#define ZN__LOG_WHY_SIZE 512

/* Every level from TRACE to FATAL: bit L stands for level L. */
#define ZN__LOG_ALL_LEVELS ((1u << ZN_LOG_OFF) - 1)

/*
 * The one line the built-in backend writes, as a zlog format: a [formats]
 * entry or a "default format" with exactly this pattern is accepted, any
 * other pattern is refused.
 */
#define ZN__LOG_BUILTIN_FORMAT "%d(%F %T).%ms %-5V [tid %k] %c %f:%L: %m%n"

typedef enum {
    ZN__LOG_TO_STDERR,
    ZN__LOG_TO_STDOUT,
    ZN__LOG_TO_FILE
} zn__log_target_t;

/* One destination and the levels it takes (a zlog rule, or the plain keys). */
typedef struct {
    zn__log_target_t target;
    unsigned levels;  /* bit L set: a message at level L is written */
    const char *path; /* ZN__LOG_TO_FILE: points into the file's text */
    int line;         /* where the rule is, for messages; 0: no file */
} zn__log_output_t;

/* The configuration of one category. */
typedef struct {
    zn__log_output_t out[ZN__LOG_OUTPUTS_MAX];
    int nout;             /* 0: nothing is logged */
    zn_log_level_t level; /* the facade's filter: the lowest level taken */
    unsigned file_perms;  /* [global] "file perms", 0600 by default */
    char why[ZN__LOG_WHY_SIZE]; /* set when the file is refused */
} zn__log_conf_t;

/*
 * Reads `text` (the whole file `path`, `len` bytes, NUL-terminated; it is
 * modified, and the paths in `c` point into it) with zlog's meaning, for
 * `category`. Returns 0; ZN_EINVAL for what zlog would not accept either;
 * ZN_ENOTSUP for what zlog accepts but the built-in backend cannot do. On
 * error c->why says where and what.
 */
int zn__log_conf_parse(zn__log_conf_t *c, const char *path, char *text,
                       size_t len, const char *category);

/* True if `s` is not empty and has only letters, digits and `extra`. */
bool zn__log_is_word(const char *s, const char *extra);

#endif /* ZNET_LOG_INT_H */
