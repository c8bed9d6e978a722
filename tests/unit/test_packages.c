/* Package specs: syntax per language, normal forms, the compiled-in lists, a request's list. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "common.h"
#include "packages.h"

static sbx_err err = {0};

static void expect_spec(pkg_lang lang, const char *spec, const char *name, const char *version)
{
    pkg_spec s;
    err = (sbx_err){0};
    if (pkg_parse(lang, spec, &s, &err) < 0)
        fail_msg("`%s` refused: %s", spec, err.msg);
    assert_string_equal(s.name, name);
    assert_string_equal(s.version, version);
}

static void expect_bad(pkg_lang lang, const char *spec, const char *why)
{
    pkg_spec s;
    err = (sbx_err){0};
    if (pkg_parse(lang, spec, &s, &err) == 0)
        fail_msg("`%s` accepted as %s / %s", spec, s.name, s.version);
    assert_int_equal(err.code, PKG_ERR_SYNTAX);
    if (!strstr(err.msg, why))
        fail_msg("`%s`: message `%s` lacks `%s`", spec, err.msg, why);
}

static void test_python_specs(void **state)
{
    expect_spec(PKG_PYTHON, "pandas==2.2.0", "pandas", "2.2.0");
    expect_spec(PKG_PYTHON, "pandas", "pandas", "");
    /* PEP 503: lower case, runs of -_. become one -. */
    expect_spec(PKG_PYTHON, "Django==5.0", "django", "5.0");
    expect_spec(PKG_PYTHON, "zope.interface==6.0", "zope-interface", "6.0");
    expect_spec(PKG_PYTHON, "Typing_Extensions", "typing-extensions", "");
    expect_spec(PKG_PYTHON, "a._-b", "a-b", "");
    expect_spec(PKG_PYTHON, "x", "x", "");
    expect_spec(PKG_PYTHON, "x9==1", "x9", "1");
    /* PEP 440 versions: epochs, local versions, pre-releases. */
    expect_spec(PKG_PYTHON, "torch==2.1.0+cpu", "torch", "2.1.0+cpu");
    expect_spec(PKG_PYTHON, "foo==1!2.0rc1", "foo", "1!2.0rc1");
    expect_spec(PKG_PYTHON, "foo==1.0.post1.dev2", "foo", "1.0.post1.dev2");
}

static void test_python_refused(void **state)
{
    expect_bad(PKG_PYTHON, "", "empty");
    expect_bad(PKG_PYTHON, "pandas>=2.0", "exact pins");
    expect_bad(PKG_PYTHON, "pandas<=2.0", "exact pins");
    expect_bad(PKG_PYTHON, "pandas~=2.0", "exact pins");
    expect_bad(PKG_PYTHON, "pandas!=2.0", "exact pins");
    expect_bad(PKG_PYTHON, "pandas===2.0", "exact pins");
    expect_bad(PKG_PYTHON, "pandas>2", "exact pins");
    expect_bad(PKG_PYTHON, "pandas=2.0", "exact pins");
    expect_bad(PKG_PYTHON, "pandas==2.*", "exact versions only");
    expect_bad(PKG_PYTHON, "pandas==2.0,<3", "`,`");
    expect_bad(PKG_PYTHON, "pandas==", "empty version");
    expect_bad(PKG_PYTHON, "pandas==.1", "starts with a letter or digit");
    expect_bad(PKG_PYTHON, "pandas == 2.0", "not `name==version`");
    expect_bad(PKG_PYTHON, " pandas", "does not start with a package name");
    expect_bad(PKG_PYTHON, "==1.0", "does not start with a package name");
    expect_bad(PKG_PYTHON, "-pandas", "starts and ends");
    expect_bad(PKG_PYTHON, "pandas-", "starts and ends");
    expect_bad(PKG_PYTHON, "_x==1", "starts and ends");
    expect_bad(PKG_PYTHON, "requests[socks]==2.0", "extras");
    expect_bad(PKG_PYTHON, "foo @ https://x/y.whl", "not `name==version`");
    expect_bad(PKG_PYTHON, "foo@https://x/y.whl", "URLs");
    expect_bad(PKG_PYTHON, "foo;python_version<'3'", "markers");
    /* Shell metacharacters and controls, in the name or the version. */
    expect_bad(PKG_PYTHON, "foo==1;rm -rf /", "`;`");
    expect_bad(PKG_PYTHON, "foo==1$(id)", "`$`");
    expect_bad(PKG_PYTHON, "foo==1`id`", "``");
    expect_bad(PKG_PYTHON, "foo==1|x", "`|`");
    expect_bad(PKG_PYTHON, "foo==1\n", "`?`");
    expect_bad(PKG_PYTHON, "foo$bar", "not `name==version`");
    expect_bad(PKG_PYTHON, "foo==1 ", "`?`");
    expect_bad(PKG_PYTHON, "f\xc3\xa9", "not `name==version`");
}

static void test_lengths(void **state)
{
    char buf[1024];
    /* Version: 64 bytes pass, 65 do not. */
    snprintf(buf, sizeof buf, "x==%0*d", (int)PKG_MAX_VERSION, 0);
    expect_spec(PKG_PYTHON, buf, "x", buf + 3);
    snprintf(buf, sizeof buf, "x==%0*d", (int)PKG_MAX_VERSION + 1, 0);
    expect_bad(PKG_PYTHON, buf, "65 bytes");
    snprintf(buf, sizeof buf, "x@%0*d", (int)PKG_MAX_VERSION + 1, 0);
    expect_bad(PKG_JAVASCRIPT, buf, "the limit is 64");
    /* Name: 214 bytes pass, 215 do not, in both languages. */
    memset(buf, 'a', PKG_MAX_NAME);
    buf[PKG_MAX_NAME] = '\0';
    expect_spec(PKG_PYTHON, buf, buf, "");
    expect_spec(PKG_JAVASCRIPT, buf, buf, "");
    buf[PKG_MAX_NAME] = 'a';
    buf[PKG_MAX_NAME + 1] = '\0';
    expect_bad(PKG_PYTHON, buf, "215 bytes");
    expect_bad(PKG_JAVASCRIPT, buf, "215 bytes");
    /* A whole spec over the cap is refused without being read further, and shown cut. */
    memset(buf, 'a', sizeof buf - 1);
    buf[sizeof buf - 1] = '\0';
    expect_bad(PKG_PYTHON, buf, "over 300 bytes");
    assert_non_null(strstr(err.msg, "aaa...`"));
    assert_true(strlen(err.msg) < 200);
    expect_bad(PKG_JAVASCRIPT, buf, "over 300 bytes");
}

static void test_javascript_specs(void **state)
{
    expect_spec(PKG_JAVASCRIPT, "lodash@4.17.21", "lodash", "4.17.21");
    expect_spec(PKG_JAVASCRIPT, "lodash", "lodash", "");
    expect_spec(PKG_JAVASCRIPT, "@types/node@20.1.0", "@types/node", "20.1.0");
    expect_spec(PKG_JAVASCRIPT, "@babel/core", "@babel/core", "");
    expect_spec(PKG_JAVASCRIPT, "left-pad@1.3.0-beta.1+build.5", "left-pad",
                "1.3.0-beta.1+build.5");
    expect_spec(PKG_JAVASCRIPT, "lodash.merge@4.6.2", "lodash.merge", "4.6.2");
    expect_spec(PKG_JAVASCRIPT, "react@latest", "react", "latest");
    /* Old names keep their capitals: npm names are case-sensitive. */
    expect_spec(PKG_JAVASCRIPT, "JSONStream@1.3.5", "JSONStream", "1.3.5");
}

static void test_javascript_refused(void **state)
{
    expect_bad(PKG_JAVASCRIPT, "", "empty");
    expect_bad(PKG_JAVASCRIPT, "@types", "@scope/name");
    expect_bad(PKG_JAVASCRIPT, "@/node", "empty name");
    expect_bad(PKG_JAVASCRIPT, "@types/", "empty name");
    expect_bad(PKG_JAVASCRIPT, "@types/@1.0", "empty name");
    expect_bad(PKG_JAVASCRIPT, "@1.0", "@scope/name");
    expect_bad(PKG_JAVASCRIPT, "lodash@", "empty version");
    expect_bad(PKG_JAVASCRIPT, ".bin", "may not start with `.`");
    expect_bad(PKG_JAVASCRIPT, "_private", "may not start with `_`");
    expect_bad(PKG_JAVASCRIPT, "@scope/.x", "may not start with `.`");
    expect_bad(PKG_JAVASCRIPT, "--trust", "may not start with `-`");
    expect_bad(PKG_JAVASCRIPT, "-g@1.0.0", "may not start with `-`");
    expect_bad(PKG_JAVASCRIPT, "@-x/y", "may not start with `-`");
    expect_bad(PKG_JAVASCRIPT, "a/b", "`/`");
    expect_bad(PKG_JAVASCRIPT, "@a/b/c", "`/`");
    expect_bad(PKG_JAVASCRIPT, "node_modules", "reserved");
    expect_bad(PKG_JAVASCRIPT, "favicon.ico@1.0.0", "reserved");
    expect_bad(PKG_JAVASCRIPT, "lodash@^4.0.0", "starts with a letter or digit");
    expect_bad(PKG_JAVASCRIPT, "lodash@~4.0.0", "starts with a letter or digit");
    expect_bad(PKG_JAVASCRIPT, "lodash@>=4", "starts with a letter or digit");
    expect_bad(PKG_JAVASCRIPT, "lodash@4 || 5", "`?`");
    expect_bad(PKG_JAVASCRIPT, "lodash@1.x*", "`*`");
    expect_bad(PKG_JAVASCRIPT, "lodash@npm:evil@1.0.0", "`:`");
    expect_bad(PKG_JAVASCRIPT, "x@git+https://evil/x.git", "`:`");
    expect_bad(PKG_JAVASCRIPT, "x@file:../x", "`:`");
    expect_bad(PKG_JAVASCRIPT, "x@1.0.0!", "`!`"); /* Python-only epochs */
    expect_bad(PKG_JAVASCRIPT, "x@1;id", "`;`");
    expect_bad(PKG_JAVASCRIPT, "foo bar", "`?`");
    expect_bad(PKG_JAVASCRIPT, "x~y", "`~`");
    expect_bad(PKG_JAVASCRIPT, "x(y)", "`(`");
    expect_bad(PKG_JAVASCRIPT, "pandas==2.0", "`=`");
}

static void test_lists(void **state)
{
    /* Sorted bytewise without duplicates (bsearch depends on it); Python names in normal form;
     * every entry a valid spec of its language. */
    assert_true(pkg_list_pypi_len > 9000);
    assert_true(pkg_list_npm_len > 9000);
    for (size_t i = 1; i < pkg_list_pypi_len; i++)
        assert_true(strcmp(pkg_list_pypi[i - 1], pkg_list_pypi[i]) < 0);
    for (size_t i = 1; i < pkg_list_npm_len; i++)
        assert_true(strcmp(pkg_list_npm[i - 1], pkg_list_npm[i]) < 0);
    pkg_spec s;
    for (size_t i = 0; i < pkg_list_pypi_len; i++) {
        assert_int_equal(pkg_parse(PKG_PYTHON, pkg_list_pypi[i], &s, &err), 0);
        assert_string_equal(s.name, pkg_list_pypi[i]);
        assert_true(pkg_allowed(PKG_PYTHON, pkg_list_pypi[i]));
    }
    for (size_t i = 0; i < pkg_list_npm_len; i++) {
        if (pkg_parse(PKG_JAVASCRIPT, pkg_list_npm[i], &s, &err) < 0)
            fail_msg("npm list entry `%s`: %s", pkg_list_npm[i], err.msg);
        assert_true(pkg_allowed(PKG_JAVASCRIPT, pkg_list_npm[i]));
    }
    assert_true(pkg_allowed(PKG_PYTHON, "numpy"));
    assert_true(pkg_allowed(PKG_PYTHON, "typing-extensions"));
    assert_false(pkg_allowed(PKG_PYTHON, "typing_extensions")); /* normalise first */
    assert_false(pkg_allowed(PKG_PYTHON, "lodash-not-on-pypi-zz"));
    assert_false(pkg_allowed(PKG_PYTHON, ""));
    assert_false(pkg_allowed(PKG_PYTHON, NULL));
    assert_true(pkg_allowed(PKG_JAVASCRIPT, "lodash"));
    assert_true(pkg_allowed(PKG_JAVASCRIPT, "@types/node"));
    assert_true(pkg_allowed(PKG_JAVASCRIPT, "JSONStream"));
    assert_false(pkg_allowed(PKG_JAVASCRIPT, "jsonstream-zz"));
    /* The first and last entries are found (bsearch's edges). */
    assert_true(pkg_allowed(PKG_PYTHON, pkg_list_pypi[0]));
    assert_true(pkg_allowed(PKG_PYTHON, pkg_list_pypi[pkg_list_pypi_len - 1]));
    assert_true(pkg_allowed(PKG_JAVASCRIPT, pkg_list_npm[0]));
    assert_true(pkg_allowed(PKG_JAVASCRIPT, pkg_list_npm[pkg_list_npm_len - 1]));
}

static void test_lang(void **state)
{
    pkg_lang l;
    assert_int_equal(pkg_lang_of("python", &l, &err), 0);
    assert_int_equal(l, PKG_PYTHON);
    assert_int_equal(pkg_lang_of("javascript", &l, &err), 0);
    assert_int_equal(l, PKG_JAVASCRIPT);
    /* TypeScript installs (and shares) JavaScript's packages. */
    l = PKG_PYTHON;
    assert_int_equal(pkg_lang_of("typescript", &l, &err), 0);
    assert_int_equal(l, PKG_JAVASCRIPT);
    assert_int_equal(pkg_check_list("typescript", (const char *const[]){"is-number@7.0.0"}, 1,
                                    false, NULL, &err),
                     0);
    assert_int_equal(pkg_lang_of("raw", &l, &err), -1);
    assert_non_null(strstr(err.msg, "python or javascript, not `raw`"));
    assert_int_equal(pkg_lang_of(NULL, &l, &err), -1);
}

static void test_canonical_list(void **state)
{
    pkg_spec a[PKG_MAX], b[PKG_MAX];
    const char *one[] = {"requests==2.31.0", "Numpy==1.26.0", "attrs"};
    const char *two[] = {"numpy==1.26.0", "attrs", "requests==2.31.0"};
    assert_int_equal(pkg_check_list("python", one, 3, false, a, &err), 0);
    assert_int_equal(pkg_check_list("python", two, 3, false, b, &err), 0);
    assert_memory_equal(a, b, 3 * sizeof a[0]);
    char text[PKG_MAX_SPEC];
    pkg_format(PKG_PYTHON, &a[0], text, sizeof text);
    assert_string_equal(text, "attrs");
    pkg_format(PKG_PYTHON, &a[1], text, sizeof text);
    assert_string_equal(text, "numpy==1.26.0");
    pkg_format(PKG_PYTHON, &a[2], text, sizeof text);
    assert_string_equal(text, "requests==2.31.0");
    const char *js[] = {"lodash@4.17.21", "@types/node@20.0.0"};
    assert_int_equal(pkg_check_list("javascript", js, 2, false, a, &err), 0);
    pkg_format(PKG_JAVASCRIPT, &a[0], text, sizeof text);
    assert_string_equal(text, "@types/node@20.0.0");
    pkg_format(PKG_JAVASCRIPT, &a[1], text, sizeof text);
    assert_string_equal(text, "lodash@4.17.21");
    /* Empty lists are fine in any language, even raw; out may be NULL. */
    assert_int_equal(pkg_check_list("raw", NULL, 0, false, NULL, &err), 0);
    assert_int_equal(pkg_check_list("python", one, 3, false, NULL, &err), 0);
}

static void test_list_refused(void **state)
{
    pkg_spec out[PKG_MAX];
    const char *many[PKG_MAX + 1];
    char names[PKG_MAX + 1][16];
    for (size_t i = 0; i <= PKG_MAX; i++) {
        snprintf(names[i], sizeof names[i], "p%zu==1", i);
        many[i] = names[i];
    }
    /* 50 well-formed (off the list, so skip it), 51 not. */
    assert_int_equal(pkg_check_list("python", many, PKG_MAX, true, out, &err), 0);
    assert_int_equal(pkg_check_list("python", many, PKG_MAX + 1, true, out, &err), -1);
    assert_int_equal(err.code, PKG_ERR_SYNTAX);
    assert_non_null(strstr(err.msg, "51 packages; the limit is 50"));
    assert_int_equal(pkg_check_list("python", NULL, 2, false, out, &err), -1);

    /* The same package twice, after normalisation, with different versions too. */
    const char *dup[] = {"Typing_Extensions==4.0", "attrs", "typing.extensions==4.1"};
    assert_int_equal(pkg_check_list("python", dup, 3, false, out, &err), -1);
    assert_int_equal(err.code, PKG_ERR_SYNTAX);
    assert_non_null(strstr(err.msg, "`Typing_Extensions==4.0` and `typing.extensions==4.1` name "
                                    "the same package (`typing-extensions`)"));
    const char *jdup[] = {"lodash@1.0.0", "lodash"};
    assert_int_equal(pkg_check_list("javascript", jdup, 2, true, out, &err), -1);
    assert_non_null(strstr(err.msg, "same package"));

    /* Off the list: named, with the way around it; skip_allowlist lets it through. */
    const char *off[] = {"numpy==1.26.0", "surely-not-a-real-package-zz==1.0"};
    assert_int_equal(pkg_check_list("python", off, 2, false, out, &err), -1);
    assert_int_equal(err.code, PKG_ERR_NOT_ALLOWED);
    assert_non_null(strstr(err.msg, "`surely-not-a-real-package-zz`"));
    assert_non_null(strstr(err.msg, "PyPI"));
    assert_non_null(strstr(err.msg, "--no-validation"));
    assert_int_equal(pkg_check_list("python", off, 2, true, out, &err), 0);
    const char *joff[] = {"left-pad-zz-nope@1.0.0"};
    assert_int_equal(pkg_check_list("javascript", joff, 1, false, out, &err), -1);
    assert_int_equal(err.code, PKG_ERR_NOT_ALLOWED);
    assert_non_null(strstr(err.msg, "npm"));
    /* A Python name is not a JavaScript one and back (each language has its own list). */
    const char *pandas[] = {"pandas"};
    assert_int_equal(pkg_check_list("javascript", pandas, 1, false, out, &err), -1);
    assert_int_equal(err.code, PKG_ERR_NOT_ALLOWED);

    /* Syntax is decided before the lists: an off-list name and a bad spec is a syntax error;
     * skipping the list never skips the syntax. */
    const char *both[] = {"surely-not-a-real-package-zz==1.0", "numpy>=1"};
    assert_int_equal(pkg_check_list("python", both, 2, false, out, &err), -1);
    assert_int_equal(err.code, PKG_ERR_SYNTAX);
    assert_int_equal(pkg_check_list("python", both, 2, true, out, &err), -1);
    assert_int_equal(err.code, PKG_ERR_SYNTAX);

    /* raw has no packages. */
    assert_int_equal(pkg_check_list("raw", pandas, 1, true, out, &err), -1);
    assert_int_equal(err.code, PKG_ERR_SYNTAX);
    assert_int_equal(pkg_check_list("ruby", pandas, 1, true, out, &err), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_python_specs),
        cmocka_unit_test(test_python_refused),
        cmocka_unit_test(test_lengths),
        cmocka_unit_test(test_javascript_specs),
        cmocka_unit_test(test_javascript_refused),
        cmocka_unit_test(test_lists),
        cmocka_unit_test(test_lang),
        cmocka_unit_test(test_canonical_list),
        cmocka_unit_test(test_list_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
