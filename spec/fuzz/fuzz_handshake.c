/* fuzz_handshake: libFuzzer target for the handshake parser. The first
 * input byte picks max_head (bit 0) and, with the second, where to split;
 * the rest is what a client sent. Fed whole, in two pieces and (when short)
 * one byte at a time, the parser must reach the same result, status, error
 * and, for a complete head, the same end and the same headers. A complete
 * head must parse the same without the bytes after it, and not complete
 * one byte short of its end. Whatever it accepts must hold only lowercase
 * token names and values free of control characters, and the upgrade check
 * must answer with one of its statuses. What the connection keeps of an
 * accepted request (snapshot.c) must give back the same path, rest of the
 * target and headers. Any violation aborts. */
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "handshake.h"
#include "router.h"
#include "snapshot.h"

#define CHECK(c)                                                                               \
    do {                                                                                       \
        if (!(c))                                                                              \
            abort();                                                                           \
    } while (0)

enum { MAX_HEADERS = 32, BYTEWISE_MAX = 512 };

struct run {
    struct hs_request *r;
    int rc;
    size_t consumed; /* in total, over every call */
};

/* Feed len bytes: first of them in one call, then step at a time (0: all
 * the rest at once), stopping at the first result other than NEED_MORE, as
 * a connection would. */
static void feed(struct run *run, size_t max_head, const char *s, size_t len, size_t first,
                 size_t step)
{
    size_t off = 0;

    run->r = hs_new(max_head, MAX_HEADERS);
    CHECK(run->r != NULL);
    run->rc = HS_NEED_MORE;
    run->consumed = 0;
    for (int call = 0; run->rc == HS_NEED_MORE && (call == 0 || off < len); call++) {
        size_t n = call == 0 ? first : step ? step : len - off;
        if (n > len - off)
            n = len - off;
        size_t used = (size_t)-1;
        run->rc = hs_feed(run->r, s + off, n, &used);
        CHECK(used <= n);
        if (run->rc == HS_NEED_MORE)
            CHECK(used == n); /* an incomplete head takes everything */
        CHECK(run->rc == HS_NEED_MORE || run->rc == HS_DONE || run->rc == HS_ERROR);
        run->consumed += used;
        off += n;
    }
}

static int is_lower_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z'))
        return 1;
    return c && strchr("!#$%&'*+-.^`|~", c) != NULL;
}

/* What an accepted request may contain, whatever the input was. */
static void check_request(const struct hs_request *r, size_t max_head)
{
    CHECK(hs_status(r) == 0);
    CHECK(hs_method(r)[0] != '\0');
    CHECK(strlen(hs_target(r)) < max_head);
    size_t count = hs_header_count(r);
    CHECK(count <= MAX_HEADERS);
    CHECK(hs_header_at(r, count) == NULL);
    for (size_t i = 0; i < count; i++) {
        const struct hs_header *h = hs_header_at(r, i);
        CHECK(h != NULL && h->name[0] != '\0');
        for (const char *p = h->name; *p; p++)
            CHECK(is_lower_tchar((unsigned char)*p));
        CHECK(strlen(h->value) == h->value_len);
        for (size_t k = 0; k < h->value_len; k++) {
            unsigned char c = (unsigned char)h->value[k];
            CHECK((c >= 0x20 && c != 0x7f) || c == '\t');
        }
        if (h->value_len) {
            char first = h->value[0], last = h->value[h->value_len - 1];
            CHECK(first != ' ' && first != '\t' && last != ' ' && last != '\t');
        }
        /* hs_header_get finds the first header of a name. */
        const char *got = hs_header_get(r, h->name);
        CHECK(got != NULL);
        size_t j = 0;
        while (strcmp(hs_header_at(r, j)->name, h->name) != 0)
            j++;
        CHECK(got == hs_header_at(r, j)->value);
    }

    struct hs_upgrade up;
    const char *why = "unset";
    int status = hs_check_upgrade(r, &up, &why);
    CHECK(status == 0 || status == 400 || status == 405 || status == 426);
    if (status == 0) {
        CHECK(why == NULL);
        CHECK(strcmp(hs_method(r), "GET") == 0);
        CHECK(up.key != NULL && hs_key_valid(up.key));
        char accept[29];
        hs_accept_key(up.key, accept);
        CHECK(strlen(accept) == 28);
    } else {
        CHECK(why != NULL && why[0] != '\0');
        CHECK(up.key == NULL);
    }
}

/* The snapshot of an accepted request holds the same target and headers,
 * but for Sec-WebSocket-Key, which it does not keep. */
static void check_snapshot(const struct hs_request *r)
{
    struct sockaddr_in client = {.sin_family = AF_INET, .sin_port = htons(1)};
    struct snapshot *s = snap_new((struct sockaddr *)&client, 0);
    CHECK(s != NULL);
    struct route_match m = {0};
    const char *target = hs_target(r);
    CHECK(snap_complete(&s, (struct sockaddr *)&client, target, &m, r) == 0);
    const char *p = snap_strings(s);
    const char *path = snap_next(&p), *rest = snap_next(&p);
    size_t plen = strlen(path);
    CHECK(plen == strcspn(target, "?#") && memcmp(path, target, plen) == 0);
    CHECK(strcmp(rest, target + plen) == 0);
    size_t kept = 0;
    for (size_t i = 0; i < hs_header_count(r); i++) {
        const struct hs_header *h = hs_header_at(r, i);
        if (strcmp(h->name, "sec-websocket-key") == 0)
            continue;
        CHECK(kept < s->nheaders);
        CHECK(strcmp(snap_header_name(snap_next(&p)), h->name) == 0);
        CHECK(strcmp(snap_header_value(snap_next(&p)), h->value) == 0);
        kept++;
    }
    CHECK(kept == s->nheaders);
    /* A close reason after the strings leaves them as they were. */
    char *room = snap_reason_room(&s);
    CHECK(room != NULL);
    memset(room, 'r', SNAP_REASON_MAX);
    CHECK(snap_reason(s) == room);
    CHECK(plen == strlen(snap_path(s)) && memcmp(snap_path(s), target, plen) == 0);
    p = snap_strings(s);
    snap_next(&p);
    snap_next(&p);
    for (size_t i = 0; i < hs_header_count(r); i++) {
        const struct hs_header *h = hs_header_at(r, i);
        if (strcmp(h->name, "sec-websocket-key") == 0)
            continue;
        CHECK(strcmp(snap_header_name(snap_next(&p)), h->name) == 0);
        CHECK(strcmp(snap_header_value(snap_next(&p)), h->value) == 0);
    }
    snap_free(s);
}

/* Two runs over the same bytes describe the same request. */
static void check_same(const struct run *a, const struct run *b)
{
    CHECK(a->rc == b->rc);
    CHECK(hs_status(a->r) == hs_status(b->r));
    CHECK(strcmp(hs_error(a->r), hs_error(b->r)) == 0);
    if (a->rc == HS_ERROR)
        return;
    CHECK(a->consumed == b->consumed);
    if (a->rc != HS_DONE)
        return;
    CHECK(strcmp(hs_method(a->r), hs_method(b->r)) == 0);
    CHECK(strcmp(hs_target(a->r), hs_target(b->r)) == 0);
    CHECK(hs_header_count(a->r) == hs_header_count(b->r));
    for (size_t i = 0; i < hs_header_count(a->r); i++) {
        const struct hs_header *x = hs_header_at(a->r, i), *y = hs_header_at(b->r, i);
        CHECK(strcmp(x->name, y->name) == 0);
        CHECK(x->value_len == y->value_len && memcmp(x->value, y->value, x->value_len) == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t max_head = data[0] & 1 ? 1024 : 16384;
    const char *s = (const char *)data + 2;
    size_t len = size - 2;
    size_t k = ((size_t)(data[0] >> 1) << 8 | data[1]) % (len + 1);
    struct run whole, split;

    feed(&whole, max_head, s, len, len, 0);
    if (whole.rc == HS_NEED_MORE)
        CHECK(whole.consumed == len);
    if (whole.rc == HS_DONE) {
        CHECK(whole.consumed > 0 && whole.consumed <= max_head);
        check_request(whole.r, max_head);
        check_snapshot(whole.r);
        /* The head delimits itself: alone it is the same request, and one
         * byte short of it is not complete yet. */
        struct run head;
        feed(&head, max_head, s, whole.consumed, whole.consumed, 0);
        check_same(&whole, &head);
        hs_free(head.r);
        feed(&head, max_head, s, whole.consumed - 1, whole.consumed - 1, 0);
        CHECK(head.rc == HS_NEED_MORE);
        hs_free(head.r);
    }
    if (whole.rc == HS_ERROR)
        CHECK(hs_status(whole.r) == 400 || hs_status(whole.r) == 431);

    feed(&split, max_head, s, len, k, 0);
    check_same(&whole, &split);
    hs_free(split.r);

    if (len <= BYTEWISE_MAX) {
        struct run bytes;
        feed(&bytes, max_head, s, len, 1, 1);
        check_same(&whole, &bytes);
        hs_free(bytes.r);
    }
    hs_free(whole.r);
    return 0;
}
