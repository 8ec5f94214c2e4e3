/*
 * cmem: an in-memory stowage provider written in plain C against stowage_plugin.h.
 *
 * It keeps the latest version of each record (version numbers still count every write),
 * supports put modes Create and IfVersion/Base atomically, byte-range reads and paged
 * listing; the optional functions (delete, search, versions, ...) are left NULL, so the host
 * answers Unsupported for them. Build: see scripts/build-plugin-fixtures.
 *
 * JSON: inputs come from the host's serde_json in compact form, so the few fields this
 * provider needs are found by name; metadata is stored and returned verbatim.
 */
#define _POSIX_C_SOURCE 200809L /* gmtime_r */

#include "stowage_plugin.h"
#include "blake3.h"

#include <ctype.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#ifndef CMEM_PLUGIN_NAME
#define CMEM_PLUGIN_NAME "cmem"
#endif
#ifndef CMEM_PROVIDER_NAME
#define CMEM_PROVIDER_NAME "cmem"
#endif
#define PROVIDER CMEM_PROVIDER_NAME

/* Built with -DCMEM_ABI_1_0, the plugin presents itself as an ABI 1.0 plugin: minor 0 and a
 * backend vtable that ends before 1.1's get_first, as a plugin built against the old header
 * would. The host must serve it through get_open. */
#ifdef CMEM_ABI_1_0
#define CMEM_ABI_MINOR 0
#define CMEM_BACKEND_SIZE offsetof(StowageBackendVTable, get_first)
#else
#define CMEM_ABI_MINOR STOWAGE_ABI_MINOR
#define CMEM_BACKEND_SIZE sizeof(StowageBackendVTable)
#endif
#define TEXT(s) {(const uint8_t *)(s), sizeof(s) - 1}

/* ---- growable byte buffers and owned outputs ---- */

typedef struct {
    uint8_t *data;
    size_t len, cap;
} buf;

static int buf_put(buf *b, const void *bytes, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n) cap *= 2;
        uint8_t *data = realloc(b->data, cap);
        if (!data) return -1;
        b->data = data;
        b->cap = cap;
    }
    if (n) memcpy(b->data + b->len, bytes, n);
    b->len += n;
    return 0;
}

static int buf_str(buf *b, const char *s) { return buf_put(b, s, strlen(s)); }

static int buf_fmt(buf *b, const char *fmt, ...) {
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    return n < 0 ? -1 : buf_put(b, tmp, (size_t)n);
}

/* Writes s as a JSON string. */
static int buf_json_str(buf *b, const uint8_t *s, size_t n) {
    if (buf_str(b, "\"")) return -1;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        int r = c == '"' ? buf_str(b, "\\\"") : c == '\\' ? buf_str(b, "\\\\")
              : c < 0x20 ? buf_fmt(b, "\\u%04x", c) : buf_put(b, &c, 1);
        if (r) return -1;
    }
    return buf_str(b, "\"");
}

static void free_owned(uint8_t *ptr, size_t len) {
    (void)len;
    free(ptr);
}

static StowageOwned owned(buf *b) {
    StowageOwned o = {b->data, b->len, free_owned};
    b->data = NULL;
    b->len = b->cap = 0;
    return o;
}

static StowageStatus ok(void) {
    StowageStatus s = {STOWAGE_OK, {NULL, 0, NULL}};
    return s;
}

/* A failed status whose message is `message` (JSON object or plain text). */
static StowageStatus fail(uint32_t code, const char *message) {
    buf b = {0};
    StowageStatus s = {code, {NULL, 0, NULL}};
    if (buf_str(&b, message) == 0) s.message = owned(&b);
    return s;
}

static StowageStatus out_of_memory(void) { return fail(STOWAGE_BACKEND, "cmem is out of memory"); }

/* ---- minimal reading of the host's compact JSON ---- */

/* The text right after "name": in json, or NULL. */
static const char *json_field(StowageBytes json, const char *name) {
    char pattern[64];
    int n = snprintf(pattern, sizeof(pattern), "\"%s\":", name);
    if (n < 0 || (size_t)n >= sizeof(pattern) || json.len < (size_t)n) return NULL;
    const char *s = (const char *)json.ptr;
    for (size_t i = 0; i + (size_t)n <= json.len; i++) {
        if (memcmp(s + i, pattern, (size_t)n) == 0) return s + i + n;
    }
    return NULL;
}

/* Reads an unsigned integer field; returns 1 if present and a number. */
static int json_u64(StowageBytes json, const char *name, uint64_t *out) {
    const char *v = json_field(json, name);
    if (!v || *v < '0' || *v > '9') return 0;
    *out = strtoull(v, NULL, 10);
    return 1;
}

static void utf8_put(buf *b, uint32_t cp) {
    uint8_t u[4];
    size_t n;
    if (cp < 0x80) { u[0] = (uint8_t)cp; n = 1; }
    else if (cp < 0x800) { u[0] = (uint8_t)(0xC0 | (cp >> 6)); u[1] = (uint8_t)(0x80 | (cp & 0x3F)); n = 2; }
    else if (cp < 0x10000) { u[0] = (uint8_t)(0xE0 | (cp >> 12)); u[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F)); u[2] = (uint8_t)(0x80 | (cp & 0x3F)); n = 3; }
    else { u[0] = (uint8_t)(0xF0 | (cp >> 18)); u[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F)); u[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F)); u[3] = (uint8_t)(0x80 | (cp & 0x3F)); n = 4; }
    buf_put(b, u, n);
}

/* Reads a string field, unescaped, into out; returns 1 if present and a string. */
static int json_string(StowageBytes json, const char *name, buf *out) {
    const char *v = json_field(json, name);
    const char *end = (const char *)json.ptr + json.len;
    if (!v || v >= end || *v != '"') return 0;
    for (v++; v < end && *v != '"'; v++) {
        if (*v != '\\') { buf_put(out, v, 1); continue; }
        if (++v >= end) return 0;
        switch (*v) {
        case 'n': buf_put(out, "\n", 1); break;
        case 't': buf_put(out, "\t", 1); break;
        case 'r': buf_put(out, "\r", 1); break;
        case 'b': buf_put(out, "\b", 1); break;
        case 'f': buf_put(out, "\f", 1); break;
        case 'u': {
            if (end - v < 5) return 0;
            char hex[5] = {v[1], v[2], v[3], v[4], 0};
            uint32_t cp = (uint32_t)strtoul(hex, NULL, 16);
            v += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && end - v >= 7 && v[1] == '\\' && v[2] == 'u') {
                char lo[5] = {v[3], v[4], v[5], v[6], 0};
                cp = 0x10000 + ((cp - 0xD800) << 10) + ((uint32_t)strtoul(lo, NULL, 16) - 0xDC00);
                v += 6;
            }
            utf8_put(out, cp);
            break;
        }
        default: buf_put(out, v, 1); /* \" \\ \/ */
        }
    }
    return v < end;
}

/* ---- the store ---- */

typedef struct {
    buf ns, key, metadata, payload;
    uint64_t version;
    char hash[7 + 65];
    int64_t created_at, updated_at;
} record;

typedef struct {
    pthread_mutex_t lock;
    record **records;
    size_t len, cap;
} store;

static int64_t now_micros(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
}

static int buf_time(buf *b, int64_t micros) {
    time_t secs = (time_t)(micros / 1000000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    return buf_fmt(b, "\"%04d-%02d-%02dT%02d:%02d:%02d.%06dZ\"", tm.tm_year + 1900, tm.tm_mon + 1,
                   tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(micros % 1000000));
}

static int same(const buf *b, StowageBytes s) {
    return b->len == s.len && (s.len == 0 || memcmp(b->data, s.ptr, s.len) == 0);
}

static record *find(store *st, StowageBytes ns, StowageBytes key) {
    for (size_t i = 0; i < st->len; i++) {
        if (same(&st->records[i]->ns, ns) && same(&st->records[i]->key, key)) return st->records[i];
    }
    return NULL;
}

static int record_json(buf *b, const record *r) {
    return buf_str(b, "{\"namespace\":") || buf_json_str(b, r->ns.data, r->ns.len) ||
           buf_str(b, ",\"key\":") || buf_json_str(b, r->key.data, r->key.len) ||
           buf_fmt(b, ",\"version\":%llu,\"hash\":\"%s\",\"size\":%llu,\"created_at\":",
                   (unsigned long long)r->version, r->hash, (unsigned long long)r->payload.len) ||
           buf_time(b, r->created_at) || buf_str(b, ",\"updated_at\":") ||
           buf_time(b, r->updated_at) || buf_str(b, ",\"deleted_at\":null,\"metadata\":") ||
           buf_put(b, r->metadata.data, r->metadata.len) || buf_str(b, "}");
}

/* A NotFound status naming the version asked for, if any. */
static StowageStatus not_found(int has_version, uint64_t version) {
    char msg[96];
    if (has_version) snprintf(msg, sizeof(msg), "{\"version\":%llu}", (unsigned long long)version);
    else snprintf(msg, sizeof(msg), "{\"version\":null}");
    return fail(STOWAGE_NOT_FOUND, msg);
}

/* ---- factory ---- */

static StowageStatus write_json(StowageOwned *out, const char *json) {
    buf b = {0};
    if (buf_str(&b, json)) return out_of_memory();
    *out = owned(&b);
    return ok();
}

static StowageStatus factory_schema(const void *factory, StowageOwned *out) {
    (void)factory;
    return write_json(out, "{\"type\":\"object\",\"additionalProperties\":false}");
}

static const char CAPABILITIES[] = "{\"create_only\":true,\"if_version\":true,\"range_reads\":true}";

static StowageStatus factory_capabilities(const void *factory, StowageOwned *out) {
    (void)factory;
    return write_json(out, CAPABILITIES);
}

static StowageStatus factory_validate(const void *factory, StowageBytes config) {
    (void)factory;
    if (config.len == 0 || same(&(buf){(uint8_t *)"{}", 2, 2}, config) ||
        same(&(buf){(uint8_t *)"null", 4, 4}, config)) {
        return ok();
    }
    return fail(STOWAGE_INVALID_CONFIG,
                "{\"field\":\"storage.config\",\"message\":\"cmem takes no settings; remove them\"}");
}

static StowageStatus factory_create(const void *factory, StowageBytes config, void **out) {
    StowageStatus s = factory_validate(factory, config);
    if (s.code != STOWAGE_OK) return s;
    store *st = calloc(1, sizeof(store));
    if (!st) return out_of_memory();
    pthread_mutex_init(&st->lock, NULL);
    *out = st;
    return ok();
}

/* ---- backend ---- */

static void free_record(record *r) {
    free(r->ns.data);
    free(r->key.data);
    free(r->metadata.data);
    free(r->payload.data);
    free(r);
}

static void release(void *instance) {
    store *st = instance;
    for (size_t i = 0; i < st->len; i++) free_record(st->records[i]);
    free(st->records);
    pthread_mutex_destroy(&st->lock);
    free(st);
}

static StowageStatus capabilities(void *instance, StowageOwned *out) {
    (void)instance;
    return write_json(out, CAPABILITIES);
}

enum mode { OVERWRITE, CREATE, IF_VERSION };

typedef struct {
    store *st;
    record *r; /* the version being written; payload grows with each chunk */
    enum mode mode;
    uint64_t expected;
} writer;

static StowageStatus put_open(void *instance, StowageBytes ns, StowageBytes key,
                              StowageBytes metadata, StowageBytes options, void **out) {
    writer *w = calloc(1, sizeof(writer));
    record *r = calloc(1, sizeof(record));
    if (!w || !r || buf_put(&r->ns, ns.ptr, ns.len) || buf_put(&r->key, key.ptr, key.len) ||
        buf_put(&r->metadata, metadata.ptr, metadata.len)) {
        free(w);
        if (r) free_record(r);
        return out_of_memory();
    }
    const char *mode = json_field(options, "mode");
    w->st = instance;
    w->r = r;
    w->mode = OVERWRITE;
    if (mode && strncmp(mode, "\"Create\"", 8) == 0) w->mode = CREATE;
    if (json_u64(options, "IfVersion", &w->expected) || json_u64(options, "Base", &w->expected)) {
        w->mode = IF_VERSION;
    }
    *out = w;
    return ok();
}

static StowageStatus put_write(void *handle, StowageBytes chunk) {
    writer *w = handle;
    return buf_put(&w->r->payload, chunk.ptr, chunk.len) ? out_of_memory() : ok();
}

static void put_abort(void *handle) {
    writer *w = handle;
    free_record(w->r);
    free(w);
}

static StowageStatus put_finish(void *handle, StowageOwned *out) {
    writer *w = handle;
    record *r = w->r;
    blake3_hasher h;
    uint8_t digest[32];
    blake3_hasher_init(&h);
    blake3_hasher_update(&h, r->payload.data, r->payload.len);
    blake3_hasher_finalize(&h, digest);
    memcpy(r->hash, "blake3:", 7);
    for (int i = 0; i < 32; i++) snprintf(r->hash + 7 + 2 * i, 3, "%02x", digest[i]);

    store *st = w->st;
    StowageStatus status = ok();
    pthread_mutex_lock(&st->lock);
    record *old = find(st, (StowageBytes){r->ns.data, r->ns.len}, (StowageBytes){r->key.data, r->key.len});
    uint64_t current = old ? old->version : 0;
    char msg[128];
    if ((w->mode == CREATE && old) || (w->mode == IF_VERSION && w->expected != current)) {
        if (w->mode == CREATE) snprintf(msg, sizeof(msg), "{\"expected\":\"absent\",\"current\":%llu}", (unsigned long long)current);
        else if (current) snprintf(msg, sizeof(msg), "{\"expected\":\"version %llu\",\"current\":%llu}", (unsigned long long)w->expected, (unsigned long long)current);
        else snprintf(msg, sizeof(msg), "{\"expected\":\"version %llu\",\"current\":null}", (unsigned long long)w->expected);
        status = fail(STOWAGE_CONFLICT, msg);
        free_record(r);
    } else {
        r->version = current + 1;
        r->updated_at = now_micros();
        r->created_at = old ? old->created_at : r->updated_at;
        if (old) {
            for (size_t i = 0; i < st->len; i++) if (st->records[i] == old) st->records[i] = r;
            free_record(old);
        } else {
            if (st->len == st->cap) {
                size_t cap = st->cap ? st->cap * 2 : 16;
                record **grown = realloc(st->records, cap * sizeof(record *));
                if (!grown) {
                    pthread_mutex_unlock(&st->lock);
                    free_record(r);
                    free(w);
                    return out_of_memory();
                }
                st->records = grown;
                st->cap = cap;
            }
            st->records[st->len++] = r;
        }
        buf b = {0};
        if (record_json(&b, r)) { free(b.data); status = out_of_memory(); }
        else *out = owned(&b);
    }
    pthread_mutex_unlock(&st->lock);
    free(w);
    return status;
}

typedef struct {
    buf data; /* a copy, so the reader outlives changes to the record and the instance */
    size_t pos;
} reader;

/* Finds the version a get/head asks for; fills the NotFound status when there is none. */
static record *resolve(store *st, StowageBytes ns, StowageBytes key, StowageBytes options,
                       StowageStatus *status) {
    uint64_t version = 0;
    int has_version = json_u64(options, "version", &version);
    record *r = find(st, ns, key);
    if (!r || (has_version && r->version != version)) {
        *status = not_found(has_version, version);
        return NULL;
    }
    return r;
}

static void get_close(void *handle) {
    reader *rd = handle;
    free(rd->data.data);
    free(rd);
}

/* A reader of bytes start..end of r's payload (end clamped to its size; without has_end, to
 * the end), or NULL with *status set. */
static reader *open_range(const record *r, uint64_t start, int has_end, uint64_t end,
                          StowageStatus *status) {
    uint64_t size = r->payload.len;
    if (!has_end || end > size) end = size;
    /* A start at or past the end is refused, as HTTP does, except 0 of an empty payload. */
    if (start > size || (start == size && size > 0) || (has_end && end < start)) {
        char msg[128];
        snprintf(msg, sizeof(msg), "{\"message\":\"range %llu..%llu does not fit a payload of %llu bytes\"}",
                 (unsigned long long)start, (unsigned long long)end, (unsigned long long)size);
        *status = fail(STOWAGE_INVALID_INPUT, msg);
        return NULL;
    }
    reader *rd = calloc(1, sizeof(reader));
    if (!rd || buf_put(&rd->data, r->payload.data + start, end - start)) {
        if (rd) get_close(rd);
        *status = out_of_memory();
        return NULL;
    }
    return rd;
}

static StowageStatus get_open(void *instance, StowageBytes ns, StowageBytes key,
                              StowageBytes options, StowageOwned *out_info, void **out_reader) {
    store *st = instance;
    StowageStatus status = ok();
    pthread_mutex_lock(&st->lock);
    record *r = resolve(st, ns, key, options, &status);
    if (r) {
        uint64_t start = 0, end = 0;
        int has_end = 0;
        const char *range = json_field(options, "range");
        if (range && *range == '{') {
            StowageBytes sub = {(const uint8_t *)range, options.len - (size_t)(range - (const char *)options.ptr)};
            json_u64(sub, "start", &start);
            has_end = json_u64(sub, "end", &end);
        }
        reader *rd = open_range(r, start, has_end, end, &status);
        buf info = {0};
        if (rd && record_json(&info, r)) {
            free(info.data);
            get_close(rd);
            status = out_of_memory();
        } else if (rd) {
            *out_info = owned(&info);
            *out_reader = rd;
        }
    }
    pthread_mutex_unlock(&st->lock);
    return status;
}

/* Payload chunks are at most this long. */
#define CHUNK (256 * 1024)

static StowageStatus get_read(void *handle, StowageOwned *out) {
    reader *rd = handle;
    size_t n = rd->data.len - rd->pos;
    if (n > CHUNK) n = CHUNK;
    buf b = {0};
    if (n && buf_put(&b, rd->data.data + rd->pos, n)) return out_of_memory();
    rd->pos += n;
    *out = owned(&b);
    return ok();
}

#ifndef CMEM_ABI_1_0
static int hex_digit(char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* ABI 1.1: a get in one call, with binary options and record info. The record's metadata goes
 * in rest_json; the first chunk in out_first, and a reader only if more follows. */
static StowageStatus get_first(void *instance, StowageBytes ns, StowageBytes key,
                               const StowageGetOptions *options, StowageRecordInfo *out_info,
                               StowageOwned *out_first, void **out_reader) {
    const uint32_t known = STOWAGE_FLAG_GET_VERSION | STOWAGE_FLAG_GET_RANGE | STOWAGE_FLAG_GET_RANGE_END;
    if (!options || options->struct_size < sizeof(StowageGetOptions) || !out_info ||
        out_info->struct_size < sizeof(StowageRecordInfo) || !out_first || !out_reader)
        return fail(STOWAGE_INVALID_INPUT, "cmem get_first: an argument is missing or smaller than ABI 1.1's");
    if (options->flags & ~known) return fail(STOWAGE_INVALID_INPUT, "cmem get_first: unknown option flags");
    store *st = instance;
    StowageStatus status = ok();
    pthread_mutex_lock(&st->lock);
    int has_version = (options->flags & STOWAGE_FLAG_GET_VERSION) != 0;
    record *r = find(st, ns, key);
    if (!r || (has_version && r->version != options->version)) {
        status = not_found(has_version, options->version);
    } else {
        int has_range = (options->flags & STOWAGE_FLAG_GET_RANGE) != 0;
        int has_end = has_range && (options->flags & STOWAGE_FLAG_GET_RANGE_END);
        reader *rd = open_range(r, has_range ? options->range_start : 0, has_end, options->range_end, &status);
        StowageRecordInfo info;
        memset(&info, 0, sizeof(info));
        info.struct_size = sizeof(info);
        info.version = r->version;
        info.size = r->payload.len;
        info.created_at = r->created_at;
        info.updated_at = r->updated_at;
        for (size_t i = 0; i < 32; i++) /* r->hash is "blake3:" and 64 hex digits */
            info.hash[i] = (uint8_t)(hex_digit(r->hash[7 + 2 * i]) << 4 | hex_digit(r->hash[8 + 2 * i]));
        buf rest = {0};
        StowageOwned first = {NULL, 0, NULL};
        if (rd && (buf_str(&rest, "{\"metadata\":") || buf_put(&rest, r->metadata.data, r->metadata.len) ||
                   buf_str(&rest, "}"))) {
            free(rest.data);
            get_close(rd);
            status = out_of_memory();
        } else if (rd && (status = get_read(rd, &first)).code != STOWAGE_OK) {
            free(rest.data);
            get_close(rd);
        } else if (rd) {
#ifdef CMEM_LIE_IN_GET_FIRST
            /* A test fixture: a plugin that breaks the get_first contract for some keys. */
            if (key.len >= 10 && memcmp(key.ptr, "lie/flags/", 10) == 0) info.flags |= 0x80;
            if (key.len >= 10 && memcmp(key.ptr, "lie/short/", 10) == 0) {
                first.len /= 2;
                rd->pos = rd->data.len;
            }
#endif
            info.rest_json = owned(&rest);
            *out_info = info;
            *out_first = first;
            if (rd->pos == rd->data.len) {
                get_close(rd);
                *out_reader = NULL;
            } else {
                *out_reader = rd;
            }
        }
    }
    pthread_mutex_unlock(&st->lock);
    return status;
}
#endif

static StowageStatus head(void *instance, StowageBytes ns, StowageBytes key, StowageBytes options,
                          StowageOwned *out) {
    store *st = instance;
    StowageStatus status = ok();
    pthread_mutex_lock(&st->lock);
    record *r = resolve(st, ns, key, options, &status);
    if (r) {
        buf b = {0};
        if (record_json(&b, r)) { free(b.data); status = out_of_memory(); }
        else *out = owned(&b);
    }
    pthread_mutex_unlock(&st->lock);
    return status;
}

static int key_cmp(const void *a, const void *b) {
    const record *x = *(record *const *)a, *y = *(record *const *)b;
    size_t n = x->key.len < y->key.len ? x->key.len : y->key.len;
    int c = n ? memcmp(x->key.data, y->key.data, n) : 0;
    return c ? c : (x->key.len > y->key.len) - (x->key.len < y->key.len);
}

static int bytes_cmp(const buf *a, const buf *b) {
    size_t n = a->len < b->len ? a->len : b->len;
    int c = n ? memcmp(a->data, b->data, n) : 0;
    return c ? c : (a->len > b->len) - (a->len < b->len);
}

/* Whether bytes are well-formed UTF-8 (keys are text, so a cursor must decode to text). */
static int valid_utf8(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
        if (len == 0 || i + len > n) return 0;
        uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1Fu) : len == 3 ? (c & 0x0Fu) : (c & 0x07u);
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3Fu);
        }
        static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp < 0xE000)) return 0;
        i += len;
    }
    return 1;
}

/* Decodes a list cursor ("k:" + hex of the key) into out; 0 if malformed. */
static int decode_cursor(const buf *cursor, buf *out) {
    if (cursor->len < 2 || memcmp(cursor->data, "k:", 2) != 0 || cursor->len % 2 != 0) return 0;
    for (size_t i = 2; i < cursor->len; i += 2) {
        char hex[3] = {(char)cursor->data[i], (char)cursor->data[i + 1], 0};
        if (!isxdigit((unsigned char)hex[0]) || !isxdigit((unsigned char)hex[1])) return 0;
        uint8_t byte = (uint8_t)strtoul(hex, NULL, 16);
        buf_put(out, &byte, 1);
    }
    return valid_utf8(out->data, out->len);
}

static StowageStatus list(void *instance, StowageBytes ns, StowageBytes options, StowageOwned *out) {
    store *st = instance;
    buf prefix = {0}, after = {0}, cursor = {0}, from_cursor = {0}, b = {0};
    uint64_t limit = UINT64_MAX;
    json_string(options, "prefix", &prefix);
    json_string(options, "start_after", &after);
    json_u64(options, "limit", &limit);
    int has_after = json_field(options, "start_after") && *json_field(options, "start_after") == '"';
    if (json_string(options, "cursor", &cursor)) {
        if (!decode_cursor(&cursor, &from_cursor)) {
            free(prefix.data); free(after.data); free(cursor.data); free(from_cursor.data);
            return fail(STOWAGE_INVALID_INPUT, "list cursor is not one a listing returned");
        }
        if (!has_after || bytes_cmp(&from_cursor, &after) > 0) {
            free(after.data);
            after = from_cursor;
            from_cursor = (buf){0};
            has_after = 1;
        }
    }
    StowageStatus status = ok();
    pthread_mutex_lock(&st->lock);
    record **match = malloc((st->len + 1) * sizeof(record *));
    size_t n = 0;
    for (size_t i = 0; match && i < st->len; i++) {
        record *r = st->records[i];
        if (!same(&r->ns, ns)) continue;
        if (prefix.len && (r->key.len < prefix.len || memcmp(r->key.data, prefix.data, prefix.len))) continue;
        if (has_after && bytes_cmp(&r->key, &after) <= 0) continue;
        match[n++] = r;
    }
    if (!match) {
        status = out_of_memory();
    } else {
        qsort(match, n, sizeof(record *), key_cmp);
        size_t shown = (uint64_t)n > limit ? (size_t)limit : n;
        int bad = buf_str(&b, "{\"items\":[");
        for (size_t i = 0; i < shown && !bad; i++) bad = (i && buf_str(&b, ",")) || record_json(&b, match[i]);
        bad = bad || buf_str(&b, "],\"next\":");
        if (shown < n && shown > 0) {
            bad = bad || buf_str(&b, "\"k:");
            for (size_t i = 0; i < match[shown - 1]->key.len && !bad; i++) bad = buf_fmt(&b, "%02x", match[shown - 1]->key.data[i]);
            bad = bad || buf_str(&b, "\"}");
        } else {
            bad = bad || buf_str(&b, "null}");
        }
        if (bad) { free(b.data); status = out_of_memory(); }
        else *out = owned(&b);
    }
    pthread_mutex_unlock(&st->lock);
    free(match);
    free(prefix.data); free(after.data); free(cursor.data); free(from_cursor.data);
    return status;
}

/* ---- what the plugin exports ---- */

/* get_first is ABI 1.1 and optional: without it (CMEM_ABI_1_0) the host opens gets with
 * get_open. */
static const StowageBackendVTable BACKEND = {
    .struct_size = CMEM_BACKEND_SIZE,
    .release = release,
    .capabilities = capabilities,
    .put_open = put_open,
    .put_write = put_write,
    .put_finish = put_finish,
    .put_abort = put_abort,
    .get_open = get_open,
    .get_read = get_read,
    .get_close = get_close,
    .head = head,
    .list = list,
#ifndef CMEM_ABI_1_0
    .get_first = get_first,
#endif
};

static const StowageProviderVTable PROVIDERS[] = {{
    .struct_size = sizeof(StowageProviderVTable),
    .name = TEXT(PROVIDER),
    .description = TEXT("in-memory store written in C (example plugin)"),
    .factory = NULL,
    .config_schema = factory_schema,
    .capabilities = factory_capabilities,
    .validate = factory_validate,
    .create = factory_create,
    .backend = &BACKEND,
}};

static const StowagePluginDescriptor DESCRIPTOR = {
    .struct_size = sizeof(StowagePluginDescriptor),
    .abi_major = STOWAGE_ABI_MAJOR,
    .abi_minor = CMEM_ABI_MINOR,
    .target = TEXT(STOWAGE_TARGET),
    .plugin_name = TEXT(CMEM_PLUGIN_NAME),
    .plugin_version = TEXT("0.1.0"),
    .providers = PROVIDERS,
    .provider_count = 1,
};

const StowagePluginDescriptor *stowage_plugin_entry_v1(void) { return &DESCRIPTOR; }
