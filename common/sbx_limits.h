/* The limits of the contract (reference "Limits") and the one validation of a run request,
 * shared by the CLI (early, friendly exit 2) and sbxd (authoritative). */
#ifndef SBX_LIMITS_H
#define SBX_LIMITS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"

#define SBX_MAX_CODE (1u << 20)
#define SBX_MAX_STDOUT (1u << 20)
#define SBX_MAX_STDERR (100u * 1024u)
#define SBX_MAX_ENV 100u
#define SBX_MAX_ENV_KEY 256u
#define SBX_MAX_ENV_VALUE (8u * 1024u)
#define SBX_TIMEOUT_MIN 1u
#define SBX_TIMEOUT_MAX 300u
#define SBX_TIMEOUT_DEFAULT 30u
#define SBX_MEMORY_MIN 128u
#define SBX_MEMORY_MAX 2048u
#define SBX_MEMORY_DEFAULT 256u
#define SBX_MAX_CONCURRENT_MIN 1u
#define SBX_MAX_CONCURRENT_MAX 100u
#define SBX_IDLE_TIMEOUT_MIN 10u /* a session's idle timeout, s */
#define SBX_IDLE_TIMEOUT_MAX 3600u
#define SBX_MAX_FILE (50u << 20) /* one file moved in or out of a session */
/* The package tree (a tar) sbxd reads out of an install VM: the biggest read it may ask for. */
#define SBX_MAX_LAYER_TAR (2048ull << 20)
#define SBX_MAX_PATH 255u           /* a guest path, bytes */
#define SBX_FILE_CHUNK (256u << 10) /* content bytes in one FileChunk (before compression) */

/* The languages a request may name, as error messages list them. */
#define SBX_LANGUAGES "python, javascript, typescript or raw"
/* The canonical static spelling of one of SBX_LANGUAGES, NULL for anything else (and NULL). */
const char *limits_language_name(const char *lang);
/* Returns true for one of SBX_LANGUAGES. */
bool limits_language_ok(const char *lang);
/* Each returns 0, or -1 with err saying what is wrong (EINVAL). */
int limits_check_code(const uint8_t *code, size_t len, sbx_err *err);
int limits_check_timeout(uint32_t seconds, sbx_err *err);
int limits_check_memory(uint32_t mb, sbx_err *err);
int limits_check_env(const char *key, const char *value, sbx_err *err);
int limits_check_env_count(size_t n, sbx_err *err);
int limits_check_idle_timeout(uint32_t seconds, sbx_err *err);
/* A path in a session's sandbox home: relative, 1..SBX_MAX_PATH bytes, no ".." component. The
 * guest confines paths for itself as well; this is the early, same-for-everyone refusal. */
int limits_check_guest_path(const char *path, sbx_err *err);

#endif
