/*
 * test_pbsafe.c: safe protobuf decoding. Hostile bodies (10,000 levels of
 * nesting, allocation bombs, the quadratic merge, random and mutated bytes)
 * are refused without a crash and without going over budget; valid bodies
 * round-trip; every decoding leaves nothing allocated once freed.
 */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "demo.pb-c.h"
#include "hostile.pb-c.h"
#include "msg/pbsafe.h"
#include "znet/frame.h"
#include "znet/znet.pb-c.h"

/* A body built back to front, so that nesting costs no copies. */
typedef struct {
    uint8_t *b;
    size_t cap;
    size_t pos;  /* the body is b[pos .. cap) */
} rbuf_t;


static void
rbuf_init(rbuf_t *r, size_t cap)
{
    r->b = malloc(cap);
    assert_non_null(r->b);
    r->cap = cap;
    r->pos = cap;
}


static size_t
rbuf_len(const rbuf_t *r)
{
    return r->cap - r->pos;
}


static void
rbuf_prepend(rbuf_t *r, const void *p, size_t n)
{
    assert_true(n <= r->pos);
    r->pos -= n;
    memcpy(r->b + r->pos, p, n);
}


/* Prepends a length-delimited field's key and length for n bytes. */
static void
rbuf_prepend_len_key(rbuf_t *r, unsigned field, size_t n)
{
    uint8_t v[12];
    size_t k = 0;

    v[k++] = (uint8_t)(field << 3 | 2);
    do {
        v[k++] = (uint8_t)((n & 0x7F) | (n > 0x7F ? 0x80 : 0));
        n >>= 7;
    } while (n > 0);
    rbuf_prepend(r, v, k);
}


/*
 * A Node nested depth levels deep (the top-level message is level 1), each
 * level with a pad whose bytes would be malformed if read as a Node: the
 * scanner must not descend into bytes fields.
 */
static void
build_chain(rbuf_t *r, size_t depth, bool pad)
{
    static const uint8_t junk[] = {0xff, 0xff, 0xff};
    size_t level;

    rbuf_init(r, depth * 16 + 16);
    for (level = depth; level >= 1; level--) {
        if (level < depth)
            rbuf_prepend_len_key(r, 1, rbuf_len(r));
        if (pad) {
            rbuf_prepend(r, junk, sizeof(junk));
            rbuf_prepend_len_key(r, 2, sizeof(junk));
        }
    }
}


static uint8_t *
pack(const ProtobufCMessage *m, size_t *len)
{
    uint8_t *b;

    *len = protobuf_c_message_get_packed_size(m);
    b = malloc(*len ? *len : 1);
    assert_non_null(b);
    assert_int_equal(protobuf_c_message_pack(m, b), *len);
    return b;
}


static void
assert_all_freed(const zn__pb_alloc_t *a)
{
    assert_int_equal(a->live, 0);
    assert_int_equal(a->nlive, 0);
    assert_true(a->charged <= a->budget);
    assert_true(a->peak <= a->charged);
}


static void
test_deep_10000_rejected(void **state)
{
    ProtobufCMessage *m = (void *)1;
    zn__pb_alloc_t a;
    rbuf_t r;

    build_chain(&r, 10000, false);
    assert_int_equal(zn__pb_scan_depth(&zntest__node__descriptor,
                                       r.b + r.pos, rbuf_len(&r), 64),
                     ZN_ERANGE);
    assert_int_equal(zn__pb_unpack(&zntest__node__descriptor, r.b + r.pos,
                                   rbuf_len(&r), NULL, &m, &a),
                     ZN_ERANGE);
    assert_null(m);
    assert_int_equal(a.nallocs, 0);  /* refused before any allocation */
    assert_string_equal(zn__pb_err_reason(ZN_ERANGE), "too deep");
    free(r.b);
}


static void
test_depth_64_accepted_65_rejected(void **state)
{
    ProtobufCMessage *m;
    Zntest__Node *n;
    zn__pb_alloc_t a;
    size_t levels;
    rbuf_t r;

    build_chain(&r, 64, true);
    assert_int_equal(zn__pb_unpack(&zntest__node__descriptor, r.b + r.pos,
                                   rbuf_len(&r), NULL, &m, &a), 0);
    for (n = (Zntest__Node *)m, levels = 0; n != NULL; n = n->child) {
        assert_int_equal(n->pad.len, 3);
        levels++;
    }
    assert_int_equal(levels, 64);
    zn__pb_free(m, &a);
    assert_all_freed(&a);
    free(r.b);
    build_chain(&r, 65, true);
    assert_int_equal(zn__pb_unpack(&zntest__node__descriptor, r.b + r.pos,
                                   rbuf_len(&r), NULL, &m, &a), ZN_ERANGE);
    assert_null(m);
    free(r.b);
}


static void
test_depth_limit_is_configurable(void **state)
{
    zn__pb_opts_t o = {.max_depth = 3};
    ProtobufCMessage *m;
    zn__pb_alloc_t a;
    rbuf_t r;

    build_chain(&r, 3, false);
    assert_int_equal(zn__pb_unpack(&zntest__node__descriptor, r.b + r.pos,
                                   rbuf_len(&r), &o, &m, &a), 0);
    zn__pb_free(m, &a);
    free(r.b);
    build_chain(&r, 4, false);
    assert_int_equal(zn__pb_unpack(&zntest__node__descriptor, r.b + r.pos,
                                   rbuf_len(&r), &o, &m, &a), ZN_ERANGE);
    o.max_depth = ZN__PB_DEPTH_MAX + 1;
    assert_int_equal(zn__pb_unpack(&zntest__node__descriptor, r.b + r.pos,
                                   rbuf_len(&r), &o, &m, &a), ZN_EINVAL);
    free(r.b);
}


/* Siblings are not nesting: 1,000 sub-messages side by side are depth 2
 * (with a budget that fits their cost, about 100 bytes each). */
static void
test_wide_is_not_deep(void **state)
{
    static const uint8_t empty_tiny[] = {0x0a, 0x00};
    zn__pb_opts_t o = {.budget = 1 << 20};
    ProtobufCMessage *m;
    zn__pb_alloc_t a;
    rbuf_t r;
    int i;

    rbuf_init(&r, 2000);
    for (i = 0; i < 1000; i++)
        rbuf_prepend(&r, empty_tiny, sizeof(empty_tiny));
    assert_int_equal(zn__pb_scan_depth(&zntest__bomb__descriptor,
                                       r.b + r.pos, rbuf_len(&r), 2), 0);
    assert_int_equal(zn__pb_unpack(&zntest__bomb__descriptor, r.b + r.pos,
                                   rbuf_len(&r), &o, &m, &a), 0);
    assert_int_equal(((Zntest__Bomb *)m)->n_tiny, 1000);
    zn__pb_free(m, &a);
    assert_all_freed(&a);
    free(r.b);
}


/*
 * n repeated sub-messages of field `field`, two bytes each on the wire.
 * First shows the body is a bomb (unbudgeted, decoding costs more than the
 * default budget), then that the default budget refuses it before
 * allocating anything.
 */
static void
check_bomb(unsigned field, size_t n)
{
    uint8_t key[2] = {(uint8_t)(field << 3 | 2), 0x00};
    zn__pb_opts_t unbounded = {.budget = SIZE_MAX / 2};
    ProtobufCMessage *m;
    zn__pb_alloc_t a;
    size_t i, unbudgeted;
    rbuf_t r;

    rbuf_init(&r, 2 * n);
    for (i = 0; i < n; i++)
        rbuf_prepend(&r, key, sizeof(key));
    assert_int_equal(zn__pb_unpack(&zntest__bomb__descriptor, r.b + r.pos,
                                   rbuf_len(&r), &unbounded, &m, &a), 0);
    unbudgeted = a.charged;
    zn__pb_free(m, &a);
    assert_true(unbudgeted > zn__pb_default_budget(rbuf_len(&r)));
    assert_int_equal(zn__pb_unpack(&zntest__bomb__descriptor, r.b + r.pos,
                                   rbuf_len(&r), NULL, &m, &a), ZN_ENOBUFS);
    assert_null(m);
    assert_int_equal(a.nallocs, 0);
    assert_all_freed(&a);
    free(r.b);
}


static void
test_allocation_bomb_over_budget(void **state)
{
    check_bomb(1, 100000);  /* empty Tiny */
    check_bomb(2, 100000);  /* wide Fat */
    check_bomb(2, 1000);    /* small enough that the 64 KiB base matters */
}


/*
 * protobuf-c merges repeated occurrences of a singular message field by
 * copying: 20,000 occurrences would copy about 800 MB. A singular message
 * field given twice is refused (ZN_EEXIST) before anything is allocated,
 * whose body protobuf-c alone accepts; once is fine.
 */
static void
test_merge_bomb_refused(void **state)
{
    static const uint8_t occurrence[] = {0x0a, 0x03, 0x0a, 0x01, 0x05};
    ProtobufCMessage *m, *plain;
    zn__pb_alloc_t a;
    rbuf_t r;
    size_t i;

    rbuf_init(&r, 20000 * sizeof(occurrence));
    rbuf_prepend(&r, occurrence, sizeof(occurrence));
    assert_int_equal(zn__pb_unpack(&zntest__merge__descriptor, r.b + r.pos,
                                   rbuf_len(&r), NULL, &m, &a), 0);
    assert_int_equal(((Zntest__Merge *)m)->in->n_x, 1);
    zn__pb_free(m, &a);
    assert_all_freed(&a);
    for (i = 1; i < 20000; i++)
        rbuf_prepend(&r, occurrence, sizeof(occurrence));
    assert_int_equal(zn__pb_unpack(&zntest__merge__descriptor, r.b + r.pos,
                                   rbuf_len(&r), NULL, &m, &a), ZN_EEXIST);
    assert_int_equal(a.nallocs, 0);
    plain = protobuf_c_message_unpack(&zntest__merge__descriptor, NULL, 10,
                                      r.b + r.pos);
    assert_non_null(plain); /* two occurrences: protobuf-c merges them */
    protobuf_c_message_free_unpacked(plain, NULL);
    free(r.b);
}


static void
test_tiny_budget(void **state)
{
    zn__pb_opts_t o = {.budget = 10};
    ProtobufCMessage *m;
    zn__pb_alloc_t a;

    assert_int_equal(zn__pb_unpack(&demo__test_req__descriptor, NULL, 0, &o,
                                   &m, &a), ZN_ENOBUFS);
    assert_int_equal(a.nallocs, 0);
    assert_int_equal(zn__pb_default_budget(SIZE_MAX), SIZE_MAX);
    assert_int_equal(zn__pb_default_budget(1000), 1000 + ZN__PB_BUDGET_BASE);
    assert_int_equal(zn__pb_default_budget(0), ZN__PB_BUDGET_BASE);
}


static uint64_t
rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}


/* The decode bound's promise: what protobuf-c really allocates for a body
 * (charged as the budgeted allocator charges, the budget unlimited) is
 * never above the bound the scan gives. Counts the bodies checked. */
static size_t bound_checked;


static void
check_bound(const ProtobufCMessageDescriptor *d, const uint8_t *b,
            size_t len)
{
    static const uint8_t empty[1];
    ProtobufCMessage *m;
    zn__pb_alloc_t a;
    size_t bound;

    if (zn__pb_scan(d, b, len, ZN__PB_DEPTH_MAX, &bound) != 0)
        return;
    zn__pb_alloc_init(&a, SIZE_MAX);
    m = protobuf_c_message_unpack(d, &a.pa, len, len ? b : empty);
    if (a.charged > bound)
        fail_msg("%s, %zu bytes: protobuf-c charged %zu, the bound is %zu",
                 d->name, len, a.charged, bound);
    if (m != NULL)
        protobuf_c_message_free_unpacked(m, &a.pa);
    assert_int_equal(a.nlive, 0);
    bound_checked++;
}


/*
 * Decodes one hostile body: whatever it holds, the result is one of the
 * documented codes, the budget holds, and nothing stays allocated. When the
 * scanner calls the bytes malformed, protobuf-c must agree (the scanner
 * may not refuse what protobuf-c accepts); the bodies here are too short
 * to nest deep enough to hurt plain protobuf-c.
 */
static void
check_hostile(const ProtobufCMessageDescriptor *d, const uint8_t *b,
              size_t len)
{
    ProtobufCMessage *m, *plain;
    zn__pb_alloc_t a;
    int rc = zn__pb_unpack(d, b, len, NULL, &m, &a);

    assert_true(rc == 0 || rc == ZN_EPROTO || rc == ZN_ERANGE ||
                rc == ZN_ENOBUFS || rc == ZN_EEXIST);
    if (rc == 0)
        zn__pb_free(m, &a);
    else
        assert_null(m);
    assert_all_freed(&a);
    if (zn__pb_scan_depth(d, b, len, ZN__PB_DEPTH_MAX) == ZN_EPROTO) {
        plain = protobuf_c_message_unpack(d, NULL, len, b);
        assert_null(plain);
    }
    check_bound(d, b, len);
}


static const ProtobufCMessageDescriptor *const fuzz_types[] = {
    &zntest__node__descriptor,  &zntest__bomb__descriptor,
    &zntest__merge__descriptor, &zntest__shapes__descriptor,
    &demo__test_req__descriptor, &demo__echo_req__descriptor,
    &znet__error__descriptor,
};


static void
test_random_bytes_never_crash(void **state)
{
    uint64_t seed = 0x9E3779B97F4A7C15u;
    uint8_t b[256];
    size_t len, i, t;
    int n;

    for (n = 0; n < 20000; n++) {
        len = rng_next(&seed) % sizeof(b);
        for (i = 0; i < len; i++)
            b[i] = (uint8_t)rng_next(&seed);
        /* Half the cases: bytes with a bias towards valid keys, so that
         * decoding gets past the first field. */
        if (n % 2)
            for (i = 0; i < len; i += 3)
                b[i] = (uint8_t)(0x08 + (rng_next(&seed) % 4) * 8 +
                                 rng_next(&seed) % 3);
        for (t = 0; t < sizeof(fuzz_types) / sizeof(fuzz_types[0]); t++)
            check_hostile(fuzz_types[t], b, len);
    }
}


/* Every frame body in every file of `dir` (the fuzz corpus of the
 * dispatcher: streams of protocol v1 frames), as each test type. */
static void
check_corpus_bounds(const char *dir)
{
    char path[4096];
    struct dirent *e;
    uint8_t *buf;
    zn_frame_reason_t why;
    zn_frame_t f;
    size_t len, off, t;
    DIR *d;
    FILE *fp;

    assert_non_null(d = opendir(dir));
    assert_non_null(buf = malloc(1 << 20));
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        assert_non_null(fp = fopen(path, "rb"));
        len = fread(buf, 1, 1 << 20, fp);
        fclose(fp);
        for (off = 0; zn_frame_next(buf + off, len - off, UINT32_MAX, &f,
                                    &why) == 0;
             off += f.size)
            for (t = 0; t < sizeof(fuzz_types) / sizeof(fuzz_types[0]); t++)
                check_bound(fuzz_types[t], f.body, f.hdr.length);
    }
    closedir(d);
    free(buf);
}


/* Repeats one field (its key and value bytes) until the body is about
 * `size` bytes. */
static void
repeat_field(rbuf_t *r, const uint8_t *field, size_t flen, size_t size)
{
    size_t n;

    rbuf_init(r, size + flen);
    for (n = 0; n + flen <= size; n += flen)
        rbuf_prepend(r, field, flen);
}


/* One bytes field 1 of n bytes (a 3-byte length, n < 2^21). */
static void
long_bytes(rbuf_t *r, size_t n)
{
    uint8_t hdr[4] = {0x0a, (uint8_t)(0x80 | (n & 0x7f)),
                      (uint8_t)(0x80 | (n >> 7 & 0x7f)), (uint8_t)(n >> 14)};

    rbuf_init(r, n + sizeof(hdr));
    r->pos -= n;
    memset(r->b + r->pos, 'x', n);
    rbuf_prepend(r, hdr, sizeof(hdr));
}


typedef struct {
    const char *name;
    const ProtobufCMessageDescriptor *d;
    uint8_t field[12];
    size_t flen;         /* 0: one long bytes field */
} shape_t;

static const shape_t bomb_shapes[] = {
    {"unknown varint", &zntest__tiny__descriptor, {0x08, 0x01}, 2},
    {"unknown 64-bit", &zntest__tiny__descriptor,
     {0x09, 1, 2, 3, 4, 5, 6, 7, 8}, 9},
    {"unknown length", &zntest__tiny__descriptor, {0x0a, 0x00}, 2},
    {"unknown 32-bit", &zntest__tiny__descriptor, {0x0d, 1, 2, 3, 4}, 5},
    {"empty sub-messages", &zntest__bomb__descriptor, {0x0a, 0x00}, 2},
    {"wide sub-messages", &zntest__bomb__descriptor, {0x12, 0x00}, 2},
    {"empty repeated strings", &zntest__shapes__descriptor, {0x12, 0x00}, 2},
    {"unpacked repeated int32", &zntest__shapes__descriptor, {0x18, 0x01},
     2},
    {"packed int32, 1-byte values", &zntest__shapes__descriptor,
     {0x1a, 0x08, 1, 2, 3, 4, 5, 6, 7, 8}, 10},
    {"empty map entries", &zntest__shapes__descriptor, {0x22, 0x00}, 2},
    {"empty points", &zntest__shapes__descriptor, {0x0a, 0x00}, 2},
    {"empty string, singular", &demo__test_req__descriptor, {0x0a, 0x00},
     2},
    {"empty bytes, singular", &demo__echo_req__descriptor, {0x0a, 0x00}, 2},
    {"one long bytes field", &demo__echo_req__descriptor, {0}, 0},
};


/* The shape's body of about `size` bytes, its bound and protobuf-c's real
 * cost, printed with their ratio. */
static void
print_shape_bound(const shape_t *sh, const rbuf_t *r)
{
    ProtobufCMessage *m;
    zn__pb_alloc_t a;
    size_t bound;

    assert_int_equal(zn__pb_scan(sh->d, r->b + r->pos, rbuf_len(r),
                                 ZN__PB_DEPTH_MAX, &bound), 0);
    zn__pb_alloc_init(&a, SIZE_MAX);
    m = protobuf_c_message_unpack(sh->d, &a.pa, rbuf_len(r), r->b + r->pos);
    assert_non_null(m);
    print_message("bound %-28s %6zu B: real %8zu, bound %8zu (x%.2f)\n",
                  sh->name, rbuf_len(r), a.charged, bound,
                  (double)bound / (double)a.charged);
    protobuf_c_message_free_unpacked(m, &a.pa);
}


/*
 * The bound against protobuf-c's real allocations, over every shape that
 * makes decoding cost more than the body (unknown fields of each wire
 * type, empty strings and bytes, empty and wide sub-messages, packed and
 * unpacked repeats, map entries) at three sizes, and over every frame body
 * of the committed fuzz corpus as each test type (check_bound: never
 * below). Prints how close the bound is for each shape.
 */
static void
test_bound_is_never_below_real_allocations(void **state)
{
    static const size_t sizes[] = {10, 1000, 65536};
    size_t i, k, before;
    rbuf_t r;

    for (i = 0; i < sizeof(bomb_shapes) / sizeof(bomb_shapes[0]); i++)
        for (k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
            if (bomb_shapes[i].flen == 0)
                long_bytes(&r, sizes[k]);
            else
                repeat_field(&r, bomb_shapes[i].field, bomb_shapes[i].flen,
                             sizes[k]);
            before = bound_checked;
            check_bound(bomb_shapes[i].d, r.b + r.pos, rbuf_len(&r));
            assert_int_equal(bound_checked, before + 1);
            if (k == 2)
                print_shape_bound(&bomb_shapes[i], &r);
            free(r.b);
        }
    before = bound_checked;
    check_corpus_bounds(ZNET_TEST_CORPUS);
    assert_true(bound_checked > before + 100);
}


/* Valid nested bodies with a few bytes flipped, cut or widened. */
static void
test_mutated_bodies_never_crash(void **state)
{
    uint64_t seed = 42;
    uint8_t b[1024];
    size_t len, k, flips;
    rbuf_t r;
    int n;

    build_chain(&r, 40, true);
    assert_true(rbuf_len(&r) <= sizeof(b));
    for (n = 0; n < 20000; n++) {
        len = rbuf_len(&r);
        memcpy(b, r.b + r.pos, len);
        flips = 1 + rng_next(&seed) % 3;
        for (k = 0; k < flips; k++)
            b[rng_next(&seed) % len] = (uint8_t)rng_next(&seed);
        if (n % 4 == 0)
            len = rng_next(&seed) % len;
        check_hostile(&zntest__node__descriptor, b, len);
        check_hostile(&zntest__shapes__descriptor, b, len);
    }
    free(r.b);
}


/* Packs m, decodes it safely, packs the result: the same bytes. */
static void
check_round_trip(const ProtobufCMessage *m)
{
    ProtobufCMessage *out;
    zn__pb_alloc_t a;
    uint8_t *b, *b2;
    size_t len, len2;

    b = pack(m, &len);
    assert_int_equal(zn__pb_unpack(m->descriptor, b, len, NULL, &out, &a), 0);
    assert_ptr_equal(out->descriptor, m->descriptor);
    b2 = pack(out, &len2);
    assert_int_equal(len2, len);
    assert_memory_equal(b2, b, len);
    zn__pb_free(out, &a);
    assert_all_freed(&a);
    free(b);
    free(b2);
}


static void
test_valid_messages_round_trip(void **state)
{
    Demo__TestReq req = DEMO__TEST_REQ__INIT;
    Demo__TestRsp rsp = DEMO__TEST_RSP__INIT;
    Demo__EchoReq echo = DEMO__ECHO_REQ__INIT;
    Znet__Error err = ZNET__ERROR__INIT;
    Zntest__Point pt = ZNTEST__POINT__INIT, *pts[] = {&pt, &pt, &pt};
    Zntest__Shapes shapes = ZNTEST__SHAPES__INIT;
    char *names[] = {"a", "", "longer name"};
    int32_t nums[] = {0, -1, INT32_MAX, INT32_MIN};
    uint8_t *payload = malloc(1 << 20);

    assert_non_null(payload);
    memset(payload, 0x5A, 1 << 20);
    req.msg = "hi";
    rsp.res = "hello, i'm server";
    echo.payload.data = payload;
    echo.payload.len = 1 << 20;
    err.code = 1;
    err.message = "unknown cmd 9";
    pt.x = -5;
    pt.y = 70000;
    shapes.n_points = 3;
    shapes.points = pts;
    shapes.n_names = 3;
    shapes.names = names;
    shapes.n_nums = 4;
    shapes.nums = nums;
    check_round_trip(&req.base);
    check_round_trip(&rsp.base);
    check_round_trip(&echo.base);
    check_round_trip(&err.base);
    check_round_trip(&shapes.base);
    free(payload);
}


static void
test_empty_body_is_default_message(void **state)
{
    static const uint8_t none[1];
    ProtobufCMessage *m;
    zn__pb_alloc_t a;

    assert_int_equal(zn__pb_unpack(&demo__test_req__descriptor, NULL, 0,
                                   NULL, &m, &a), 0);
    assert_string_equal(((Demo__TestReq *)m)->msg, "");
    zn__pb_free(m, &a);
    assert_all_freed(&a);
    assert_int_equal(zn__pb_unpack(&demo__echo_req__descriptor, none, 0,
                                   NULL, &m, &a), 0);
    assert_int_equal(((Demo__EchoReq *)m)->payload.len, 0);
    zn__pb_free(m, &a);
    assert_int_equal(zn__pb_unpack(&zntest__node__descriptor, NULL, 0, NULL,
                                   &m, &a), 0);
    assert_null(((Zntest__Node *)m)->child);
    zn__pb_free(m, &a);
    assert_all_freed(&a);
}


static void
test_malformed_is_bad_request(void **state)
{
    static const struct {
        const char *bytes;
        size_t len;
    } cases[] = {
        {"\x0a", 1},                 /* key, no length */
        {"\x0a\x05hi", 4},           /* length past the end */
        {"\x0a\x80", 2},             /* truncated length varint */
        {"\x08\xff\xff", 3},         /* truncated varint */
        {"\x00\x01", 2},             /* field number 0 */
        {"\x0b\x0c", 2},             /* group */
        {"\x0e\x00", 2},             /* wire type 6 */
        {"\x0d\x00\x00", 3},         /* short fixed32 */
        {"\x09\x00", 2},             /* short fixed64 */
        {"\x08\x01", 2},             /* msg sent as a varint */
    };
    ProtobufCMessage *m;
    zn__pb_alloc_t a;
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(zn__pb_unpack(&demo__test_req__descriptor,
                                       (const uint8_t *)cases[i].bytes,
                                       cases[i].len, NULL, &m, &a),
                         ZN_EPROTO);
        assert_null(m);
        assert_all_freed(&a);
    }
    /* A malformed child is caught by the scan, inside the nesting. */
    assert_int_equal(zn__pb_scan_depth(&zntest__node__descriptor,
                                       (const uint8_t *)"\x0a\x02\x0a\x05", 4,
                                       64),
                     ZN_EPROTO);
    assert_string_equal(zn__pb_err_reason(ZN_EPROTO), "malformed");
    assert_string_equal(zn__pb_err_reason(ZN_ENOBUFS), "over budget");
}


static void
test_bad_arguments(void **state)
{
    ProtobufCMessage *m;
    zn__pb_alloc_t a;

    assert_int_equal(zn__pb_unpack(NULL, NULL, 0, NULL, &m, &a), ZN_EINVAL);
    assert_int_equal(zn__pb_unpack(&demo__test_req__descriptor, NULL, 1,
                                   NULL, &m, &a), ZN_EINVAL);
    assert_int_equal(zn__pb_unpack(&demo__test_req__descriptor, NULL, 0,
                                   NULL, NULL, &a), ZN_EINVAL);
    assert_int_equal(zn__pb_scan_depth(&demo__test_req__descriptor, NULL, 0,
                                       0), ZN_EINVAL);
}


/* An allocator hook that fails after a set number of allocations. */
static int fail_after;

static void *
failing_malloc(size_t n)
{
    if (fail_after-- <= 0)
        return NULL;
    return malloc(n);
}


/* The system running out is not the peer's fault: ENOMEM, not EPROTO. */
static void
test_system_oom_is_enomem(void **state)
{
    Zntest__Point pt = ZNTEST__POINT__INIT, *pts[] = {&pt, &pt, &pt, &pt};
    Zntest__Shapes shapes = ZNTEST__SHAPES__INIT;
    ProtobufCMessage *m;
    zn__pb_alloc_t a;
    uint8_t *b;
    size_t len;
    int n, rc;

    shapes.n_points = 4;
    shapes.points = pts;
    b = pack(&shapes.base, &len);
    for (n = 0; n < 10; n++) {
        fail_after = n;
        assert_int_equal(zn_set_allocator(failing_malloc, realloc, calloc,
                                          free), 0);
        rc = zn__pb_unpack(&zntest__shapes__descriptor, b, len, NULL, &m,
                           &a);
        assert_int_equal(zn_set_allocator(malloc, realloc, calloc, free), 0);
        if (rc == 0) {
            zn__pb_free(m, &a);
            break;
        }
        assert_int_equal(rc, ZN_ENOMEM);
        assert_true(a.oom);
        assert_all_freed(&a);
    }
    assert_true(n > 0 && n < 10);
    free(b);
}


/*
 * With an arena, a small message is decoded without one system
 * allocation (failing_malloc refuses them all); a larger one spills to
 * malloc for what does not fit; both free cleanly, the arena untouched by
 * the free (ASan would report a free of memory it did not allocate), and
 * the budget is charged the same with or without it.
 */
static void
test_arena_first_then_malloc(void **state)
{
    _Alignas(max_align_t) unsigned char arena[256];
    uint8_t payload[2000];
    Demo__EchoReq req = DEMO__ECHO_REQ__INIT;
    zn__pb_opts_t o = {.arena = arena, .arena_len = sizeof(arena)};
    ProtobufCMessage *m, *m2;
    zn__pb_alloc_t a, a2;
    uint8_t *b;
    size_t len;

    (void)state;
    memset(payload, 7, sizeof(payload));
    req.payload.data = payload;
    req.payload.len = 64;
    b = pack(&req.base, &len);
    fail_after = 0;
    assert_int_equal(zn_set_allocator(failing_malloc, realloc, calloc, free),
                     0);
    assert_int_equal(zn__pb_unpack(&demo__echo_req__descriptor, b, len, &o,
                                   &m, &a), 0);
    assert_int_equal(zn_set_allocator(malloc, realloc, calloc, free), 0);
    assert_true(a.arena_used > 0 && a.arena_used <= sizeof(arena));
    assert_int_equal(((Demo__EchoReq *)m)->payload.len, 64);
    assert_memory_equal(((Demo__EchoReq *)m)->payload.data, payload, 64);
    assert_int_equal(zn__pb_unpack(&demo__echo_req__descriptor, b, len, NULL,
                                   &m2, &a2), 0);
    assert_int_equal(a.charged, a2.charged);
    zn__pb_free(m, &a);
    zn__pb_free(m2, &a2);
    assert_all_freed(&a);
    free(b);

    req.payload.len = sizeof(payload); /* the bytes do not fit */
    b = pack(&req.base, &len);
    assert_int_equal(zn__pb_unpack(&demo__echo_req__descriptor, b, len, &o,
                                   &m, &a), 0);
    assert_true(a.arena_used > 0 && a.arena_used <= sizeof(arena));
    assert_memory_equal(((Demo__EchoReq *)m)->payload.data, payload,
                        sizeof(payload));
    zn__pb_free(m, &a);
    assert_all_freed(&a);
    free(b);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_deep_10000_rejected),
        cmocka_unit_test(test_depth_64_accepted_65_rejected),
        cmocka_unit_test(test_depth_limit_is_configurable),
        cmocka_unit_test(test_wide_is_not_deep),
        cmocka_unit_test(test_allocation_bomb_over_budget),
        cmocka_unit_test(test_merge_bomb_refused),
        cmocka_unit_test(test_tiny_budget),
        cmocka_unit_test(test_random_bytes_never_crash),
        cmocka_unit_test(test_mutated_bodies_never_crash),
        cmocka_unit_test(test_bound_is_never_below_real_allocations),
        cmocka_unit_test(test_valid_messages_round_trip),
        cmocka_unit_test(test_empty_body_is_default_message),
        cmocka_unit_test(test_malformed_is_bad_request),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_system_oom_is_enomem),
        cmocka_unit_test(test_arena_first_then_malloc),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
