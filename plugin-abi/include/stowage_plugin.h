/*
 * stowage_plugin.h: the C contract between the stowage host and a provider plugin (ABI 1.1).
 *
 * A plugin is a shared library exporting one function, stowage_plugin_entry_v1, that returns a
 * descriptor living as long as the library. Rules (docs/plugins.md has the JSON shapes):
 *  - inputs are borrowed StowageBytes, valid only during the call;
 *  - outputs are StowageOwned buffers the receiver releases with their own free function;
 *  - every call returns a StowageStatus; on failure its message is a JSON object with the
 *    error's fields (at least "message") or plain UTF-8 text;
 *  - structs begin with struct_size and only grow at the end; function pointers may be NULL
 *    where marked optional;
 *  - instance functions may be called concurrently from any thread; a writer or reader handle
 *    is used by one thread at a time and may outlive its instance.
 * This file is checked against the Rust definitions (plugin-abi/src/lib.rs) by a test.
 */
#ifndef STOWAGE_PLUGIN_H
#define STOWAGE_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#define STOWAGE_ENTRY_SYMBOL "stowage_plugin_entry_v1"
#define STOWAGE_ABI_MAJOR 1
#define STOWAGE_ABI_MINOR 1

/* The Rust target triple of the host this plugin is built for; define it to override. */
#ifndef STOWAGE_TARGET
#if defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__)
#define STOWAGE_TARGET "x86_64-unknown-linux-gnu"
#elif defined(__aarch64__) && defined(__linux__) && defined(__GLIBC__)
#define STOWAGE_TARGET "aarch64-unknown-linux-gnu"
#elif defined(__x86_64__) && defined(__APPLE__)
#define STOWAGE_TARGET "x86_64-apple-darwin"
#elif defined(__aarch64__) && defined(__APPLE__)
#define STOWAGE_TARGET "aarch64-apple-darwin"
#else
#error "define STOWAGE_TARGET as the host's Rust target triple (rustc -vV | grep host)"
#endif
#endif

/* Status codes: 0 is success, the others follow stowage_core::ErrorKind. */
#define STOWAGE_OK 0
#define STOWAGE_INVALID_KEY 1
#define STOWAGE_INVALID_NAMESPACE 2
#define STOWAGE_INVALID_INPUT 3
#define STOWAGE_NOT_FOUND 4
#define STOWAGE_CONFLICT 5
#define STOWAGE_INVALID_CONFIG 6
#define STOWAGE_UNSUPPORTED 7
#define STOWAGE_PROVIDER_EXISTS 8
#define STOWAGE_UNKNOWN_PROVIDER 9
#define STOWAGE_CORRUPT 10
#define STOWAGE_LOCKED 11
#define STOWAGE_IO 12
#define STOWAGE_BACKEND 13
#define STOWAGE_PLUGIN 14
#define STOWAGE_PANICKED 15

/* Borrowed bytes; ptr may be NULL when len is 0. */
typedef struct StowageBytes {
    const uint8_t *ptr;
    size_t len;
} StowageBytes;

typedef void (*StowageFreeFn)(uint8_t *ptr, size_t len);

/* Bytes the receiver releases by calling free(ptr, len) when free is not NULL, from any
 * thread. */
typedef struct StowageOwned {
    uint8_t *ptr;
    size_t len;
    StowageFreeFn free;
} StowageOwned;

typedef struct StowageStatus {
    uint32_t code;
    StowageOwned message;
} StowageStatus;

typedef void (*StowageProgressFn)(void *ctx, uint64_t n);

typedef struct StowageProgress {
    void *ctx;
    StowageProgressFn set_total;
    StowageProgressFn inc;
} StowageProgress;

/* ABI 1.1: the binary get of get_first. Flags say which optional fields are set. */
#define STOWAGE_FLAG_GET_VERSION 1
#define STOWAGE_FLAG_GET_RANGE 2
#define STOWAGE_FLAG_GET_RANGE_END 4
#define STOWAGE_FLAG_INFO_DELETED 1

typedef struct StowageGetOptions {
    uint32_t struct_size;
    uint32_t flags;       /* STOWAGE_FLAG_GET_* */
    uint64_t version;     /* with STOWAGE_FLAG_GET_VERSION, else the latest */
    uint64_t range_start; /* with STOWAGE_FLAG_GET_RANGE */
    uint64_t range_end;   /* exclusive, with STOWAGE_FLAG_GET_RANGE_END, else to the end */
} StowageGetOptions;

/* The host sets struct_size; the plugin writes the fields that fit. Times are microseconds
 * since the Unix epoch. rest_json holds the RecordInfo fields not below that are not empty
 * ("metadata", "conflicts") as a JSON object, or is empty. */
typedef struct StowageRecordInfo {
    uint32_t struct_size;
    uint32_t flags;       /* STOWAGE_FLAG_INFO_* */
    uint64_t version;
    uint64_t size;
    int64_t created_at;
    int64_t updated_at;
    int64_t deleted_at;   /* with STOWAGE_FLAG_INFO_DELETED */
    uint8_t hash[32];     /* blake3 */
    StowageOwned rest_json;
} StowageRecordInfo;

typedef StowageStatus (*StowageFactoryJsonFn)(const void *factory, StowageOwned *out_json);
typedef StowageStatus (*StowageValidateFn)(const void *factory, StowageBytes config_json);
typedef StowageStatus (*StowageCreateFn)(const void *factory, StowageBytes config_json,
                                         void **out_instance);
typedef void (*StowageReleaseFn)(void *handle);
typedef StowageStatus (*StowageInstanceFn)(void *instance);
typedef StowageStatus (*StowageInstanceJsonFn)(void *instance, StowageOwned *out_json);
typedef StowageStatus (*StowagePutOpenFn)(void *instance, StowageBytes ns, StowageBytes key,
                                          StowageBytes metadata_json, StowageBytes options_json,
                                          void **out_writer);
typedef StowageStatus (*StowagePutWriteFn)(void *writer, StowageBytes chunk);
/* Consumes the writer whatever the outcome. */
typedef StowageStatus (*StowagePutFinishFn)(void *writer, StowageOwned *out_info_json);
typedef StowageStatus (*StowageGetOpenFn)(void *instance, StowageBytes ns, StowageBytes key,
                                          StowageBytes options_json, StowageOwned *out_info_json,
                                          void **out_reader);
/* An empty chunk means the end of the payload. */
typedef StowageStatus (*StowageGetReadFn)(void *reader, StowageOwned *out_chunk);
/* ABI 1.1: a get in one call. *out_reader is set to NULL when *out_first holds the whole
 * payload, else to a reader of the rest (get_read / get_close). A call that fails writes none
 * of the outputs. */
typedef StowageStatus (*StowageGetFirstFn)(void *instance, StowageBytes ns, StowageBytes key,
                                           const StowageGetOptions *options,
                                           StowageRecordInfo *out_info, StowageOwned *out_first,
                                           void **out_reader);
typedef StowageStatus (*StowageKeyOpFn)(void *instance, StowageBytes ns, StowageBytes key,
                                        StowageBytes options_json, StowageOwned *out_json);
typedef StowageStatus (*StowageScanFn)(void *instance, StowageBytes ns,
                                       StowageBytes options_json, StowageOwned *out_json);
typedef StowageStatus (*StowageReportFn)(void *instance, const StowageProgress *progress,
                                         StowageOwned *out_json);

/* Required: release, capabilities, put_*, get_open, get_read, get_close, head, list. The rest
 * are optional (NULL). */
typedef struct StowageBackendVTable {
    uint32_t struct_size;
    StowageReleaseFn release;
    StowageInstanceJsonFn capabilities;
    StowageInstanceFn initialize;
    StowagePutOpenFn put_open;
    StowagePutWriteFn put_write;
    StowagePutFinishFn put_finish;
    StowageReleaseFn put_abort;
    StowageGetOpenFn get_open;
    StowageGetReadFn get_read;
    StowageReleaseFn get_close;
    StowageKeyOpFn head;
    StowageScanFn list;
    StowageKeyOpFn delete;
    StowageScanFn search;
    StowageKeyOpFn versions;
    StowageKeyOpFn restore;
    StowageKeyOpFn purge;
    StowageReportFn gc;
    StowageReportFn verify;
    StowageInstanceJsonFn namespaces;
    StowageGetFirstFn get_first; /* ABI 1.1, optional */
} StowageBackendVTable;

/* All four factory functions are required. */
typedef struct StowageProviderVTable {
    uint32_t struct_size;
    StowageBytes name;
    StowageBytes description;
    const void *factory;
    StowageFactoryJsonFn config_schema;
    StowageFactoryJsonFn capabilities;
    StowageValidateFn validate;
    StowageCreateFn create;
    const StowageBackendVTable *backend;
} StowageProviderVTable;

typedef struct StowagePluginDescriptor {
    uint32_t struct_size;
    uint32_t abi_major;
    uint32_t abi_minor;
    StowageBytes target;
    StowageBytes plugin_name;
    StowageBytes plugin_version;
    const StowageProviderVTable *providers;
    size_t provider_count;
} StowagePluginDescriptor;

typedef const StowagePluginDescriptor *(*StowageEntryFn)(void);

#endif /* STOWAGE_PLUGIN_H */
