/* test_httpc: the response parser of moonport.http. Every response is fed
 * whole, in every two-piece split, one byte at a time, and the way
 * moonport.http reads (a line, or at most httpc_want bytes), and the four
 * must describe the same response and stop at the same byte; what must be
 * refused is refused under every chunking with the same reason; limits
 * hold; and input ending against an unreadable page is parsed without
 * touching it. */
#include <stdlib.h>
#include <string.h>

#include "httpc.h"
#include "unit.h"

#define LIT(s) s, sizeof(s) - 1

enum { MAX_HEAD = 1024, MAX_BODY = 4096, TEXT = 16384 };

/* What a parse reported, as text, so two chunkings compare with strcmp. */
struct outcome {
    int rc;
    size_t used; /* bytes of the input taken, over every call */
    char text[TEXT];
};

static void describe(struct httpc *p, struct outcome *o)
{
    size_t n = 0, cap = sizeof o->text;
    if (o->rc == HTTPC_ERROR) {
        snprintf(o->text, cap, "error %s\n", httpc_error(p));
        return;
    }
    n += (size_t)snprintf(o->text + n, cap - n, "rc=%d used=%zu status=%d ka=%d\n", o->rc,
                          o->used, httpc_status(p), httpc_keep_alive(p));
    const char *cur = NULL, *name, *value;
    size_t vlen;
    while (httpc_header_next(p, &cur, &name, &value, &vlen) && n < cap)
        n += (size_t)snprintf(o->text + n, cap - n, "[%s]=[%s]\n", name, value);
    size_t blen;
    const char *body = httpc_body(p, &blen);
    if (n < cap)
        n += (size_t)snprintf(o->text + n, cap - n, "body %zu [%.*s]\n", blen,
                              (int)(blen < 200 ? blen : 200), body);
}

/* Feed s: the first piece of `first` bytes, then `step` at a time (0: the
 * rest at once); then, when all was taken and eof is set, the end of the
 * connection. */
static void run(struct outcome *o, const char *s, size_t len, size_t first, size_t step,
                int no_body, int eof)
{
    struct httpc *p = httpc_new(MAX_HEAD, MAX_BODY, no_body);
    CHECK(p != NULL);
    size_t off = 0, used;
    o->rc = HTTPC_NEED_MORE;
    o->used = 0;
    for (int call = 0; o->rc == HTTPC_NEED_MORE && off < len; call++) {
        size_t n = call == 0 ? first : step ? step : len - off;
        if (n > len - off)
            n = len - off;
        o->rc = httpc_feed(p, s + off, n, &used);
        CHECK(used <= n);
        if (o->rc == HTTPC_NEED_MORE)
            CHECK(used == n);
        o->used += used;
        off += n;
    }
    if (o->rc == HTTPC_NEED_MORE && eof)
        o->rc = httpc_eof(p);
    /* Done or failed, it stays so and takes nothing more. */
    if (o->rc != HTTPC_NEED_MORE) {
        CHECK(httpc_feed(p, "HTTP/1.1 200 OK\r\n", 17, &used) == o->rc);
        CHECK(used == 0);
    }
    describe(p, o);
    httpc_free(p);
}

/* Read as moonport.http does: a line when httpc_want says 0, otherwise at
 * most that many bytes (cap 7, to cut bodies). */
static void run_wanted(struct outcome *o, const char *s, size_t len, int no_body, int eof)
{
    struct httpc *p = httpc_new(MAX_HEAD, MAX_BODY, no_body);
    size_t off = 0, used;
    o->rc = HTTPC_NEED_MORE;
    o->used = 0;
    while (o->rc == HTTPC_NEED_MORE && off < len) {
        size_t want = httpc_want(p, 7), n;
        if (want == 0) {
            const char *nl = memchr(s + off, '\n', len - off);
            n = nl ? (size_t)(nl - (s + off)) + 1 : len - off;
        } else {
            n = want < len - off ? want : len - off;
        }
        o->rc = httpc_feed(p, s + off, n, &used);
        /* Reading what it wants never reads past the response. */
        if (o->rc == HTTPC_DONE)
            CHECK(used == n);
        o->used += used;
        off += n;
    }
    if (o->rc == HTTPC_NEED_MORE && eof)
        o->rc = httpc_eof(p);
    describe(p, o);
    httpc_free(p);
}

static struct outcome whole, other;

/* s parses to `expect` (its description's first line, or all of it)
 * under every chunking. */
static void check_all(const char *s, size_t len, int no_body, int eof, const char *expect)
{
    run(&whole, s, len, len, 0, no_body, eof);
    if (strncmp(whole.text, expect, strlen(expect)) != 0) {
        CHECK(!"the whole input parses as expected");
        fprintf(stderr, "  got:      %s  expected: %s\n", whole.text, expect);
    }
    for (size_t k = 0; k <= len; k++) {
        run(&other, s, len, k, 0, no_body, eof);
        if (strcmp(whole.text, other.text) != 0) {
            CHECK(!"a two-piece split parses as the whole");
            fprintf(stderr, "  split at %zu:\n%s  whole:\n%s", k, other.text, whole.text);
            break;
        }
    }
    run(&other, s, len, 1, 1, no_body, eof);
    CHECK(strcmp(whole.text, other.text) == 0);
    run_wanted(&other, s, len, no_body, eof);
    CHECK(strcmp(whole.text, other.text) == 0);
}

static void test_content_length(void)
{
    static const char r[] = "HTTP/1.1 200 OK\r\n"
                            "Content-Type: text/plain \r\n"
                            "X-Two:  a\r\n"
                            "x-two: b\t\r\n"
                            "X-Empty:\r\n"
                            "Content-Length: 5\r\n"
                            "\r\n"
                            "hello";
    check_all(LIT(r), 0, 0,
              "rc=1 used=102 status=200 ka=1\n"
              "[content-type]=[text/plain]\n"
              "[x-two]=[a]\n"
              "[x-two]=[b]\n"
              "[x-empty]=[]\n"
              "[content-length]=[5]\n"
              "body 5 [hello]\n");
    /* What follows the response is not taken. */
    static const char more[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 500";
    run(&whole, LIT(more), sizeof more - 1, 0, 0, 0);
    CHECK(whole.rc == HTTPC_DONE);
    CHECK_EQ(whole.used, sizeof more - 1 - 12);
    /* A zero length ends at the head. */
    check_all(LIT("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"), 0, 0,
              "rc=1 used=45 status=404 ka=1\n[content-length]=[0]\nbody 0 []\n");
    /* The connection ends before the body does. */
    check_all(LIT("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhalf"), 0, 1, "error closed\n");
    check_all(LIT("HTTP/1.1 200 OK\r\nContent-Le"), 0, 1, "error closed\n");
    run(&whole, "", 0, 0, 0, 0, 1);
    CHECK(strcmp(whole.text, "error closed\n") == 0);
}

static void test_chunked(void)
{
    static const char r[] = "HTTP/1.1 200 OK\r\n"
                            "Transfer-Encoding: chunked\r\n"
                            "\r\n"
                            "5\r\nhello\r\n"
                            "1;ext=1\r\n,\r\n"
                            "6\r\n world\r\n"
                            "0\r\n"
                            "X-Trailer: not kept\r\n"
                            "\r\n";
    check_all(LIT(r), 0, 0,
              "rc=1 used=106 status=200 ka=1\n"
              "[transfer-encoding]=[chunked]\n"
              "body 12 [hello, world]\n");
    check_all(LIT("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"), 0, 1,
              "error closed\n");
    check_all(LIT("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"), 0, 0,
              "error bad response: Invalid character in chunk size\n");
}

static void test_until_eof(void)
{
    static const char r[] = "HTTP/1.1 200 OK\r\nContent-Type: a/b\r\n\r\nto the end";
    /* Without the end of the connection it is not complete. */
    run(&whole, LIT(r), sizeof r - 1, 0, 0, 0);
    CHECK(whole.rc == HTTPC_NEED_MORE);
    check_all(LIT(r), 0, 1,
              "rc=1 used=48 status=200 ka=0\n[content-type]=[a/b]\nbody 10 [to the end]\n");
    check_all(LIT("HTTP/1.1 200 OK\r\n\r\n"), 0, 1, "rc=1 used=19 status=200 ka=0\nbody 0 []\n");
}

static void test_no_body(void)
{
    /* HEAD: the length given is that of a GET's body; none follows. */
    check_all(LIT("HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n"), 1, 0,
              "rc=1 used=47 status=200 ka=1\n");
    check_all(LIT("HTTP/1.1 204 No Content\r\n\r\n"), 0, 0,
              "rc=1 used=27 status=204 ka=1\nbody 0 []\n");
    check_all(LIT("HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"), 0, 0,
              "rc=1 used=40 status=304 ka=1\n[etag]=[\"x\"]\nbody 0 []\n");
    /* Whatever their headers say. */
    check_all(LIT("HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n"), 0, 0,
              "rc=1 used=46 status=204 ka=1\n[content-length]=[3]\nbody 0 []\n");
    check_all(LIT("HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n"), 0, 0,
              "rc=1 used=57 status=304 ka=1\n[transfer-encoding]=[chunked]\nbody 0 []\n");
    check_all(LIT("HTTP/1.1 103 Early Hints\r\nContent-Length: 3\r\n\r\n"
                  "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"),
              0, 0, "rc=1 used=86 status=200 ka=1\n[content-length]=[1]\nbody 1 [x]\n");
    /* An interim 1xx is skipped, and its headers forgotten. */
    check_all(LIT("HTTP/1.1 100 Continue\r\nX-A: 1\r\n\r\n"
                  "HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n"
                  "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"),
              0, 0, "rc=1 used=118 status=201 ka=1\n[content-length]=[2]\nbody 2 [ok]\n");
}

static void test_keep_alive(void)
{
    check_all(LIT("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx"), 0, 0,
              "rc=1 used=58 status=200 ka=0\n");
    check_all(LIT("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx"), 0, 0,
              "rc=1 used=39 status=200 ka=0\n");
    check_all(LIT("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx"),
              0, 0, "rc=1 used=63 status=200 ka=1\n");
}

static void test_limits(void)
{
    char big[2 * MAX_HEAD];
    /* A Content-Length past the limit is refused at the head. */
    check_all(LIT("HTTP/1.1 200 OK\r\nContent-Length: 104857600\r\n\r\n"), 0, 0,
              "error body too large\n");
    check_all(LIT("HTTP/1.1 200 OK\r\nContent-Length: 4097\r\n\r\n"), 0, 0,
              "error body too large\n");
    /* Exactly the limit is fine. */
    int n = snprintf(big, sizeof big, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", MAX_BODY);
    char *r = malloc((size_t)n + MAX_BODY);
    memcpy(r, big, (size_t)n);
    memset(r + n, 'b', MAX_BODY);
    run(&whole, r, (size_t)n + MAX_BODY, 100, 0, 0, 0);
    CHECK(whole.rc == HTTPC_DONE);
    free(r);
    /* A chunked body, or one to the end, that grows past it. */
    static const char chunks[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 "800\r\n";
    size_t clen = sizeof chunks - 1;
    r = malloc(clen + 3 * (0x800 + 8));
    memcpy(r, chunks, clen);
    for (int i = 0; i < 3; i++) {
        if (i)
            clen += (size_t)sprintf(r + clen, "800\r\n");
        memset(r + clen, 'c', 0x800);
        clen += 0x800;
        memcpy(r + clen, "\r\n", 2);
        clen += 2;
    }
    run(&whole, r, clen, 1000, 0, 0, 0);
    CHECK(strcmp(whole.text, "error body too large\n") == 0);
    run(&whole, r, clen, 1, 1, 0, 0);
    CHECK(strcmp(whole.text, "error body too large\n") == 0);
    static const char eof[] = "HTTP/1.1 200 OK\r\n\r\n";
    memcpy(r, eof, sizeof eof - 1);
    memset(r + sizeof eof - 1, 'e', MAX_BODY + 1);
    run(&whole, r, sizeof eof - 1 + MAX_BODY + 1, 50, 0, 0, 1);
    CHECK(strcmp(whole.text, "error body too large\n") == 0);
    free(r);
    /* A head that does not end within MAX_HEAD bytes, however it is cut. */
    n = snprintf(big, sizeof big, "HTTP/1.1 200 OK\r\nX-Long: ");
    memset(big + n, 'h', sizeof big - (size_t)n);
    check_all(big, sizeof big, 0, 0, "error bad response: head too large\n");
    /* Exactly MAX_HEAD bytes of head is fine. */
    n = snprintf(big, sizeof big, "HTTP/1.1 200 OK\r\nX-Long: ");
    memset(big + n, 'h', MAX_HEAD - (size_t)n - 4);
    memcpy(big + MAX_HEAD - 4, "\r\n\r\n", 4);
    run(&whole, big, MAX_HEAD, MAX_HEAD, 0, 0, 1);
    CHECK(whole.rc == HTTPC_DONE);
    run(&whole, big, MAX_HEAD + 1, MAX_HEAD + 1, 0, 0, 1);
    CHECK(whole.rc == HTTPC_DONE);
    /* Interim responses count against the head: a backend cannot send 1xx
     * for ever. */
    size_t len = 0;
    while (len + 30 < sizeof big)
        len += (size_t)sprintf(big + len, "HTTP/1.1 100 Continue\r\n\r\n");
    run(&whole, big, len, len, 0, 0, 0);
    CHECK(strcmp(whole.text, "error bad response: head too large\n") == 0);
    /* So do chunked trailers. */
    len = (size_t)sprintf(big, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n");
    while (len + 30 < sizeof big)
        len += (size_t)sprintf(big + len, "X-Trailer: tttttttttttt\r\n");
    run(&whole, big, len, len, 0, 0, 0);
    CHECK(strcmp(whole.text, "error bad response: head too large\n") == 0);
}

static void test_garbage(void)
{
    check_all(LIT("SSH-2.0-OpenSSH_9.2\r\n"), 0, 1, "error bad response: ");
    check_all(LIT("HTTP/1.1 2000 OK\r\n\r\n"), 0, 0, "error bad response: ");
    check_all(LIT("HTTP/1.0 0 OK\r\n\r\n"), 0, 1, "error bad response: Invalid status code\n");
    check_all(LIT("HTTP/1.1 99 OK\r\n\r\n"), 0, 1, "error bad response: Invalid status code\n");
    check_all(LIT("HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n"), 0, 0,
              "error bad response: Invalid header token\n");
    check_all(LIT("HTTP/1.1 200 OK\r\n: x\r\n\r\n"), 0, 0,
              "error bad response: Invalid header token\n");
    check_all(LIT("HTTP/1.1 200 OK\r\nX: a\x01\r\n\r\n"), 0, 0,
              "error bad response: Invalid header value char\n");
    check_all(LIT("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"), 0, 0,
              "error bad response: Duplicate Content-Length\n");
    check_all(LIT("\x16\x03\x01\x02\x00\x01"), 0, 0, "error bad response: ");
}

/* Each input ends at the last readable byte before a PROT_NONE page, fed
 * whole and a byte at a time (each byte moved to that last address). */
static void test_guard_page(void)
{
    char *end = unit_guard_page();
    if (!end)
        return;
    static const struct {
        const char *s;
        size_t len;
        int rc;
    } cases[] = {
        {LIT("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"), HTTPC_DONE},
        {LIT("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab"), HTTPC_NEED_MORE},
        {LIT("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
         HTTPC_DONE},
        {LIT("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab"), HTTPC_NEED_MORE},
        {LIT("HTTP/1.1 204 No Content\r\n\r\n"), HTTPC_DONE},
        {LIT("HTTP/1.1 200 OK\r\nX: a"), HTTPC_NEED_MORE},
        {LIT("HTTP/1.1 200 OK\r\nX: a\r"), HTTPC_NEED_MORE},
        {LIT("HTTP/1."), HTTPC_NEED_MORE},
        {LIT("HTTP/1.1 200 OK\r\nX: \x7f"), HTTPC_ERROR},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t len = cases[i].len, used;
        memcpy(end - len, cases[i].s, len);
        struct httpc *p = httpc_new(MAX_HEAD, MAX_BODY, 0);
        CHECK_EQ(httpc_feed(p, end - len, len, &used), cases[i].rc);
        httpc_free(p);
        p = httpc_new(MAX_HEAD, MAX_BODY, 0);
        int rc = HTTPC_NEED_MORE;
        for (size_t k = 0; k < len && rc == HTTPC_NEED_MORE; k++) {
            end[-1] = cases[i].s[k];
            rc = httpc_feed(p, end - 1, 1, &used);
        }
        CHECK_EQ(rc, cases[i].rc);
        httpc_free(p);
    }
    unit_guard_free(end);
}

static void test_want(void)
{
    struct httpc *p = httpc_new(MAX_HEAD, MAX_BODY, 0);
    size_t used;
    CHECK_EQ(httpc_want(p, 100), 0); /* the head: lines */
    static const char h[] = "HTTP/1.1 200 OK\r\nContent-Length: 250\r\n\r\n";
    CHECK_EQ(httpc_feed(p, LIT(h), &used), HTTPC_NEED_MORE);
    CHECK_EQ(httpc_want(p, 100), 100);
    CHECK_EQ(httpc_want(p, 1000), 250);
    char body[250];
    memset(body, 'x', sizeof body);
    CHECK_EQ(httpc_feed(p, body, 200, &used), HTTPC_NEED_MORE);
    CHECK_EQ(httpc_want(p, 1000), 50);
    CHECK_EQ(httpc_feed(p, body, 50, &used), HTTPC_DONE);
    httpc_free(p);
    p = httpc_new(MAX_HEAD, MAX_BODY, 0);
    static const char c[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n";
    CHECK_EQ(httpc_feed(p, LIT(c), &used), HTTPC_NEED_MORE);
    CHECK_EQ(httpc_want(p, 1000), 16);
    CHECK_EQ(httpc_feed(p, body, 16, &used), HTTPC_NEED_MORE);
    CHECK_EQ(httpc_want(p, 1000), 0); /* the CRLF after the chunk */
    httpc_free(p);
    p = httpc_new(MAX_HEAD, MAX_BODY, 0);
    CHECK_EQ(httpc_feed(p, LIT("HTTP/1.1 200 OK\r\n\r\n"), &used), HTTPC_NEED_MORE);
    CHECK_EQ(httpc_want(p, 1000), 1000); /* to the end: as much as the reader likes */
    httpc_free(p);
    httpc_free(NULL);
}

int main(void)
{
    test_content_length();
    test_chunked();
    test_until_eof();
    test_no_body();
    test_keep_alive();
    test_limits();
    test_garbage();
    test_guard_page();
    test_want();
    return unit_done("test_httpc");
}
