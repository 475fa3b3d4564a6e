/* BLAKE2b (RFC 7693), unkeyed, any digest size from 1 to 64 bytes: what
 * hashlib.blake2b(data, digest_size=n) computes, for the journal-key kernel
 * (keys.pyx), which digests many short texts per call. */

#ifndef SERPYTOR_BLAKE2B_H
#define SERPYTOR_BLAKE2B_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    uint64_t h[8];
    uint64_t t[2];       /* bytes compressed so far */
    uint8_t block[128];  /* the block being filled */
    size_t filled;
    size_t digest_size;
} spt_blake2b;

static const uint64_t SPT_BLAKE2B_IV[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL,
    0xa54ff53a5f1d36f1ULL, 0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL,
    0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

/* the message schedule of rounds 0-9; rounds 10 and 11 take rows 0 and 1 again */
static const uint8_t SPT_BLAKE2B_SIGMA[10][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
};

static inline uint64_t spt_rotr64(uint64_t x, unsigned n) {
    return (x >> n) | (x << (64 - n));
}

static inline uint64_t spt_load64(const uint8_t *p) {
    /* little-endian on every host, whatever its own byte order */
    return (uint64_t)p[0] | ((uint64_t)p[1] << 8) | ((uint64_t)p[2] << 16) |
           ((uint64_t)p[3] << 24) | ((uint64_t)p[4] << 32) | ((uint64_t)p[5] << 40) |
           ((uint64_t)p[6] << 48) | ((uint64_t)p[7] << 56);
}

#define SPT_G(a, b, c, d, x, y)                  \
    do {                                         \
        v[a] = v[a] + v[b] + (x);                \
        v[d] = spt_rotr64(v[d] ^ v[a], 32);      \
        v[c] = v[c] + v[d];                      \
        v[b] = spt_rotr64(v[b] ^ v[c], 24);      \
        v[a] = v[a] + v[b] + (y);                \
        v[d] = spt_rotr64(v[d] ^ v[a], 16);      \
        v[c] = v[c] + v[d];                      \
        v[b] = spt_rotr64(v[b] ^ v[c], 63);      \
    } while (0)

#define SPT_M(r, k) m[SPT_BLAKE2B_SIGMA[(r) % 10][k]]
#define SPT_ROUND(r)                                     \
    do {                                                 \
        SPT_G(0, 4, 8, 12, SPT_M(r, 0), SPT_M(r, 1));    \
        SPT_G(1, 5, 9, 13, SPT_M(r, 2), SPT_M(r, 3));    \
        SPT_G(2, 6, 10, 14, SPT_M(r, 4), SPT_M(r, 5));   \
        SPT_G(3, 7, 11, 15, SPT_M(r, 6), SPT_M(r, 7));   \
        SPT_G(0, 5, 10, 15, SPT_M(r, 8), SPT_M(r, 9));   \
        SPT_G(1, 6, 11, 12, SPT_M(r, 10), SPT_M(r, 11)); \
        SPT_G(2, 7, 8, 13, SPT_M(r, 12), SPT_M(r, 13));  \
        SPT_G(3, 4, 9, 14, SPT_M(r, 14), SPT_M(r, 15));  \
    } while (0)

static void spt_blake2b_compress(spt_blake2b *s, int last) {
    uint64_t v[16], m[16];
    int i;
    for (i = 0; i < 8; i++) {
        v[i] = s->h[i];
        v[i + 8] = SPT_BLAKE2B_IV[i];
    }
    v[12] ^= s->t[0];
    v[13] ^= s->t[1];
    if (last)
        v[14] = ~v[14];
    for (i = 0; i < 16; i++)
        m[i] = spt_load64(s->block + 8 * i);
    /* the rounds written out: with constant indices the compiler keeps v and m in
       registers (a loop over the rounds reloads them through the schedule) */
    SPT_ROUND(0); SPT_ROUND(1); SPT_ROUND(2); SPT_ROUND(3); SPT_ROUND(4); SPT_ROUND(5);
    SPT_ROUND(6); SPT_ROUND(7); SPT_ROUND(8); SPT_ROUND(9); SPT_ROUND(10); SPT_ROUND(11);
    for (i = 0; i < 8; i++)
        s->h[i] ^= v[i] ^ v[i + 8];
}

static void spt_blake2b_init(spt_blake2b *s, size_t digest_size) {
    int i;
    for (i = 0; i < 8; i++)
        s->h[i] = SPT_BLAKE2B_IV[i];
    s->h[0] ^= 0x01010000ULL ^ (uint64_t)digest_size;  /* fanout 1, depth 1, no key */
    s->t[0] = s->t[1] = 0;
    s->filled = 0;
    s->digest_size = digest_size;
}

static void spt_blake2b_update(spt_blake2b *s, const uint8_t *data, size_t n) {
    while (n > 0) {
        size_t take;
        if (s->filled == 128) {  /* full, and more follows: it is not the last block */
            s->t[0] += 128;
            if (s->t[0] < 128)
                s->t[1]++;
            spt_blake2b_compress(s, 0);
            s->filled = 0;
        }
        take = 128 - s->filled;
        if (take > n)
            take = n;
        memcpy(s->block + s->filled, data, take);
        s->filled += take;
        data += take;
        n -= take;
    }
}

static void spt_blake2b_final(spt_blake2b *s, uint8_t *out) {
    size_t i;
    s->t[0] += s->filled;
    if (s->t[0] < s->filled)
        s->t[1]++;
    memset(s->block + s->filled, 0, 128 - s->filled);
    spt_blake2b_compress(s, 1);
    for (i = 0; i < s->digest_size; i++)
        out[i] = (uint8_t)(s->h[i / 8] >> (8 * (i % 8)));
}

/* The digest of data as lowercase hex: 2 * digest_size characters into hex. */
static void spt_blake2b_hex(const uint8_t *data, size_t n, size_t digest_size, char *hex) {
    static const char digits[] = "0123456789abcdef";
    uint8_t out[64];
    spt_blake2b s;
    size_t i;
    spt_blake2b_init(&s, digest_size);
    spt_blake2b_update(&s, data, n);
    spt_blake2b_final(&s, out);
    for (i = 0; i < digest_size; i++) {
        hex[2 * i] = digits[out[i] >> 4];
        hex[2 * i + 1] = digits[out[i] & 15];
    }
}

#endif
