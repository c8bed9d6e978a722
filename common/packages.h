/* Package specs, pure parts shared by the CLI (early usage errors), libsbx and sbxd
 * (authoritative validation of a request): the syntax of one spec per language, its normal form,
 * the top-10k allowlists (data/, compiled in), and the canonical sorted list a request's
 * packages become (the future package layer's cache key is built from it). No I/O. */
#ifndef SBX_PACKAGES_H
#define SBX_PACKAGES_H

#include <stdbool.h>
#include <stddef.h>

#include "common.h"

#define PKG_MAX 50u         /* packages per run or session */
#define PKG_MAX_NAME 214u   /* bytes of a name (npm's limit; PyPI's names are shorter) */
#define PKG_MAX_VERSION 64u /* bytes of a version */
#define PKG_MAX_SPEC 300u   /* bytes of a whole spec: anything longer is refused unread */
/* err->code of a refusal: a spec that is not one (syntax, count, duplicate), or a name that is
 * not on its language's list. */
#define PKG_ERR_SYNTAX EINVAL
#define PKG_ERR_NOT_ALLOWED EACCES

typedef enum { PKG_PYTHON, PKG_JAVASCRIPT } pkg_lang;

/* One spec, normalised. */
typedef struct {
    char name[PKG_MAX_NAME + 1];       /* Python: PEP 503 form; JavaScript: as given */
    char version[PKG_MAX_VERSION + 1]; /* "": unpinned */
} pkg_spec;

/* "python" -> PKG_PYTHON, "javascript" and "typescript" -> PKG_JAVASCRIPT; -1 with err for any
 * other language (raw has no packages). */
int pkg_lang_of(const char *language, pkg_lang *out, sbx_err *err);

/* One spec as the user writes it. Python: `name` or `name==version` (PEP 508 name: letters,
 * digits, `-_.`, starting and ending with a letter or digit; other operators, extras, markers
 * and URLs are refused). JavaScript: `name`, `name@version`, `@scope/name`,
 * `@scope/name@version` (npm: <= 214 bytes, URL-safe characters `a-z0-9-._` and capitals of old
 * names, not starting with `.` or `_`). Versions: 1-64 bytes of letters, digits and `.+-_!`
 * (`!` Python only), starting with a letter or digit: exact versions and tags, never ranges. */
int pkg_parse(pkg_lang lang, const char *spec, pkg_spec *out, sbx_err *err);

/* Whether name (normalised) is on lang's top-10k list. */
bool pkg_allowed(pkg_lang lang, const char *name);

/* The canonical text of a spec: `name==version` / `name@version`, or `name` when unpinned. */
void pkg_format(pkg_lang lang, const pkg_spec *s, char *out, size_t n);

/* A request's whole list: at most PKG_MAX specs, each valid, no name twice (after
 * normalisation), and unless skip_allowlist each name on its language's list. out (may be NULL)
 * gets the n specs sorted by name: the canonical list, the same whatever the order given.
 * Returns 0, or -1 with err (code PKG_ERR_SYNTAX or PKG_ERR_NOT_ALLOWED; a not-allowed
 * message names the package and `--no-validation`). Syntax is checked for every spec before
 * any name is looked up, so a request with both faults is a syntax error. */
int pkg_check_list(const char *language, const char *const *specs, size_t n, bool skip_allowlist,
                   pkg_spec *out, sbx_err *err);

/* The lists, generated from data/ by scripts/gen-pkglists.sh (build/gen/pkglists.c): sorted
 * bytewise, no duplicates, Python names in PEP 503 form. */
extern const char *const pkg_list_pypi[];
extern const size_t pkg_list_pypi_len;
extern const char *const pkg_list_npm[];
extern const size_t pkg_list_npm_len;

#endif
