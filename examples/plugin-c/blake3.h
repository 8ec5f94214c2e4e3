/* A small portable BLAKE3 (hash mode, 32-byte output) for the cmem example plugin. */
#ifndef CMEM_BLAKE3_H
#define CMEM_BLAKE3_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t cv[8];
    uint64_t chunk_counter;
    uint8_t block[64];
    uint8_t block_len;
    uint8_t blocks_compressed;
    uint8_t flags;
} blake3_chunk_state;

typedef struct {
    blake3_chunk_state chunk;
    uint32_t cv_stack[54][8];
    uint8_t cv_stack_len;
} blake3_hasher;

void blake3_hasher_init(blake3_hasher *self);
void blake3_hasher_update(blake3_hasher *self, const void *input, size_t input_len);
void blake3_hasher_finalize(const blake3_hasher *self, uint8_t out[32]);

#endif
