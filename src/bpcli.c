/* bpcli: moonport publish. See bpcli.h. */
#include "bpcli.h"

#include <getopt.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "bpwire.h"
#include "config.h"
#include "topic.h"
#include "ws_utf8.h"

static const char usage[] =
    "usage: moonport publish [--config FILE] [--backplane URL] [--binary] TOPIC MESSAGE\n"
    "\n"
    "Publish MESSAGE to TOPIC's subscribers on every node that shares the backplane\n"
    "(the config's backplane.redis, or --backplane URL, repeated to shard). MESSAGE\n"
    "is text and must be UTF-8; with --binary it is sent as a binary message.\n"
    "MESSAGE - reads it from stdin. Prints how many Redis subscriber connections\n"
    "(node workers with subscribers) got it.\n";

/* Read all of stdin, up to max bytes: the length, or -1 with err set. */
static long long read_stdin(char **out, uint64_t max, char *err, size_t errlen)
{
    size_t cap = 4096, len = 0;
    char *b = malloc(cap);
    while (b) {
        if (len == cap) {
            char *nb = cap > max ? NULL : realloc(b, cap * 2);
            if (!nb)
                break;
            b = nb;
            cap *= 2;
        }
        size_t n = fread(b + len, 1, cap - len, stdin);
        len += n;
        if (len > max) {
            snprintf(err, errlen, "the message is longer than limits.max_message (%llu bytes)",
                     (unsigned long long)max);
            free(b);
            return -1;
        }
        if (n == 0) {
            if (ferror(stdin)) {
                snprintf(err, errlen, "cannot read the message from stdin");
                free(b);
                return -1;
            }
            *out = b;
            return (long long)len;
        }
    }
    free(b);
    snprintf(err, errlen, "out of memory reading stdin");
    return -1;
}

static int publish(const struct config *cfg, const char *topic, size_t tlen, const char *payload,
                   size_t plen, char *err, size_t errlen)
{
    unsigned i = bp_shard(topic, tlen, (unsigned)cfg->nbackplane);
    struct bp_url u;
    if (bp_url_parse(cfg->backplane[i], &u, err, errlen))
        return -1;
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout(u.host, u.port, tv);
    if (!c || c->err) {
        snprintf(err, errlen, "redis://%s:%d unreachable (%s)", u.host, u.port,
                 c ? c->errstr : "out of memory");
        redisFree(c);
        return -1;
    }
    redisSetTimeout(c, tv);
    const char *pw = u.password[0] ? u.password : getenv("MOONPORT_REDIS_PASSWORD");
    redisReply *r;
    if (pw && pw[0]) {
        const char *argv[3] = {"AUTH"};
        size_t lens[3] = {4};
        int argc = 1;
        if (u.user[0]) {
            argv[argc] = u.user;
            lens[argc++] = strlen(u.user);
        }
        argv[argc] = pw;
        lens[argc++] = strlen(pw);
        r = redisCommandArgv(c, argc, argv, lens);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            snprintf(err, errlen, "redis://%s:%d: AUTH refused (%s)", u.host, u.port,
                     r ? r->str : c->errstr);
            freeReplyObject(r);
            redisFree(c);
            return -1;
        }
        freeReplyObject(r);
    }
    char chan[CONFIG_PREFIX_MAX + TOPIC_NAME_MAX];
    size_t clen = strlen(cfg->backplane_prefix);
    memcpy(chan, cfg->backplane_prefix, clen);
    memcpy(chan + clen, topic, tlen);
    clen += tlen;
    const char *argv[3] = {"PUBLISH", chan, payload};
    size_t lens[3] = {7, clen, plen};
    r = redisCommandArgv(c, 3, argv, lens);
    int rc = 0;
    if (!r || r->type != REDIS_REPLY_INTEGER) {
        snprintf(err, errlen, "redis://%s:%d: PUBLISH failed (%s)", u.host, u.port,
                 r && r->type == REDIS_REPLY_ERROR ? r->str : c->errstr);
        rc = -1;
    } else {
        printf("published to %.*s on redis://%s:%d: %lld receiver(s)\n", (int)tlen, topic,
               u.host, u.port, r->integer);
    }
    freeReplyObject(r);
    redisFree(c);
    return rc;
}

int bpcli_publish(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"backplane", required_argument, NULL, 'B'},
        {"binary", no_argument, NULL, 'b'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *file = NULL, *urls[CONFIG_BACKPLANE_MAX + 1];
    size_t nurls = 0;
    int binary = 0, ch, rc = 2;
    char err[1024];
    opterr = 0;
    optind = 1;
    while ((ch = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': file = optarg; break;
        case 'b': binary = 1; break;
        case 'B':
            if (nurls > CONFIG_BACKPLANE_MAX) {
                fprintf(stderr, "moonport publish: %d Redis servers at most\n",
                        CONFIG_BACKPLANE_MAX);
                return 2;
            }
            urls[nurls++] = optarg;
            break;
        case 'h': fputs(usage, stdout); return 0;
        case ':':
            fprintf(stderr, "moonport publish: option %s needs a value (see --help)\n",
                    argv[optind - 1]);
            return 2;
        default:
            fprintf(stderr, "moonport publish: unknown option %s (see --help)\n",
                    argv[optind - 1]);
            return 2;
        }
    }
    if (argc - optind != 2) {
        fprintf(stderr, "moonport publish: give a TOPIC and a MESSAGE (see --help)\n");
        return 2;
    }
    const char *topic = argv[optind], *msg = argv[optind + 1];
    size_t tlen = strlen(topic);
    struct config cfg;
    char *payload = NULL, *input = NULL;
    config_init(&cfg);
    if (file && config_load_file(&cfg, file, err, sizeof err)) {
        fprintf(stderr, "moonport publish: %s\n", err);
        rc = 1;
        goto out;
    }
    if (nurls && config_set_backplane(&cfg, urls, nurls, err, sizeof err)) {
        fprintf(stderr, "moonport publish: %s\n", err);
        goto out;
    }
    if (!cfg.nbackplane) {
        fprintf(stderr, "moonport publish: no backplane: give --backplane URL or a --config "
                        "with backplane = { redis = URL }\n");
        goto out;
    }
    if (tlen == 0 || tlen > TOPIC_NAME_MAX) {
        fprintf(stderr, "moonport publish: a topic is 1 to %d bytes\n", TOPIC_NAME_MAX);
        goto out;
    }
    size_t mlen = strlen(msg);
    if (strcmp(msg, "-") == 0) {
        long long n = read_stdin(&input, cfg.max_message, err, sizeof err);
        if (n < 0) {
            fprintf(stderr, "moonport publish: %s\n", err);
            goto out;
        }
        msg = input;
        mlen = (size_t)n;
    }
    if (mlen > cfg.max_message) {
        fprintf(stderr, "moonport publish: the message is longer than limits.max_message "
                        "(%llu bytes)\n", (unsigned long long)cfg.max_message);
        goto out;
    }
    const char *out_bytes = msg;
    size_t out_len = mlen;
    if (binary) { /* an envelope of kind binary, from no node */
        struct bp_message m = {BP_BINARY, "", 0, msg, mlen};
        out_len = bp_envelope_size(&m);
        if (!(payload = malloc(out_len))) {
            fprintf(stderr, "moonport publish: out of memory\n");
            rc = 1;
            goto out;
        }
        bp_encode(payload, &m);
        out_bytes = payload;
    } else if (!ws_utf8_valid((const uint8_t *)msg, mlen)) {
        fprintf(stderr, "moonport publish: MESSAGE is not UTF-8 text; send it with --binary\n");
        goto out;
    }
    rc = publish(&cfg, topic, tlen, out_bytes, out_len, err, sizeof err) ? 1 : 0;
    if (rc)
        fprintf(stderr, "moonport publish: %s\n", err);
out:
    free(payload);
    free(input);
    config_free(&cfg);
    return rc;
}
