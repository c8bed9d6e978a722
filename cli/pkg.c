/* libsbx's packages: a request's specs checked before it is sent, by the rules sbxd applies
 * (common/packages.c, the lists compiled in), so a bad or unknown package fails without a round
 * trip and without a daemon. */
#include "libsbx_int.h"
#include "packages.h"

_Static_assert(SBX_PACKAGES_MAX == PKG_MAX, "libsbx.h and packages.h disagree on the count");

int check_packages(const char *language, const char *const *packages, size_t n, bool skip,
                   sbx_err *err)
{
    if (pkg_check_list(language ? language : "python", packages, n, skip, NULL, err) < 0) {
        if (err)
            err->code =
                err->code == PKG_ERR_NOT_ALLOWED ? SBX_ERR_PACKAGE_NOT_ALLOWED : SBX_ERR_VM_CONFIG;
        return -1;
    }
    return 0;
}

int sbx_check_packages(const char *language, const char *const *packages, size_t n,
                       bool skip_validation, sbx_error *err)
{
    sbx_err e = {0};
    return error_out(check_packages(language, packages, n, skip_validation, &e), &e, err);
}
