/*
 * log_conf.c: the built-in logging backend's reading of a zlog
 * configuration file.
 *
 * The file means what it means to zlog, or it is refused. zlog's grammar is
 * followed line by line (its src/conf.c, src/rule.c, src/format.c and
 * src/category.c, and its User's Guide, chapter 5): the sections, the
 * joining of lines, comments, the rule's category, level and output, and
 * which rules apply to a category. What the built-in backend can honour is
 * taken with zlog's meaning; the rest is refused with ZN_ENOTSUP when zlog
 * would accept it (syslog, pipes, rotation, other formats...) and with
 * ZN_EINVAL when zlog would not either. The reason, with the file and the
 * line, goes to c->why. docs/logging.md lists both sets.
 *
 * znet's levels map onto zlog's as the zlog backend maps them (TRACE is
 * sent to zlog as DEBUG), so a rule selects the same messages with either
 * backend.
 */
#include <ctype.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "internal.h"
#include "log_int.h"

#define LOG_LINE_MAX 4096 /* zlog's MAXLEN_CFG_LINE */
#define LOG_FORMATS_MAX 16
#define LOG_DEFAULT_PERMS 0600 /* zlog's default "file perms" */

/* Sections of a zlog configuration file, in the order zlog requires. */
enum {
    LOG_SEC_NONE,
    LOG_SEC_GLOBAL,
    LOG_SEC_LEVELS,
    LOG_SEC_FORMATS,
    LOG_SEC_RULES
};

/* Reading one file for one category. */
typedef struct {
    zn__log_conf_t *conf;
    const char *path;
    const char *category;
    int line;     /* the logical line being read (its first physical one) */
    int physical; /* physical lines read so far */
    int section;
    bool default_format; /* "default format" is the built-in line */
    const char *formats[LOG_FORMATS_MAX]; /* names, into the text */
    int nformats;
    zn__log_output_t rules[ZN__LOG_OUTPUTS_MAX]; /* rules that match */
    int nrules;
    zn__log_output_t wastebin; /* the last "!" rule */
    bool have_wastebin;
    zn__log_output_t plain; /* the plain "level" and "file" keys */
    zn_log_level_t plain_level;
    bool have_plain;
} log_reader_t;

/* zlog's default levels (src/level_list.c), and znet's levels as zlog sees
 * them: TRACE goes out as DEBUG. */
static const struct {
    const char *name;
    int value;
} log_zlog_levels[] = {{"DEBUG", 20},   {"INFO", 40},   {"NOTICE", 60},
                       {"WARN", 80},    {"ERROR", 100}, {"FATAL", 120},
                       {"UNKNOWN", 254}};
static const int log_zlog_value[ZN_LOG_OFF] = {20, 20, 40, 80, 100, 120};


static int log_refuse(log_reader_t *r, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Writes "file:line: what" to c->why and returns `rc`. */
static int
log_refuse(log_reader_t *r, int rc, const char *fmt, ...)
{
    char *why = r->conf->why;
    size_t size = sizeof(r->conf->why);
    va_list ap;
    int n;

    n = snprintf(why, size, "%s:%d: ", r->path, r->line);
    if (n < 0 || (size_t)n >= size)
        return rc;
    va_start(ap, fmt);
    vsnprintf(why + n, size - (size_t)n, fmt, ap);
    va_end(ap);
    return rc;
}


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


/*
 * The next logical line, gathered in place as zlog gathers it: each
 * physical line loses its leading and trailing blanks; one whose first
 * character is then '#' is skipped; one that ends in '\' loses it (and
 * the blanks before it) and goes on with the next line, with nothing in
 * between. A '#' outside double quotes then ends the logical line. NULL at
 * the end of the text; ZN_EINVAL in *rc for a line zlog cannot read.
 */
static char *
log_next_line(log_reader_t *r, char **pos, int *rc)
{
    char *line = NULL, *w = NULL, *p, *e;
    bool more = false, quoted = false;

    while (*pos != NULL) {
        p = *pos;
        e = strchr(p, '\n');
        *pos = e != NULL ? e + 1 : NULL;
        e = e != NULL ? e : p + strlen(p);
        r->physical++;
        while (p < e && isspace((unsigned char)*p))
            p++;
        while (e > p && isspace((unsigned char)e[-1]))
            e--;
        if (p == e || *p == '#')
            continue;
        if (line == NULL) {
            line = w = p;
            r->line = r->physical;
        }
        if ((more = e[-1] == '\\'))
            for (e--; e > p && isspace((unsigned char)e[-1]); e--)
                ;
        memmove(w, p, (size_t)(e - p));
        w += e - p;
        if (!more)
            break;
    }
    if (line == NULL)
        return NULL;
    *w = '\0';
    if (more || w - line > LOG_LINE_MAX) {
        *rc = log_refuse(r, ZN_EINVAL,
                         more ? "the last line ends in '\\'"
                              : "line longer than %d bytes",
                         LOG_LINE_MAX);
        return NULL;
    }
    for (p = line; *p != '\0'; p++) {
        if (*p == '"')
            quoted = !quoted;
        else if (*p == '#' && !quoted)
            *p = '\0';
    }
    return log_trim(line);
}


/* Letters and digits plus `extra`: zlog's rule for names. */
bool
zn__log_is_word(const char *s, const char *extra)
{
    if (*s == '\0')
        return false;
    for (; *s != '\0'; s++)
        if (!isalnum((unsigned char)*s) && strchr(extra, *s) == NULL)
            return false;
    return true;
}


/* "\"text\"" with nothing after the closing quote: the text, or NULL. */
static char *
log_unquote(char *s)
{
    size_t n = strlen(s);

    if (n < 2 || s[0] != '"' || s[n - 1] != '"')
        return NULL;
    s[n - 1] = '\0';
    return s + 1;
}


/* Splits "key = value" at the first '='; the key's blanks are squeezed to
 * single spaces, as zlog reads it word by word. */
static int
log_split_key(log_reader_t *r, char *line, char **key, char **val)
{
    char *eq = strchr(line, '='), *p, *q;

    if (eq == NULL)
        return log_refuse(r, ZN_EINVAL, "\"%s\" is not \"key = value\"", line);
    *eq = '\0';
    *key = log_trim(line);
    *val = log_trim(eq + 1);
    for (p = q = *key; *p != '\0'; p++)
        if (!isspace((unsigned char)*p) || !isspace((unsigned char)p[1]))
            *q++ = isspace((unsigned char)*p) ? ' ' : *p;
    *q = '\0';
    if (**key == '\0' || **val == '\0')
        return log_refuse(r, ZN_EINVAL, "a key or its value is empty");
    return 0;
}


/* The built-in backend's own keys, "level" and "file" (zlog has neither). */
static int
log_plain_key(log_reader_t *r, const char *key, char *val)
{
    char *path;

    r->have_plain = true;
    if (strcmp(key, "level") == 0) {
        if (zn_log_level_parse(val, &r->plain_level) != 0)
            return log_refuse(r, ZN_EINVAL, "unknown level \"%s\"", val);
        return 0;
    }
    path = val[0] == '"' ? log_unquote(val) : val;
    if (path == NULL || *path == '\0' || strlen(path) >= PATH_MAX ||
        strchr(path, '%') != NULL)
        return log_refuse(r, ZN_EINVAL, "bad file \"%s\"", val);
    r->plain.target = ZN__LOG_TO_FILE;
    r->plain.path = path;
    r->plain.line = r->line;
    return 0;
}


/* A pattern in [formats] or "default format": only the built-in line. */
static int
log_check_pattern(log_reader_t *r, const char *name, char *val)
{
    char *pattern = log_unquote(val);

    if (pattern == NULL)
        return log_refuse(r, ZN_EINVAL, "format \"%s\": no quoted pattern",
                          name);
    if (strcmp(pattern, ZN__LOG_BUILTIN_FORMAT) != 0)
        return log_refuse(r, ZN_ENOTSUP,
                          "format \"%s\" is not supported by the built-in "
                          "backend, which writes only \"%s\"",
                          pattern, ZN__LOG_BUILTIN_FORMAT);
    return 0;
}


/*
 * [global] (and the lines before any section, where zlog takes nothing but
 * the built-in backend takes its plain keys). Of zlog's keys, "strict init
 * = true" is what the backend does anyway, "file perms" is honoured, and
 * "default format" is taken if it is the built-in line; the others change
 * what zlog does in ways the backend cannot follow.
 */
static int
log_global_line(log_reader_t *r, char *line)
{
    static const char *const unsupported[] = {
        "reload conf period", "buffer min",   "buffer max",
        "rotate lock file",   "fsync period", "log level",
        "use_writer_thread",  "fifo_size"};
    char *key, *val, *end;
    unsigned long perms;
    size_t i;
    int rc;

    if ((rc = log_split_key(r, line, &key, &val)) != 0)
        return rc;
    if (strcmp(key, "level") == 0 || strcmp(key, "file") == 0)
        return log_plain_key(r, key, val);
    if (r->section == LOG_SEC_NONE)
        return log_refuse(r, ZN_EINVAL, "\"%s\" outside any section", key);
    if (strcmp(key, "strict init") == 0) {
        if (strncasecmp(val, "false", 5) == 0 &&
            (val[5] == '\0' || isspace((unsigned char)val[5])))
            return log_refuse(r, ZN_ENOTSUP,
                              "\"strict init = false\" is not supported by "
                              "the built-in backend, which refuses any line "
                              "it cannot honour");
        return 0;
    }
    if (strcmp(key, "file perms") == 0) {
        perms = strtoul(val, &end, 8);
        if (end == val || *end != '\0' || perms > 07777)
            return log_refuse(r, ZN_EINVAL, "bad file perms \"%s\"", val);
        r->conf->file_perms = (unsigned)perms;
        return 0;
    }
    if (strcmp(key, "default format") == 0) {
        if ((rc = log_check_pattern(r, key, val)) == 0)
            r->default_format = true;
        return rc;
    }
    for (i = 0; i < ZN__ARRAY_SIZE(unsupported); i++)
        if (strcmp(key, unsupported[i]) == 0)
            return log_refuse(r, ZN_ENOTSUP,
                              "\"%s\" is not supported by the built-in "
                              "backend",
                              key);
    return log_refuse(r, ZN_EINVAL, "unknown [global] key \"%s\"", key);
}


/* [formats]: "name = \"pattern\"", where the pattern is the built-in line. */
static int
log_format_line(log_reader_t *r, char *line)
{
    char *name, *val;
    int rc;

    if ((rc = log_split_key(r, line, &name, &val)) != 0)
        return rc;
    if (!zn__log_is_word(name, "_"))
        return log_refuse(r, ZN_EINVAL, "bad format name \"%s\"", name);
    if ((rc = log_check_pattern(r, name, val)) != 0)
        return rc;
    if (r->nformats == LOG_FORMATS_MAX)
        return log_refuse(r, ZN_ENOTSUP,
                          "more than %d formats are not supported by the "
                          "built-in backend",
                          LOG_FORMATS_MAX);
    r->formats[r->nformats++] = name;
    return 0;
}


/*
 * A rule's level, as zlog's src/rule.c reads it: "*" is every level,
 * "LEVEL" that level and above, "=LEVEL" that level only, "!LEVEL" every
 * level but that one. Levels are zlog's, in any case. A znet level is
 * taken if its zlog value (TRACE counts as DEBUG) passes the comparison.
 */
static int
log_rule_levels(log_reader_t *r, const char *s, unsigned *levels)
{
    char op = *s == '=' || *s == '!' ? *s++ : '.';
    int lv, v = -1;
    size_t i;

    *levels = 0;
    if (op == '.' && strcmp(s, "*") == 0) {
        *levels = ZN__LOG_ALL_LEVELS;
        return 0;
    }
    for (i = 0; i < ZN__ARRAY_SIZE(log_zlog_levels); i++)
        if (strcasecmp(s, log_zlog_levels[i].name) == 0)
            v = log_zlog_levels[i].value;
    if (v < 0)
        return log_refuse(r, ZN_EINVAL,
                          "unknown level \"%s\" (zlog's levels: DEBUG, INFO,"
                          " NOTICE, WARN, ERROR, FATAL, UNKNOWN; TRACE "
                          "messages count as DEBUG)",
                          s);
    for (lv = ZN_LOG_TRACE; lv < ZN_LOG_OFF; lv++) {
        int z = log_zlog_value[lv];

        if ((op == '.' && z >= v) || (op == '=' && z == v) ||
            (op == '!' && z != v))
            *levels |= 1u << lv;
    }
    return 0;
}


/* A quoted file path with nothing after it: no conversions, no rotation. */
static int
log_rule_file(log_reader_t *r, char *s, const char *options,
              zn__log_output_t *out)
{
    char *path = log_unquote(s);

    if (path == NULL || *path == '\0' || strchr(path, '"') != NULL ||
        strlen(path) >= PATH_MAX)
        return log_refuse(r, ZN_EINVAL, "bad file path %s", s);
    if (strchr(path, '%') != NULL)
        return log_refuse(r, ZN_ENOTSUP,
                          "'%%' conversions in a file path (\"%s\") are not "
                          "supported by the built-in backend",
                          path);
    if (options != NULL)
        return log_refuse(r, ZN_ENOTSUP,
                          "file rotation (\", %s\") is not supported by the "
                          "built-in backend",
                          options);
    out->target = ZN__LOG_TO_FILE;
    out->path = path;
    return 0;
}


/*
 * A rule's output, "output[, options]" as zlog's src/rule.c reads it. A
 * quoted path, >stdout and >stderr are honoured; zlog's -"path" (O_SYNC),
 * >syslog, |command and $name are not. zlog gives options after >stdout
 * and >stderr no meaning; they are refused rather than ignored.
 */
static int
log_rule_output(log_reader_t *r, char *s, zn__log_output_t *out)
{
    char *options = strchr(s, ',');

    if (options != NULL) {
        *options = '\0';
        options = log_trim(options + 1);
    }
    s = log_trim(s);
    switch (*s) {
    case '"':
        return log_rule_file(r, s, options, out);
    case '>':
        if (strncmp(s + 1, "syslog", 6) == 0)
            break;
        if (strcmp(s + 1, "stdout") != 0 && strcmp(s + 1, "stderr") != 0)
            return log_refuse(r, ZN_EINVAL, "unknown output \"%s\"", s);
        if (options != NULL)
            return log_refuse(r, ZN_ENOTSUP,
                              "options after \"%s\" are not supported by "
                              "the built-in backend",
                              s);
        out->target = strcmp(s + 1, "stdout") == 0 ? ZN__LOG_TO_STDOUT
                                                   : ZN__LOG_TO_STDERR;
        return 0;
    case '-':
        if (s[1] == '"')
            break;
        return log_refuse(r, ZN_EINVAL, "unknown output \"%s\"", s);
    case '|':
    case '$':
        break;
    default:
        return log_refuse(r, ZN_EINVAL, "unknown output \"%s\"", s);
    }
    return log_refuse(r, ZN_ENOTSUP,
                      "%s output (\"%s\") is not supported by the built-in "
                      "backend",
                      *s == '>'   ? "syslog"
                      : *s == '-' ? "synchronous file"
                      : *s == '|' ? "pipe"
                                  : "user-defined",
                      s);
}


/*
 * zlog's default format is not the built-in line, so a rule must name a
 * format from [formats] (each of which is the built-in line), unless
 * "default format" is the built-in line.
 */
static int
log_rule_format(log_reader_t *r, char *s)
{
    const char *name = s != NULL ? log_trim(s) : "";
    int i;

    if (*name == '\0') {
        if (r->default_format)
            return 0;
        return log_refuse(r, ZN_ENOTSUP,
                          "a rule without a format uses zlog's default "
                          "format, which the built-in backend does not "
                          "write; name a format \"%s\"",
                          ZN__LOG_BUILTIN_FORMAT);
    }
    for (i = 0; i < r->nformats; i++)
        if (strcmp(name, r->formats[i]) == 0)
            return 0;
    return log_refuse(r, ZN_EINVAL, "format \"%s\" is not in [formats]", name);
}


/* zlog: "*" matches all, "aa_" matches "aa" and "aa_xx", others match
 * exactly. */
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


/*
 * Every rule whose category matches applies; the "!" rule (zlog keeps the
 * last one) applies only if none did (zlog's src/category.c).
 */
static int
log_rule_add(log_reader_t *r, const char *category, const zn__log_output_t *out)
{
    if (strcmp(category, "!") == 0) {
        r->wastebin = *out;
        r->have_wastebin = true;
        return 0;
    }
    if (!log_rule_matches(category, r->category))
        return 0;
    if (r->nrules == ZN__LOG_OUTPUTS_MAX)
        return log_refuse(r, ZN_ENOTSUP,
                          "more than %d rules for category \"%s\" are not "
                          "supported by the built-in backend",
                          ZN__LOG_OUTPUTS_MAX, r->category);
    r->rules[r->nrules++] = *out;
    return 0;
}


/*
 * "category.level output[, options][; format]". Every rule is checked,
 * also those for other categories, so a file is accepted or refused
 * whatever the category.
 */
static int
log_rule_line(log_reader_t *r, char *line)
{
    char *action = line + strcspn(line, " \t"), *dot, *format;
    zn__log_output_t out = {.line = r->line};
    int rc;

    if (*action != '\0')
        *action++ = '\0';
    dot = strchr(line, '.');
    if (dot == NULL || dot == line || dot[1] == '\0')
        return log_refuse(r, ZN_EINVAL, "\"%s\" is not \"category.level\"",
                          line);
    *dot = '\0';
    if (!zn__log_is_word(line, "_-*!"))
        return log_refuse(r, ZN_EINVAL, "bad category \"%s\"", line);
    if ((rc = log_rule_levels(r, dot + 1, &out.levels)) != 0)
        return rc;
    if ((format = strchr(action, ';')) != NULL)
        *format++ = '\0';
    if (*log_trim(action) == '\0')
        return log_refuse(r, ZN_EINVAL, "a rule without an output");
    if ((rc = log_rule_output(r, action, &out)) != 0 ||
        (rc = log_rule_format(r, format)) != 0)
        return rc;
    return log_rule_add(r, line, &out);
}


/* "[name]"; zlog requires the sections in the order of the enum. */
static int
log_section_line(log_reader_t *r, char *line)
{
    static const char *const names[] = {"global", "levels", "formats", "rules"};
    size_t len = strlen(line);
    char *name;
    int i;

    if (line[len - 1] != ']')
        return log_refuse(r, ZN_EINVAL, "\"%s\" is not \"[section]\"", line);
    line[len - 1] = '\0';
    name = log_trim(line + 1);
    for (i = 0; i < (int)ZN__ARRAY_SIZE(names); i++)
        if (strcmp(name, names[i]) == 0)
            break;
    if (i == (int)ZN__ARRAY_SIZE(names))
        return log_refuse(r, ZN_EINVAL, "unknown section [%s]", name);
    if (i + 1 <= r->section)
        return log_refuse(r, ZN_EINVAL,
                          "section [%s] out of zlog's order: [global], "
                          "[levels], [formats], [rules], each once",
                          name);
    r->section = i + 1;
    return 0;
}


static int
log_one_line(log_reader_t *r, char *line)
{
    if (*line == '[')
        return log_section_line(r, line);
    switch (r->section) {
    case LOG_SEC_NONE:
    case LOG_SEC_GLOBAL:
        return log_global_line(r, line);
    case LOG_SEC_LEVELS:
        return log_refuse(r, ZN_ENOTSUP,
                          "user-defined levels ([levels]) are not supported "
                          "by the built-in backend");
    case LOG_SEC_FORMATS:
        return log_format_line(r, line);
    default:
        return log_rule_line(r, line);
    }
}


/*
 * The rules that apply, or else the plain keys, or else nothing: zlog
 * logs nothing for a category that no rule takes. The facade's level is
 * the lowest level that an output takes.
 */
static void
log_conf_finish(log_reader_t *r)
{
    zn__log_conf_t *c = r->conf;
    unsigned all = 0;
    int i, lv;

    if (r->nrules == 0 && r->have_wastebin)
        r->rules[r->nrules++] = r->wastebin;
    if (r->nrules > 0) {
        memcpy(c->out, r->rules, sizeof(r->rules[0]) * (size_t)r->nrules);
        c->nout = r->nrules;
    } else if (r->have_plain) {
        c->out[0] = r->plain;
        c->nout = 1;
    }
    for (i = 0; i < c->nout; i++)
        all |= c->out[i].levels;
    for (lv = ZN_LOG_TRACE; lv < ZN_LOG_OFF && !(all & 1u << lv); lv++)
        ;
    c->level =
        r->nrules == 0 && r->have_plain ? r->plain_level : (zn_log_level_t)lv;
}


int
zn__log_conf_parse(zn__log_conf_t *c, const char *path, char *text, size_t len,
                   const char *category)
{
    log_reader_t r = {.conf = c, .path = path, .category = category};
    char *pos = text, *line;
    int rc = 0;

    memset(c, 0, sizeof(*c));
    c->file_perms = LOG_DEFAULT_PERMS;
    r.plain = (zn__log_output_t){.target = ZN__LOG_TO_STDERR,
                                 .levels = ZN__LOG_ALL_LEVELS};
    r.plain_level = ZN_LOG_INFO;
    if (strlen(text) != len) {
        r.line = 1;
        for (line = text; (line = strchr(line, '\n')) != NULL; line++)
            r.line++;
        return log_refuse(&r, ZN_EINVAL, "a NUL byte: not a text file");
    }
    while (rc == 0 && (line = log_next_line(&r, &pos, &rc)) != NULL)
        if (*line != '\0')
            rc = log_one_line(&r, line);
    if (rc == 0)
        log_conf_finish(&r);
    return rc;
}
