/*
 * BLAKE3 in its plainest form (the structure of the specification's reference
 * implementation): 1 KiB chunks of 64-byte blocks, a binary tree of parent nodes, and a root
 * compression. Written for clarity, not speed.
 */
#include "blake3.h"

#include <string.h>

enum { CHUNK_START = 1, CHUNK_END = 2, PARENT = 4, ROOT = 8 };
enum { BLOCK_LEN = 64, CHUNK_LEN = 1024 };

static const uint32_t IV[8] = {0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
                               0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19};
static const uint8_t PERMUTATION[16] = {2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8};

static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void g(uint32_t s[16], int a, int b, int c, int d, uint32_t mx, uint32_t my) {
    s[a] = s[a] + s[b] + mx;
    s[d] = rotr(s[d] ^ s[a], 16);
    s[c] = s[c] + s[d];
    s[b] = rotr(s[b] ^ s[c], 12);
    s[a] = s[a] + s[b] + my;
    s[d] = rotr(s[d] ^ s[a], 8);
    s[c] = s[c] + s[d];
    s[b] = rotr(s[b] ^ s[c], 7);
}

static void compress(const uint32_t cv[8], const uint32_t block[16], uint64_t counter,
                     uint32_t block_len, uint32_t flags, uint32_t out[16]) {
    uint32_t s[16] = {cv[0], cv[1], cv[2], cv[3], cv[4], cv[5], cv[6], cv[7],
                      IV[0], IV[1], IV[2], IV[3], (uint32_t)counter, (uint32_t)(counter >> 32),
                      block_len, flags};
    uint32_t m[16], permuted[16];
    memcpy(m, block, sizeof(m));
    for (int round = 0; round < 7; round++) {
        g(s, 0, 4, 8, 12, m[0], m[1]);
        g(s, 1, 5, 9, 13, m[2], m[3]);
        g(s, 2, 6, 10, 14, m[4], m[5]);
        g(s, 3, 7, 11, 15, m[6], m[7]);
        g(s, 0, 5, 10, 15, m[8], m[9]);
        g(s, 1, 6, 11, 12, m[10], m[11]);
        g(s, 2, 7, 8, 13, m[12], m[13]);
        g(s, 3, 4, 9, 14, m[14], m[15]);
        for (int i = 0; i < 16; i++) permuted[i] = m[PERMUTATION[i]];
        memcpy(m, permuted, sizeof(m));
    }
    for (int i = 0; i < 8; i++) {
        out[i] = s[i] ^ s[i + 8];
        out[i + 8] = s[i + 8] ^ cv[i];
    }
}

static void words_from_bytes(const uint8_t bytes[64], uint32_t words[16]) {
    for (int i = 0; i < 16; i++) {
        words[i] = (uint32_t)bytes[4 * i] | ((uint32_t)bytes[4 * i + 1] << 8) |
                   ((uint32_t)bytes[4 * i + 2] << 16) | ((uint32_t)bytes[4 * i + 3] << 24);
    }
}

/* The inputs of a node's final compression, kept so it can be made a root or a chaining value. */
typedef struct {
    uint32_t cv[8];
    uint32_t block[16];
    uint64_t counter;
    uint32_t block_len;
    uint32_t flags;
} output;

static void output_cv(const output *o, uint32_t cv[8]) {
    uint32_t out[16];
    compress(o->cv, o->block, o->counter, o->block_len, o->flags, out);
    memcpy(cv, out, 32);
}

static void chunk_init(blake3_chunk_state *c, uint64_t counter) {
    memcpy(c->cv, IV, sizeof(IV));
    c->chunk_counter = counter;
    memset(c->block, 0, BLOCK_LEN);
    c->block_len = 0;
    c->blocks_compressed = 0;
    c->flags = 0;
}

static size_t chunk_len(const blake3_chunk_state *c) {
    return (size_t)c->blocks_compressed * BLOCK_LEN + c->block_len;
}

static uint32_t chunk_start_flag(const blake3_chunk_state *c) {
    return c->blocks_compressed == 0 ? CHUNK_START : 0;
}

static void chunk_update(blake3_chunk_state *c, const uint8_t *input, size_t len) {
    while (len > 0) {
        /* A full block is compressed only once more input arrives: the last one ends the chunk. */
        if (c->block_len == BLOCK_LEN) {
            uint32_t words[16], out[16];
            words_from_bytes(c->block, words);
            compress(c->cv, words, c->chunk_counter, BLOCK_LEN, c->flags | chunk_start_flag(c), out);
            memcpy(c->cv, out, 32);
            c->blocks_compressed++;
            memset(c->block, 0, BLOCK_LEN);
            c->block_len = 0;
        }
        size_t take = BLOCK_LEN - c->block_len;
        if (take > len) take = len;
        memcpy(c->block + c->block_len, input, take);
        c->block_len += (uint8_t)take;
        input += take;
        len -= take;
    }
}

static output chunk_output(const blake3_chunk_state *c) {
    output o;
    memcpy(o.cv, c->cv, 32);
    words_from_bytes(c->block, o.block);
    o.counter = c->chunk_counter;
    o.block_len = c->block_len;
    o.flags = c->flags | chunk_start_flag(c) | CHUNK_END;
    return o;
}

static output parent_output(const uint32_t left[8], const uint32_t right[8]) {
    output o;
    memcpy(o.cv, IV, 32);
    memcpy(o.block, left, 32);
    memcpy(o.block + 8, right, 32);
    o.counter = 0;
    o.block_len = BLOCK_LEN;
    o.flags = PARENT;
    return o;
}

void blake3_hasher_init(blake3_hasher *self) {
    chunk_init(&self->chunk, 0);
    self->cv_stack_len = 0;
}

static void add_chunk_cv(blake3_hasher *self, uint32_t cv[8], uint64_t total_chunks) {
    /* Merge completed subtrees: one merge per trailing zero bit of the chunk count. */
    while ((total_chunks & 1) == 0) {
        self->cv_stack_len--;
        output parent = parent_output(self->cv_stack[self->cv_stack_len], cv);
        output_cv(&parent, cv);
        total_chunks >>= 1;
    }
    memcpy(self->cv_stack[self->cv_stack_len], cv, 32);
    self->cv_stack_len++;
}

void blake3_hasher_update(blake3_hasher *self, const void *input, size_t input_len) {
    const uint8_t *in = input;
    while (input_len > 0) {
        if (chunk_len(&self->chunk) == CHUNK_LEN) {
            uint32_t cv[8];
            output o = chunk_output(&self->chunk);
            output_cv(&o, cv);
            uint64_t total = self->chunk.chunk_counter + 1;
            add_chunk_cv(self, cv, total);
            chunk_init(&self->chunk, total);
        }
        size_t take = CHUNK_LEN - chunk_len(&self->chunk);
        if (take > input_len) take = input_len;
        chunk_update(&self->chunk, in, take);
        in += take;
        input_len -= take;
    }
}

void blake3_hasher_finalize(const blake3_hasher *self, uint8_t out[32]) {
    output o = chunk_output(&self->chunk);
    for (int i = self->cv_stack_len; i > 0; i--) {
        uint32_t cv[8];
        output_cv(&o, cv);
        o = parent_output(self->cv_stack[i - 1], cv);
    }
    uint32_t words[16];
    compress(o.cv, o.block, 0, o.block_len, o.flags | ROOT, words);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)words[i];
        out[4 * i + 1] = (uint8_t)(words[i] >> 8);
        out[4 * i + 2] = (uint8_t)(words[i] >> 16);
        out[4 * i + 3] = (uint8_t)(words[i] >> 24);
    }
}
