/* compress: shared permessage-deflate contexts. See compress.h. */
#include "compress.h"

#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "config.h"

#define WINDOW_MAX 15

struct compress {
    struct ws_deflate_policy policy;
    size_t threshold;
    struct ws_inflater *inflater;                     /* window 15 fits every client */
    struct ws_deflater *deflaters[WINDOW_MAX + 1];    /* by window bits, 8..15 */
    struct buf inflated;
    /* The last message compressed, and what it became: a broadcast sends
     * the same bytes to every subscriber, one ws:send at a time. */
    struct buf last_in, last_out;
    int last_window;
};

struct compress *compress_new(const struct config *cfg)
{
    struct compress *z = calloc(1, sizeof *z);
    if (!z)
        return NULL;
    ws_deflate_policy_init(&z->policy);
    z->policy.enabled = cfg->compression;
    z->policy.server_max_window_bits = cfg->compression_window;
    z->policy.level = cfg->compression_level;
    z->policy.mem_level = cfg->compression_mem_level;
    /* What makes the contexts shareable: fixed, whatever the config says. */
    z->policy.server_no_context_takeover = 1;
    z->policy.client_no_context_takeover = 1;
    z->threshold = cfg->compression_threshold;
    return z;
}

void compress_free(struct compress *z)
{
    if (!z)
        return;
    ws_inflater_free(z->inflater);
    for (int i = 0; i <= WINDOW_MAX; i++)
        ws_deflater_free(z->deflaters[i]);
    buf_reset(&z->inflated);
    buf_reset(&z->last_in);
    buf_reset(&z->last_out);
    free(z);
}

int compress_negotiate(struct compress *z, const char *offers, int *window,
                       char response[WS_DEFLATE_RESPONSE_MAX])
{
    struct ws_deflate_params p;
    int r = ws_deflate_negotiate(offers, &z->policy, &p, response, WS_DEFLATE_RESPONSE_MAX);
    *window = r == WS_DEFLATE_ACCEPTED ? p.server_max_window_bits : 0;
    return r;
}

int compress_inflate(struct compress *z, const uint8_t *in, size_t len, uint64_t max,
                     const uint8_t **out, size_t *out_len)
{
    if (!z->inflater && !(z->inflater = ws_inflater_new(WINDOW_MAX, 1)))
        return WS_DEFLATE_ERR_NOMEM;
    buf_reset(&z->inflated);
    int r = ws_inflate_message(z->inflater, in, len, &z->inflated, max);
    if (r)
        return r;
    *out = buf_head(&z->inflated);
    *out_len = buf_pending(&z->inflated);
    if (!*out)
        *out = (const uint8_t *)"";
    return 0;
}

void compress_inflated_done(struct compress *z)
{
    buf_reset(&z->inflated);
}

int compress_deflate(struct compress *z, int window, const uint8_t *in, size_t len,
                     const uint8_t **out, size_t *out_len)
{
    if (len < z->threshold || window < 8 || window > WINDOW_MAX)
        return 0;
    if (window == z->last_window && len == buf_pending(&z->last_in) &&
        (len == 0 || memcmp(buf_head(&z->last_in), in, len) == 0))
        goto done;
    struct ws_deflater **d = &z->deflaters[window];
    if (!*d && !(*d = ws_deflater_new(window, z->policy.mem_level, z->policy.level, 1)))
        return 0;
    buf_reset(&z->last_in);
    buf_reset(&z->last_out);
    z->last_window = 0;
    if (ws_deflate_message(*d, in, len, &z->last_out) || buf_append(&z->last_in, in, len))
        return 0;
    z->last_window = window;
done:
    if (buf_pending(&z->last_out) >= len)
        return 0; /* no smaller: send it as it is */
    *out = buf_head(&z->last_out);
    *out_len = buf_pending(&z->last_out);
    return 1;
}

void compress_trim(struct compress *z)
{
    if (z->last_window) {
        buf_reset(&z->last_in);
        buf_reset(&z->last_out);
        z->last_window = 0;
    }
}
