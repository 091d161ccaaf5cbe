/*
 * replay_main.c: runs a libFuzzer target without libFuzzer, so that the
 * committed corpus and every past crasher are replayed as regular tests
 * by any compiler (gcc in the normal build, under ASan in the ASan build).
 *
 *   replay_<target> PATH...
 *
 * Each PATH is a file or a directory; every regular file of a directory
 * (not recursive, dot files skipped) is one input, given to
 * LLVMFuzzerTestOneInput() in a heap block of its exact size. A failed
 * check in the target aborts, which fails the test. Prints the number of
 * inputs run; exits 1 if a path cannot be read.
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


/* Reads a whole file into a new block of its exact size (1 byte for an
 * empty file, so that the target never gets NULL). */
static uint8_t *
read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *p = NULL;
    long n;

    if (f == NULL)
        return NULL;
    if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 ||
        fseek(f, 0, SEEK_SET) != 0)
        goto out;
    if ((p = malloc(n > 0 ? (size_t)n : 1)) == NULL)
        goto out;
    if (n > 0 && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
        goto out;
    }
    *len = (size_t)n;
out:
    fclose(f);
    return p;
}


static int
run_file(const char *path)
{
    size_t len = 0;
    uint8_t *p = read_file(path, &len);

    if (p == NULL) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    LLVMFuzzerTestOneInput(p, len);
    free(p);
    return 0;
}


/* Runs every regular file of dir; returns the count, or -1. */
static long
run_dir(const char *dir)
{
    char path[4096];
    struct dirent *e;
    struct stat st;
    long count = 0;
    DIR *d = opendir(dir);

    if (d == NULL) {
        fprintf(stderr, "replay: %s: %s\n", dir, strerror(errno));
        return -1;
    }
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        if (run_file(path) != 0) {
            count = -1;
            break;
        }
        count++;
    }
    closedir(d);
    return count;
}


int
main(int argc, char **argv)
{
    struct stat st;
    long total = 0, n;
    int i;

    for (i = 1; i < argc; i++) {
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
            return 1;
        }
        n = S_ISDIR(st.st_mode) ? run_dir(argv[i])
                                : (run_file(argv[i]) == 0 ? 1 : -1);
        if (n < 0)
            return 1;
        total += n;
    }
    printf("replay: %ld inputs passed\n", total);
    return 0;
}
