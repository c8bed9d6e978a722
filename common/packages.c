/* Package specs (see packages.h): syntax per language, normal forms, the compiled-in allowlists
 * and a request's canonical list. No I/O: the CLI, libsbx and sbxd all call it on untrusted
 * input, every length capped before it is used. */
#include "packages.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const lang_names[] = {[PKG_PYTHON] = "python", [PKG_JAVASCRIPT] = "javascript"};
static const char *const index_names[] = {[PKG_PYTHON] = "PyPI", [PKG_JAVASCRIPT] = "npm"};

int pkg_lang_of(const char *language, pkg_lang *out, sbx_err *err)
{
    /* TypeScript runs on Bun with JavaScript's packages (and layers). */
    if (language && !strcmp(language, "typescript")) {
        *out = PKG_JAVASCRIPT;
        return 0;
    }
    for (size_t i = 0; language && i < ARRAY_LEN(lang_names); i++)
        if (!strcmp(language, lang_names[i])) {
            *out = (pkg_lang)i;
            return 0;
        }
    return sbx_fail(err, PKG_ERR_SYNTAX, "packages need python or javascript, not `%.32s`",
                    language ? language : "");
}

/* ASCII only, whatever the locale. */
static bool is_alnum(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool in_set(char c, const char *extra)
{
    return c && (is_alnum(c) || strchr(extra, c));
}

/* A spec as it may be shown in a message: at most 80 bytes, anything unprintable as `?`. */
static void shown(const char *s, char out[88])
{
    size_t i = 0;
    for (; s[i] && i < 80; i++)
        out[i] = s[i] > ' ' && s[i] < 0x7f ? s[i] : '?';
    if (s[i])
        out[i++] = '.', out[i++] = '.', out[i++] = '.';
    out[i] = '\0';
}

/* The characters of a version beyond letters and digits: PEP 440 epochs (`1!2.0`) only in
 * Python. Ranges, wildcards, URLs, spaces and shell metacharacters are all outside. */
static const char *const version_extra[] = {[PKG_PYTHON] = ".+-_!", [PKG_JAVASCRIPT] = ".+-_"};

static int check_version(pkg_lang lang, const char *spec, const char *v, size_t n, pkg_spec *out,
                         sbx_err *err)
{
    char sh[88];
    shown(spec, sh);
    if (n == 0)
        return sbx_fail(err, PKG_ERR_SYNTAX, "package `%s` has an empty version", sh);
    if (n > PKG_MAX_VERSION)
        return sbx_fail(err, PKG_ERR_SYNTAX,
                        "package `%s`: the version is %zu bytes; the limit is %u", sh, n,
                        PKG_MAX_VERSION);
    if (!is_alnum(v[0]))
        return sbx_fail(err, PKG_ERR_SYNTAX,
                        "package `%s`: a version starts with a letter or digit (exact versions "
                        "only, not ranges)",
                        sh);
    for (size_t i = 0; i < n; i++)
        if (!in_set(v[i], version_extra[lang]))
            return sbx_fail(err, PKG_ERR_SYNTAX,
                            "package `%s`: the version holds `%c`; exact versions only: letters, "
                            "digits and `%s`",
                            sh, v[i] > ' ' && v[i] < 0x7f ? v[i] : '?', version_extra[lang]);
    memcpy(out->version, v, n);
    out->version[n] = '\0';
    return 0;
}

/* PEP 508 name, `==` pin or nothing; anything else said plainly. */
static int parse_python(const char *spec, pkg_spec *out, sbx_err *err)
{
    char sh[88];
    shown(spec, sh);
    size_t n = strspn(spec, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.");
    const char *rest = spec + n;
    if (n == 0)
        return sbx_fail(err, PKG_ERR_SYNTAX, "`%s` does not start with a package name", sh);
    if (n > PKG_MAX_NAME)
        return sbx_fail(err, PKG_ERR_SYNTAX, "package `%s`: the name is %zu bytes; the limit is %u",
                        sh, n, PKG_MAX_NAME);
    if (!is_alnum(spec[0]) || !is_alnum(spec[n - 1]))
        return sbx_fail(err, PKG_ERR_SYNTAX,
                        "package `%s`: a name starts and ends with a letter or digit", sh);
    if (*rest == '[')
        return sbx_fail(err, PKG_ERR_SYNTAX,
                        "package `%s`: extras (`name[extra]`) are not supported; name the extra "
                        "packages themselves",
                        sh);
    if (*rest == '@' || *rest == ';')
        return sbx_fail(err, PKG_ERR_SYNTAX,
                        "package `%s`: URLs and environment markers are not supported", sh);
    if (*rest && (strncmp(rest, "==", 2) || rest[2] == '='))
        return sbx_fail(err, PKG_ERR_SYNTAX,
                        strchr("<>=!~", *rest)
                            ? "package `%s`: only exact pins are supported (`name==version`, or "
                              "the name alone), not version ranges"
                            : "package `%s` is not `name==version`",
                        sh);
    /* PEP 503: lower case, each run of `-_.` one `-`. */
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = spec[i];
        if (c == '-' || c == '_' || c == '.') {
            if (out->name[o - 1] != '-')
                out->name[o++] = '-';
            continue;
        }
        out->name[o++] = c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
    }
    out->name[o] = '\0';
    out->version[0] = '\0';
    return *rest ? check_version(PKG_PYTHON, spec, rest + 2, strlen(rest + 2), out, err) : 0;
}

/* One part of an npm name (the whole of an unscoped one, or the scope or the name of a scoped
 * one): URL-safe without escaping, `~'!()*` excepted, not starting with `.` or `_`. */
static int check_npm_part(const char *spec, const char *p, size_t n, sbx_err *err)
{
    char sh[88];
    shown(spec, sh);
    if (n == 0)
        return sbx_fail(err, PKG_ERR_SYNTAX, "package `%s` has an empty name", sh);
    /* `-` too: the installer would take the spec for an option (`bun add --trust`). */
    if (p[0] == '.' || p[0] == '_' || p[0] == '-')
        return sbx_fail(err, PKG_ERR_SYNTAX, "package `%s`: a name may not start with `%c`", sh,
                        p[0]);
    for (size_t i = 0; i < n; i++)
        if (!in_set(p[i], "-._"))
            return sbx_fail(err, PKG_ERR_SYNTAX,
                            "package `%s`: a name holds only letters, digits and `-._` (got `%c`)",
                            sh, p[i] > ' ' && p[i] < 0x7f ? p[i] : '?');
    return 0;
}

static int parse_javascript(const char *spec, pkg_spec *out, sbx_err *err)
{
    char sh[88];
    shown(spec, sh);
    const char *slash = NULL, *at;
    if (spec[0] == '@') {
        slash = strchr(spec, '/');
        if (!slash)
            return sbx_fail(err, PKG_ERR_SYNTAX, "package `%s`: a scoped name is `@scope/name`",
                            sh);
        at = strchr(slash, '@');
    } else {
        at = strchr(spec, '@');
    }
    size_t n = at ? (size_t)(at - spec) : strlen(spec);
    if (n > PKG_MAX_NAME)
        return sbx_fail(err, PKG_ERR_SYNTAX, "package `%s`: the name is %zu bytes; the limit is %u",
                        sh, n, PKG_MAX_NAME);
    if (slash) {
        if (check_npm_part(spec, spec + 1, (size_t)(slash - spec - 1), err) < 0 ||
            check_npm_part(spec, slash + 1, n - (size_t)(slash + 1 - spec), err) < 0)
            return -1;
    } else if (check_npm_part(spec, spec, n, err) < 0) {
        return -1;
    }
    if ((n == 12 && !strncmp(spec, "node_modules", n)) ||
        (n == 11 && !strncmp(spec, "favicon.ico", n)))
        return sbx_fail(err, PKG_ERR_SYNTAX, "package `%s`: `%.*s` is a reserved name", sh, (int)n,
                        spec);
    /* npm names are not normalised: the registry has old names with capitals (JSONStream). */
    memcpy(out->name, spec, n);
    out->name[n] = '\0';
    out->version[0] = '\0';
    return at ? check_version(PKG_JAVASCRIPT, spec, at + 1, strlen(at + 1), out, err) : 0;
}

int pkg_parse(pkg_lang lang, const char *spec, pkg_spec *out, sbx_err *err)
{
    memset(out, 0, sizeof *out);
    if (!spec || !*spec)
        return sbx_fail(err, PKG_ERR_SYNTAX, "a package spec is empty");
    size_t len = strnlen(spec, PKG_MAX_SPEC + 1);
    if (len > PKG_MAX_SPEC) {
        char sh[88];
        shown(spec, sh);
        return sbx_fail(err, PKG_ERR_SYNTAX, "package spec `%s` is over %u bytes", sh,
                        PKG_MAX_SPEC);
    }
    return lang == PKG_PYTHON ? parse_python(spec, out, err) : parse_javascript(spec, out, err);
}

static int cmp_key(const void *key, const void *elem)
{
    return strcmp(key, *(const char *const *)elem);
}

bool pkg_allowed(pkg_lang lang, const char *name)
{
    const char *const *list = lang == PKG_PYTHON ? pkg_list_pypi : pkg_list_npm;
    size_t n = lang == PKG_PYTHON ? pkg_list_pypi_len : pkg_list_npm_len;
    return name && bsearch(name, list, n, sizeof *list, cmp_key) != NULL;
}

void pkg_format(pkg_lang lang, const pkg_spec *s, char *out, size_t n)
{
    snprintf(out, n, "%s%s%s", s->name,
             !s->version[0]       ? ""
             : lang == PKG_PYTHON ? "=="
                                  : "@",
             s->version);
}

static int cmp_spec(const void *a, const void *b)
{
    return strcmp(((const pkg_spec *)a)->name, ((const pkg_spec *)b)->name);
}

int pkg_check_list(const char *language, const char *const *specs, size_t n, bool skip_allowlist,
                   pkg_spec *out, sbx_err *err)
{
    pkg_spec tmp[PKG_MAX];
    pkg_lang lang;
    if (n > PKG_MAX)
        return sbx_fail(err, PKG_ERR_SYNTAX, "%zu packages; the limit is %u", n, PKG_MAX);
    if (n && !specs)
        return sbx_fail(err, PKG_ERR_SYNTAX, "a package list has a count but no entries");
    if (n && pkg_lang_of(language, &lang, err) < 0)
        return -1;
    for (size_t i = 0; i < n; i++)
        if (pkg_parse(lang, specs[i], &tmp[i], err) < 0)
            return -1;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < i; j++)
            if (!strcmp(tmp[i].name, tmp[j].name)) {
                char a[88], b[88];
                shown(specs[j], a);
                shown(specs[i], b);
                return sbx_fail(err, PKG_ERR_SYNTAX,
                                "`%s` and `%s` name the same package (`%s`): give it once", a, b,
                                tmp[i].name);
            }
    for (size_t i = 0; i < n && !skip_allowlist; i++)
        if (!pkg_allowed(lang, tmp[i].name))
            return sbx_fail(err, PKG_ERR_NOT_ALLOWED,
                            "package `%s` is not among the top 10,000 %s packages that are "
                            "allowed; check its name, or skip the list with --no-validation",
                            tmp[i].name, index_names[lang]);
    if (out && n) {
        memcpy(out, tmp, n * sizeof *tmp);
        qsort(out, n, sizeof *out, cmp_spec);
    }
    return 0;
}
