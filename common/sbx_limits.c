/* Request validation against the contract's limits, the same code in the CLI, sbxd, the worker
 * and the agent. It only judges: it never fills in defaults or changes a request. */
#include "sbx_limits.h"

#include <errno.h>

#include <stdio.h>
#include <string.h>

const char *limits_language_name(const char *lang)
{
    static const char *const names[] = {"python", "javascript", "typescript", "raw"};
    for (size_t i = 0; lang && i < ARRAY_LEN(names); i++)
        if (!strcmp(lang, names[i]))
            return names[i];
    return NULL;
}

bool limits_language_ok(const char *lang)
{
    return limits_language_name(lang) != NULL;
}

int limits_check_code(const uint8_t *code, size_t len, sbx_err *err)
{
    if (len == 0) {
        sbx_fail(err, EINVAL, "code is empty");
        return -1;
    }
    if (len > SBX_MAX_CODE) {
        sbx_fail(err, EINVAL, "code is %zu bytes; the limit is %u (1 MiB)", len, SBX_MAX_CODE);
        return -1;
    }
    if (memchr(code, '\0', len)) {
        sbx_fail(err, EINVAL, "code contains a NUL byte");
        return -1;
    }
    return 0;
}

int limits_check_timeout(uint32_t s, sbx_err *err)
{
    if (s < SBX_TIMEOUT_MIN || s > SBX_TIMEOUT_MAX) {
        sbx_fail(err, EINVAL, "timeout %u s is out of range (%u-%u s)", s, SBX_TIMEOUT_MIN,
                 SBX_TIMEOUT_MAX);
        return -1;
    }
    return 0;
}

int limits_check_memory(uint32_t mb, sbx_err *err)
{
    if (mb < SBX_MEMORY_MIN || mb > SBX_MEMORY_MAX) {
        sbx_fail(err, EINVAL, "memory %u MB is out of range (%u-%u MB)", mb, SBX_MEMORY_MIN,
                 SBX_MEMORY_MAX);
        return -1;
    }
    return 0;
}

/* Names that would let the caller change how the interpreter or the dynamic loader starts,
 * rather than pass data to the code. Compared without regard to letter case: the names that
 * matter are upper case, but a refusal that `ld_preload` slips past reads as a hole to anyone
 * checking it, and the reference refuses every spelling too. */
static const char *const denied_env[] = {
    "PATH",      "HOME",        "USER",           "SHELL",         "IFS",           "BASH_ENV",
    "ENV",       "PYTHONPATH",  "PYTHONHOME",     "PYTHONSTARTUP", "PYTHONINSPECT", "NODE_OPTIONS",
    "NODE_PATH", "BUN_OPTIONS", "PROMPT_COMMAND", "SHELLOPTS",     "BASHOPTS",
};

/* Does key start with prefix (upper case), in any letter case? ASCII only, whatever the
 * process's locale (strcasecmp follows LC_CTYPE); key holds only [A-Za-z0-9_] by then. */
static bool env_name_starts(const char *key, const char *prefix)
{
    for (; *prefix; key++, prefix++) {
        char c = *key >= 'a' && *key <= 'z' ? (char)(*key - 'a' + 'A') : *key;
        if (c != *prefix)
            return false;
    }
    return true;
}

static bool env_name_is(const char *key, const char *name)
{
    return strlen(key) == strlen(name) && env_name_starts(key, name);
}

int limits_check_env(const char *key, const char *value, sbx_err *err)
{
    size_t kl = strlen(key);
    if (kl == 0 || kl > SBX_MAX_ENV_KEY) {
        sbx_fail(err, EINVAL, "environment variable name must be 1-%u characters", SBX_MAX_ENV_KEY);
        return -1;
    }
    if (!((key[0] >= 'A' && key[0] <= 'Z') || (key[0] >= 'a' && key[0] <= 'z') || key[0] == '_')) {
        sbx_fail(err, EINVAL, "environment variable name `%.64s` must start with a letter or _",
                 key);
        return -1;
    }
    for (size_t i = 0; i < kl; i++) {
        char c = key[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '_')) {
            sbx_fail(err, EINVAL,
                     "environment variable name `%.64s` may hold only letters, digits and _", key);
            return -1;
        }
    }
    if (env_name_starts(key, "LD_")) {
        sbx_fail(err, EINVAL, "environment variable `%.64s` is not allowed (dynamic loader)", key);
        return -1;
    }
    for (size_t i = 0; i < sizeof denied_env / sizeof denied_env[0]; i++)
        if (env_name_is(key, denied_env[i])) {
            sbx_fail(err, EINVAL,
                     "environment variable `%s` is not allowed (it changes how the "
                     "sandbox starts the code)",
                     key);
            return -1;
        }
    size_t vl = strlen(value);
    if (vl > SBX_MAX_ENV_VALUE) {
        sbx_fail(err, EINVAL, "value of `%.64s` is %zu bytes; the limit is %u", key, vl,
                 SBX_MAX_ENV_VALUE);
        return -1;
    }
    if (strpbrk(value, "\n\r")) {
        sbx_fail(err, EINVAL, "value of `%.64s` contains a newline", key);
        return -1;
    }
    return 0;
}

int limits_check_env_count(size_t n, sbx_err *err)
{
    if (n > SBX_MAX_ENV) {
        sbx_fail(err, EINVAL, "%zu environment variables; the limit is %u", n, SBX_MAX_ENV);
        return -1;
    }
    return 0;
}

int limits_check_idle_timeout(uint32_t s, sbx_err *err)
{
    if (s < SBX_IDLE_TIMEOUT_MIN || s > SBX_IDLE_TIMEOUT_MAX) {
        sbx_fail(err, EINVAL, "idle timeout %u s is out of range (%u-%u s)", s,
                 SBX_IDLE_TIMEOUT_MIN, SBX_IDLE_TIMEOUT_MAX);
        return -1;
    }
    return 0;
}

int limits_check_guest_path(const char *path, sbx_err *err)
{
    /* A C string cannot hold a NUL; callers that get paths as counted bytes (protobuf) must
     * compare strlen with the byte count to catch an embedded one. */
    size_t n = path ? strlen(path) : 0;
    if (n == 0) {
        sbx_fail(err, EINVAL, "the file path is empty");
        return -1;
    }
    if (n > SBX_MAX_PATH) {
        sbx_fail(err, EINVAL, "file path `%.64s...` is %zu bytes; the limit is %u", path, n,
                 SBX_MAX_PATH);
        return -1;
    }
    if (path[0] == '/') {
        sbx_fail(err, EINVAL,
                 "file path `%.255s` is absolute; give it relative to the sandbox home", path);
        return -1;
    }
    /* One spelling per file: no `..`, and no empty or `.` components (the guest agent refuses
     * them too, so refusing here gives the same error before any VM is touched). */
    for (const char *p = path;;) {
        size_t len = strcspn(p, "/");
        if (len == 2 && p[0] == '.' && p[1] == '.') {
            sbx_fail(err, EINVAL, "file path `%.255s` may not contain a `..` component", path);
            return -1;
        }
        if (len == 0 || (len == 1 && p[0] == '.')) {
            sbx_fail(err, EINVAL,
                     "file path `%.255s` has an empty or `.` component; write it as a plain "
                     "relative path (dir/file)",
                     path);
            return -1;
        }
        p += len;
        if (!*p)
            break;
        p++;
    }
    return 0;
}
