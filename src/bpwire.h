/* bpwire: what moonport's Redis backplane puts on the wire, with no I/O.
 * Backplane URLs, the Redis server (shard) a topic lives on, the Redis
 * channel of a topic, and the envelope of moonport's own messages. Other
 * services publish with the same rules (README, "Scaling out").
 *
 * A message on a topic's channel is either
 *   - plain: any payload whose first byte is not 0xFF. It is a text
 *     message, and must be valid UTF-8 (a plain `PUBLISH moonport:news hi`);
 *   - an envelope: 0xFF, a kind byte ('t' text, 'b' binary), an origin
 *     length byte L (0..BP_ORIGIN_MAX), L bytes of origin (the publishing
 *     node's id; empty when not from a moonport node), then the payload.
 * 0xFF never starts valid UTF-8, so no plain text is taken for an envelope. */
#ifndef MOONPORT_BPWIRE_H
#define MOONPORT_BPWIRE_H

#include <stddef.h>
#include <stdint.h>

#define BP_DEFAULT_PREFIX "moonport:"
#define BP_DEFAULT_PORT 6379
#define BP_ORIGIN_MAX 64
#define BP_ENVELOPE_MARK 0xFF

struct bp_url {
    char host[256];
    int port;           /* BP_DEFAULT_PORT when the URL has none */
    int db;             /* 0 when the URL has none */
    char user[128];     /* "" when none (AUTH with the password alone) */
    char password[256]; /* "" when none */
};

/* Parse redis://[[user]:password@]host[:port][/db]. Percent-escapes in the
 * user and password are decoded. Returns 0, or -1 with one line in err. */
int bp_url_parse(const char *s, struct bp_url *u, char *err, size_t errlen);

/* The shard of a topic among n Redis servers (n >= 1): the 32-bit FNV-1a
 * hash of the topic's bytes (offset basis 2166136261, prime 16777619),
 * modulo n. */
unsigned bp_shard(const char *topic, size_t len, unsigned n);

enum bp_kind { BP_TEXT = 't', BP_BINARY = 'b' };

struct bp_message {
    enum bp_kind kind;
    const char *origin; /* points into the decoded bytes; NULL when plain */
    size_t origin_len;
    const char *data; /* the payload, pointing into the decoded bytes */
    size_t len;
};

/* The size of the envelope of m, and writing it into out (which has that
 * many bytes); returns the bytes written. origin_len <= BP_ORIGIN_MAX. */
size_t bp_envelope_size(const struct bp_message *m);
size_t bp_encode(char *out, const struct bp_message *m);

/* Decode what arrived on a topic's channel. Returns 0 and fills m (pointing
 * into p), or -1 with *why a static reason: a malformed envelope, text that
 * is not UTF-8, a payload over max_len. */
int bp_decode(const char *p, size_t n, uint64_t max_len, struct bp_message *m, const char **why);

#endif
