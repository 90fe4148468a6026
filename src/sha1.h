/* sha1: SHA-1 (FIPS 180-4), only for the handshake's Sec-WebSocket-Accept.
 * Our own rather than OpenSSL's: since OpenSSL 3 its SHA1() goes through
 * the provider machinery, and the first call initialises it and touches
 * about 2 MiB of libcrypto's pages, which a plain ws:// server would keep
 * resident for nothing. Pure: no allocation, no state between calls. Not
 * for anything that needs collision resistance. */
#ifndef MOONPORT_SHA1_H
#define MOONPORT_SHA1_H

#include <stddef.h>
#include <stdint.h>

#define SHA1_LEN 20

void sha1(const void *data, size_t len, uint8_t out[SHA1_LEN]);

#endif
