/* sbx's command line (cli/args.c): every option in each form, bad values, repeatables, the
 * options of later features, source resolution and loading; plus the libsbx helpers the CLI
 * relies on for output (error names, UTF-8 repair). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "args.h"
#include "common.h"
#include "libsbx.h"
#include "sbx_limits.h"

#include <limits.h>
#include <sys/stat.h>

static sbx_err err;

/* Parse a NULL-terminated list of arguments (after "sbx"). */
static int parse_v(args *a, const char *first, va_list ap)
{
    static char *argv[256];
    int argc = 0;
    argv[argc++] = "sbx";
    for (const char *s = first; s; s = va_arg(ap, const char *))
        argv[argc++] = (char *)s;
    argv[argc] = NULL;
    err = (sbx_err){0};
    return args_parse(argc, argv, a, &err);
}

static int parse(args *a, const char *first, ...)
{
    va_list ap;
    va_start(ap, first);
    int rc = parse_v(a, first, ap);
    va_end(ap);
    return rc;
}

/* Expect failure whose message contains `needle`. */
static void expect_error(const char *needle, const char *first, ...)
{
    args a;
    va_list ap;
    va_start(ap, first);
    int rc = parse_v(&a, first, ap);
    va_end(ap);
    if (rc != -1 || !strstr(err.msg, needle))
        fail_msg("expected error containing \"%s\", got rc=%d \"%s\"", needle, rc, err.msg);
    args_free(&a);
}

/* ---- commands and global options ---- */

static void test_no_command(void **state)
{
    args a;
    char *argv[] = {"sbx", NULL};
    assert_int_equal(args_parse(1, argv, &a, &err), -1);
    assert_non_null(strstr(err.msg, "no command"));
    assert_int_equal(a.cmd, ARGS_CMD_NONE);
    args_free(&a);
    expect_error("unknown command `frobnicate` (commands: run, session, status)", "frobnicate",
                 NULL);
    expect_error("unknown option `--frob`", "--frob", "run", "x", NULL);
    expect_error("no command", "--socket", "/tmp/s", NULL);
}

static void test_help_version(void **state)
{
    args a;
    assert_int_equal(parse(&a, "--help", NULL), 0);
    assert_int_equal(a.cmd, ARGS_CMD_HELP);
    args_free(&a);
    assert_int_equal(parse(&a, "-h", "run", NULL), 0);
    assert_int_equal(a.cmd, ARGS_CMD_HELP);
    args_free(&a);
    assert_int_equal(parse(&a, "--version", NULL), 0);
    assert_int_equal(a.cmd, ARGS_CMD_VERSION);
    args_free(&a);
    assert_int_equal(parse(&a, "-V", NULL), 0);
    assert_int_equal(a.cmd, ARGS_CMD_VERSION);
    args_free(&a);
    /* Help after the command is that command's help, and wins over later junk. */
    assert_int_equal(parse(&a, "run", "--help", "--bogus", NULL), 0);
    assert_int_equal(a.cmd, ARGS_CMD_RUN);
    assert_true(a.help);
    args_free(&a);
    assert_int_equal(parse(&a, "run", "-h", NULL), 0);
    assert_true(a.help);
    args_free(&a);
    assert_int_equal(parse(&a, "status", "--help", NULL), 0);
    assert_int_equal(a.cmd, ARGS_CMD_STATUS);
    assert_true(a.help);
    args_free(&a);
    /* --version is global only. */
    expect_error("unknown option `--version`", "run", "--version", NULL);
}

static void test_socket(void **state)
{
    args a;
    assert_int_equal(parse(&a, "--socket", "/tmp/a.sock", "status", NULL), 0);
    assert_string_equal(a.socket_path, "/tmp/a.sock");
    args_free(&a);
    assert_int_equal(parse(&a, "--socket=/tmp/b.sock", "run", "x", NULL), 0);
    assert_string_equal(a.socket_path, "/tmp/b.sock");
    args_free(&a);
    assert_int_equal(parse(&a, "run", "--socket", "/tmp/c.sock", "x", NULL), 0);
    assert_string_equal(a.socket_path, "/tmp/c.sock");
    args_free(&a);
    assert_int_equal(parse(&a, "status", "--socket=/tmp/d.sock", NULL), 0);
    assert_string_equal(a.socket_path, "/tmp/d.sock");
    args_free(&a);
    assert_int_equal(parse(&a, "status", NULL), 0);
    assert_null(a.socket_path);
    args_free(&a);
    expect_error("--socket needs a value", "--socket", NULL);
    expect_error("--socket needs a path", "--socket=", "status", NULL);
    expect_error("--socket needs a value", "run", "x", "--socket", NULL);
}

static void test_status(void **state)
{
    args a;
    assert_int_equal(parse(&a, "status", "--json", NULL), 0);
    assert_int_equal(a.cmd, ARGS_CMD_STATUS);
    assert_true(a.json);
    args_free(&a);
    assert_int_equal(parse(&a, "status", NULL), 0);
    assert_false(a.json);
    args_free(&a);
    expect_error("takes no arguments", "status", "extra", NULL);
    expect_error("unknown option `-q`", "status", "-q", NULL);
    expect_error("unknown option `--timeout`", "status", "--timeout", "5", NULL);
    expect_error("--json takes no value", "status", "--json=yes", NULL);
}

/* ---- run ---- */

static void test_run_defaults(void **state)
{
    args a;
    assert_int_equal(parse(&a, "run", "print(1)", NULL), 0);
    assert_int_equal(a.cmd, ARGS_CMD_RUN);
    assert_false(a.help);
    assert_false(a.json);
    assert_false(a.quiet);
    assert_null(a.language);
    assert_null(a.socket_path);
    assert_int_equal(a.timeout_s, 0);
    assert_int_equal(a.memory_mb, 0);
    assert_int_equal(a.concurrency, ARGS_CONCURRENCY_DEFAULT);
    assert_int_equal(a.n_env, 0);
    assert_int_equal(a.n_sources, 1);
    assert_string_equal(a.sources[0].text, "print(1)");
    assert_false(a.sources[0].inline_only);
    args_free(&a);
}

static void test_run_sources_order(void **state)
{
    args a;
    assert_int_equal(parse(&a, "run", "a.py", "-c", "print(2)", "--code", "print(3)",
                           "--code=print(4)", "-", "-cprint(6)", "last", NULL),
                     0);
    assert_int_equal(a.n_sources, 7);
    const char *want[] = {"a.py", "print(2)", "print(3)", "print(4)", "-", "print(6)", "last"};
    const bool inl[] = {false, true, true, true, false, true, false};
    for (size_t i = 0; i < 7; i++) {
        assert_string_equal(a.sources[i].text, want[i]);
        assert_int_equal(a.sources[i].inline_only, inl[i]);
    }
    args_free(&a);
    /* -c takes the next argument even when it starts with a dash. */
    assert_int_equal(parse(&a, "run", "-c", "-1", NULL), 0);
    assert_string_equal(a.sources[0].text, "-1");
    assert_true(a.sources[0].inline_only);
    args_free(&a);
    /* Options after sources are still options; `--` ends them. */
    assert_int_equal(parse(&a, "run", "x", "-q", "--", "-q", "--json", NULL), 0);
    assert_true(a.quiet);
    assert_false(a.json);
    assert_int_equal(a.n_sources, 3);
    assert_string_equal(a.sources[1].text, "-q");
    assert_string_equal(a.sources[2].text, "--json");
    args_free(&a);
    /* Only -c sources. */
    assert_int_equal(parse(&a, "run", "-c", "print(1)", NULL), 0);
    assert_int_equal(a.n_sources, 1);
    args_free(&a);
}

static void test_run_source_errors(void **state)
{
    expect_error("no code to run", "run", NULL);
    expect_error("no code to run", "run", "-q", "--json", NULL);
    expect_error("only once", "run", "-", "-", NULL);
    expect_error("--code needs a value", "run", "--code", NULL);
    expect_error("-c/--code needs a value", "run", "-c", NULL);
    /* `-` as -c code is not stdin, so it does not count. */
    args a;
    assert_int_equal(parse(&a, "run", "-", "-c", "-", NULL), 0);
    args_free(&a);
}

static void test_language(void **state)
{
    const char *langs[] = {"python", "javascript", "typescript", "raw"};
    for (size_t i = 0; i < ARRAY_LEN(langs); i++) {
        args a;
        assert_int_equal(parse(&a, "run", "-l", langs[i], "x", NULL), 0);
        assert_string_equal(a.language, langs[i]);
        args_free(&a);
        char eq[64], attached[64];
        snprintf(eq, sizeof eq, "--language=%s", langs[i]);
        snprintf(attached, sizeof attached, "-l%s", langs[i]);
        assert_int_equal(parse(&a, "run", eq, "x", NULL), 0);
        assert_string_equal(a.language, langs[i]);
        args_free(&a);
        assert_int_equal(parse(&a, "run", attached, "x", NULL), 0);
        assert_string_equal(a.language, langs[i]);
        args_free(&a);
        assert_int_equal(parse(&a, "run", "--language", langs[i], "x", NULL), 0);
        assert_string_equal(a.language, langs[i]);
        args_free(&a);
    }
    args a;
    assert_int_equal(parse(&a, "run", "-l", "raw", "-l", "javascript", "x", NULL), 0);
    assert_string_equal(a.language, "javascript"); /* the last one wins */
    args_free(&a);
    expect_error("unknown language `ruby`", "run", "-l", "ruby", "x", NULL);
    expect_error("unknown language `Python`", "run", "--language=Python", "x", NULL);
    expect_error("unknown language `ts` (python, javascript, typescript or raw)", "run", "-l", "ts",
                 "x", NULL);
    expect_error("unknown language ``", "run", "--language=", "x", NULL);
    expect_error("--language needs a value", "run", "x", "--language", NULL);
}

static void test_timeout(void **state)
{
    args a;
    assert_int_equal(parse(&a, "run", "-t", "1", "x", NULL), 0);
    assert_int_equal(a.timeout_s, 1);
    args_free(&a);
    assert_int_equal(parse(&a, "run", "--timeout", "300", "x", NULL), 0);
    assert_int_equal(a.timeout_s, 300);
    args_free(&a);
    assert_int_equal(parse(&a, "run", "--timeout=60", "x", NULL), 0);
    assert_int_equal(a.timeout_s, 60);
    args_free(&a);
    assert_int_equal(parse(&a, "run", "-t5", "x", NULL), 0);
    assert_int_equal(a.timeout_s, 5);
    args_free(&a);
    expect_error("out of range (1-300 s)", "run", "-t", "0", "x", NULL);
    expect_error("out of range (1-300 s)", "run", "-t", "301", "x", NULL);
    expect_error("out of range", "run", "-t", "99999999999", "x", NULL);
    expect_error("whole number, not `abc`", "run", "-t", "abc", "x", NULL);
    expect_error("whole number, not `-5`", "run", "--timeout=-5", "x", NULL);
    expect_error("whole number, not `+5`", "run", "-t", "+5", "x", NULL);
    expect_error("whole number, not ` 5`", "run", "-t", " 5", "x", NULL);
    expect_error("whole number, not `5s`", "run", "-t", "5s", "x", NULL);
    expect_error("whole number, not `1.5`", "run", "-t", "1.5", "x", NULL);
    expect_error("empty value", "run", "--timeout=", "x", NULL);
    expect_error("-t/--timeout needs a value", "run", "x", "-t", NULL);
}

static void test_memory(void **state)
{
    args a;
    assert_int_equal(parse(&a, "run", "-m", "128", "x", NULL), 0);
    assert_int_equal(a.memory_mb, 128);
    args_free(&a);
    assert_int_equal(parse(&a, "run", "--memory=2048", "x", NULL), 0);
    assert_int_equal(a.memory_mb, 2048);
    args_free(&a);
    assert_int_equal(parse(&a, "run", "-m512", "--memory", "1024", "x", NULL), 0);
    assert_int_equal(a.memory_mb, 1024);
    args_free(&a);
    expect_error("out of range (128-2048 MB)", "run", "-m", "127", "x", NULL);
    expect_error("out of range (128-2048 MB)", "run", "-m", "2049", "x", NULL);
    expect_error("whole number, not `1G`", "run", "-m", "1G", "x", NULL);
    expect_error("--memory needs a value", "run", "x", "--memory", NULL);
}

static void test_concurrency(void **state)
{
    args a;
    assert_int_equal(parse(&a, "run", "-j", "1", "x", NULL), 0);
    assert_int_equal(a.concurrency, 1);
    args_free(&a);
    assert_int_equal(parse(&a, "run", "--concurrency=100", "x", NULL), 0);
    assert_int_equal(a.concurrency, 100);
    args_free(&a);
    assert_int_equal(parse(&a, "run", "-j4", "x", NULL), 0);
    assert_int_equal(a.concurrency, 4);
    args_free(&a);
    expect_error("concurrency 0 is out of range (1-100)", "run", "-j", "0", "x", NULL);
    expect_error("concurrency 101 is out of range (1-100)", "run", "-j", "101", "x", NULL);
    expect_error("whole number", "run", "-j", "many", "x", NULL);
}

static void test_flags(void **state)
{
    args a;
    assert_int_equal(parse(&a, "run", "--json", "--quiet", "x", NULL), 0);
    assert_true(a.json);
    assert_true(a.quiet);
    args_free(&a);
    assert_int_equal(parse(&a, "run", "-q", "x", NULL), 0);
    assert_true(a.quiet);
    assert_false(a.json);
    args_free(&a);
    /* Grouped short options: flags, then one with its value attached or following. */
    assert_int_equal(parse(&a, "run", "-qj4", "x", NULL), 0);
    assert_true(a.quiet);
    assert_int_equal(a.concurrency, 4);
    args_free(&a);
    assert_int_equal(parse(&a, "run", "-qt", "7", "x", NULL), 0);
    assert_true(a.quiet);
    assert_int_equal(a.timeout_s, 7);
    args_free(&a);
    expect_error("--json takes no value", "run", "--json=1", "x", NULL);
    expect_error("--quiet takes no value", "run", "--quiet=", "x", NULL);
    expect_error("unknown option `-z`", "run", "-qz", "x", NULL);
    expect_error("unknown option `--jso`", "run", "--jso", "x", NULL);
}

static void test_env(void **state)
{
    args a;
    assert_int_equal(
        parse(&a, "run", "-e", "A=1", "--env", "B=two", "--env=C=x=y", "-eD=", "x", NULL), 0);
    assert_int_equal(a.n_env, 4);
    assert_string_equal(a.env[0].key, "A");
    assert_string_equal(a.env[0].value, "1");
    assert_string_equal(a.env[1].key, "B");
    assert_string_equal(a.env[1].value, "two");
    assert_string_equal(a.env[2].key, "C");
    assert_string_equal(a.env[2].value, "x=y");
    assert_string_equal(a.env[3].key, "D");
    assert_string_equal(a.env[3].value, "");
    args_free(&a);
    /* The same key twice: one variable, the last value. */
    assert_int_equal(parse(&a, "run", "-e", "K=1", "-e", "L=2", "-e", "K=3", "x", NULL), 0);
    assert_int_equal(a.n_env, 2);
    assert_string_equal(a.env[0].key, "K");
    assert_string_equal(a.env[0].value, "3");
    args_free(&a);
    expect_error("KEY=VALUE, not `NOEQUALS`", "run", "-e", "NOEQUALS", "x", NULL);
    expect_error("must be 1-", "run", "-e", "=v", "x", NULL);
    expect_error("must start with a letter", "run", "-e", "1A=v", "x", NULL);
    expect_error("only letters, digits and _", "run", "-e", "A-B=v", "x", NULL);
    expect_error("`PATH` is not allowed", "run", "-e", "PATH=/x", "x", NULL);
    expect_error("`LD_PRELOAD` is not allowed", "run", "-e", "LD_PRELOAD=/x.so", "x", NULL);
    expect_error("contains a newline", "run", "-e", "A=1\n2", "x", NULL);
    expect_error("--env needs a value", "run", "x", "--env", NULL);
}

static void test_env_count(void **state)
{
    static char kv[SBX_MAX_ENV + 1][16];
    char *argv[2 + 2 * (SBX_MAX_ENV + 1) + 1];
    int argc = 0;
    argv[argc++] = "sbx";
    argv[argc++] = "run";
    for (unsigned i = 0; i < SBX_MAX_ENV + 1; i++) {
        snprintf(kv[i], sizeof kv[i], "V%u=%u", i, i);
        argv[argc++] = "-e";
        argv[argc++] = kv[i];
    }
    argv[argc++] = "x";
    args a;
    /* Exactly the limit is fine (all but the last pair)... */
    char *last_e = argv[argc - 3], *last_kv = argv[argc - 2];
    argv[argc - 3] = "x";
    assert_int_equal(args_parse(argc - 2, argv, &a, &err), 0);
    assert_int_equal(a.n_env, SBX_MAX_ENV);
    args_free(&a);
    /* ...one more is not. */
    argv[argc - 3] = last_e;
    argv[argc - 2] = last_kv;
    assert_int_equal(args_parse(argc, argv, &a, &err), -1);
    assert_non_null(strstr(err.msg, "101 environment variables; the limit is 100"));
    args_free(&a);
}

/* ---- -p/--package, --no-validation (the specs are checked later, by language) ---- */

/* `sbx run -p p0==1 ... -p p{n-1}==1 x` */
static int parse_n_packages(args *a, int n)
{
    static char specs[64][16];
    char *argv[2 + 2 * 64 + 2];
    int argc = 0;
    argv[argc++] = "sbx";
    argv[argc++] = "run";
    for (int i = 0; i < n && i < 64; i++) {
        snprintf(specs[i], sizeof specs[i], "p%d==1", i);
        argv[argc++] = "-p";
        argv[argc++] = specs[i];
    }
    argv[argc++] = "x";
    argv[argc] = NULL;
    return args_parse(argc, argv, a, &err);
}

static void test_packages(void **state)
{
    args a;
    assert_int_equal(parse(&a, "run", "x", NULL), 0);
    assert_int_equal(a.n_packages, 0);
    assert_false(a.no_validation);
    args_free(&a);
    /* Every spelling, in the order given, kept as written. */
    assert_int_equal(parse(&a, "run", "-p", "b==1", "--package", "a==2", "--package=c", "-pd==3",
                           "-qpe", "--no-validation", "x", NULL),
                     0);
    assert_int_equal(a.n_packages, 5);
    const char *want[] = {"b==1", "a==2", "c", "d==3", "e"};
    for (size_t i = 0; i < ARRAY_LEN(want); i++)
        assert_string_equal(a.packages[i], want[i]);
    assert_true(a.no_validation);
    assert_true(a.quiet);
    assert_int_equal(a.n_sources, 1);
    args_free(&a);
    /* session new takes them too; session exec does not. */
    assert_int_equal(parse(&a, "session", "new", "-l", "javascript", "-p", "lodash@4.17.21",
                           "--no-validation", NULL),
                     0);
    assert_int_equal(a.n_packages, 1);
    assert_string_equal(a.packages[0], "lodash@4.17.21");
    assert_true(a.no_validation);
    args_free(&a);
    expect_error("unknown option `-p`", "session", "exec", "ID", "-p", "x", "y", NULL);
    expect_error("unknown option `--no-validation`", "session", "exec", "--no-validation", "ID",
                 "y", NULL);
    expect_error("unknown option `--package`", "status", "--package", "x", NULL);
    /* Values and their absence. */
    expect_error("-p/--package needs a value", "run", "x", "-p", NULL);
    expect_error("--package needs a value", "run", "x", "--package", NULL);
    expect_error("--no-validation takes no value", "run", "--no-validation=1", "x", NULL);
    /* 50 packages pass here, 51 do not. */
    assert_int_equal(parse_n_packages(&a, 50), 0);
    assert_int_equal(a.n_packages, 50);
    args_free(&a);
    assert_int_equal(parse_n_packages(&a, 51), -1);
    assert_non_null(strstr(err.msg, "--package: more than 50 packages"));
    args_free(&a);
}

/* ---- --network, --allow-domain, --expose ---- */

static void test_network(void **state)
{
    args a;
    assert_int_equal(parse(&a, "run", "x", NULL), 0);
    assert_false(a.network);
    assert_int_equal(a.n_domains, 0);
    assert_int_equal(a.n_expose, 0);
    args_free(&a);
    assert_int_equal(parse(&a, "run", "--network", "--allow-domain", "example.com",
                           "--allow-domain=API.Other.org.", "--expose", "8080", "--expose=53/udp",
                           "--expose", "8000:9000", "x", NULL),
                     0);
    assert_true(a.network);
    assert_int_equal(a.n_domains, 2);
    assert_string_equal(a.domains[0], "example.com");
    assert_string_equal(a.domains[1], "API.Other.org.");
    assert_int_equal(a.n_expose, 3);
    assert_int_equal(a.expose[0].internal, 8080);
    assert_int_equal(a.expose[0].external, 0);
    assert_false(a.expose[0].udp);
    assert_int_equal(a.expose[1].internal, 53);
    assert_true(a.expose[1].udp);
    assert_int_equal(a.expose[2].external, 9000);
    args_free(&a);
    /* --expose alone (ports only) and --network alone (open) need nothing else. */
    assert_int_equal(parse(&a, "run", "--expose", "8080", "x", NULL), 0);
    assert_false(a.network);
    args_free(&a);
    assert_int_equal(parse(&a, "run", "--network", "x", NULL), 0);
    assert_true(a.network);
    args_free(&a);
    /* The allowlist needs --network, wherever it is given. */
    expect_error("--allow-domain needs --network", "run", "--allow-domain", "a.com", "x", NULL);
    assert_int_equal(parse(&a, "run", "--allow-domain", "a.com", "x", "--network", NULL), 0);
    args_free(&a);
    expect_error("--network takes no value", "run", "--network=1", "x", NULL);
    expect_error("--allow-domain needs a value", "run", "--network", "--allow-domain", NULL);
    expect_error("--expose needs a value", "run", "--expose", NULL);
    /* Bad domains and specs are usage errors naming what is wrong. */
    expect_error("`1.2.3.4` is an IP address", "run", "--network", "--allow-domain", "1.2.3.4", "x",
                 NULL);
    expect_error("wildcards are not supported", "run", "--network", "--allow-domain=*.x.com", "x",
                 NULL);
    expect_error("single label", "run", "--network", "--allow-domain", "localhost", "x", NULL);
    expect_error("empty label", "run", "--network", "--allow-domain", "a..com", "x", NULL);
    expect_error("hyphen", "run", "--network", "--allow-domain", "-a.com", "x", NULL);
    expect_error("--expose `8080:80`: host port 80 is below 1024", "run", "--expose", "8080:80",
                 "x", NULL);
    expect_error("--expose `70000`: exposed port 70000 is out of range", "run", "--expose", "70000",
                 "x", NULL);
    expect_error("--expose `0`", "run", "--expose", "0", "x", NULL);
    expect_error("protocol `sctp` is not tcp or udp", "run", "--expose", "8080/sctp", "x", NULL);
    expect_error("no host port after `:`", "run", "--expose", "8080:", "x", NULL);
    expect_error("no guest port", "run", "--expose", ":9000", "x", NULL);
}

/* n repeats of `opt value` (values "1".."n", or "d1.example.com"... for domains), parsed as
 * `sbx run --network ... x` or `sbx session new --network ...`. */
static int parse_repeated(args *a, const char *cmd, const char *opt, unsigned n)
{
    static char vals[128][32];
    char *argv[4 + 2 * 128 + 2];
    int argc = 0;
    argv[argc++] = "sbx";
    argv[argc++] = (char *)cmd;
    if (!strcmp(cmd, "session"))
        argv[argc++] = "new";
    argv[argc++] = "--network";
    for (unsigned i = 0; i < n; i++) {
        if (!strcmp(opt, "--expose"))
            snprintf(vals[i], sizeof vals[i], "%u", i + 1);
        else
            snprintf(vals[i], sizeof vals[i], "d%u.example.com", i + 1);
        argv[argc++] = (char *)opt;
        argv[argc++] = vals[i];
    }
    if (strcmp(cmd, "session"))
        argv[argc++] = "x";
    argv[argc] = NULL;
    err = (sbx_err){0};
    return args_parse(argc, argv, a, &err);
}

static void test_network_counts(void **state)
{
    static const char *const cmds[] = {"run", "session"};
    for (size_t k = 0; k < ARRAY_LEN(cmds); k++) {
        args a;
        assert_int_equal(parse_repeated(&a, cmds[k], "--allow-domain", 100), 0);
        assert_int_equal(a.n_domains, 100);
        args_free(&a);
        assert_int_equal(parse_repeated(&a, cmds[k], "--allow-domain", 101), -1);
        assert_non_null(strstr(err.msg, "more than 100 domains"));
        args_free(&a);
        assert_int_equal(parse_repeated(&a, cmds[k], "--expose", 10), 0);
        assert_int_equal(a.n_expose, 10);
        assert_int_equal(a.expose[9].internal, 10);
        args_free(&a);
        assert_int_equal(parse_repeated(&a, cmds[k], "--expose", 11), -1);
        assert_non_null(strstr(err.msg, "--expose: more than 10 ports"));
        args_free(&a);
    }
}

static void test_session_network(void **state)
{
    args a;
    assert_int_equal(parse(&a, "session", "new", "--network", "--allow-domain", "pypi.org",
                           "--expose", "8000:0/tcp", NULL),
                     0);
    assert_true(a.network);
    assert_int_equal(a.n_domains, 1);
    assert_int_equal(a.n_expose, 1);
    assert_int_equal(a.expose[0].internal, 8000);
    args_free(&a);
    expect_error("--allow-domain needs --network", "session", "new", "--allow-domain", "a.com",
                 NULL);
    expect_error("below 1024", "session", "new", "--expose", "1:2", NULL);
    /* The network belongs to the VM: an exec cannot change it. */
    expect_error("unknown option `--network`", "session", "exec", "--network", "ID", "x", NULL);
    expect_error("unknown option `--expose`", "session", "exec", "ID", "--expose", "80", NULL);
    /* libsbx's own parser of the same specs. */
    sbx_port_expose p;
    sbx_error e = {0};
    assert_int_equal(sbx_parse_expose("8080:9000/udp", &p, &e), 0);
    assert_int_equal(p.internal, 8080);
    assert_int_equal(p.external, 9000);
    assert_true(p.udp);
    assert_int_equal(sbx_parse_expose("8080:", &p, &e), -1);
    assert_int_equal(e.kind, SBX_ERR_VM_CONFIG);
    assert_false(e.transient);
    assert_non_null(strstr(e.message, "no host port"));
    assert_int_equal(p.internal, 0);
}

/* ---- run --upload / --download ---- */

static void test_run_transfers(void **state)
{
    args a;
    assert_int_equal(parse(&a, "run", "--upload", "./local.csv:input.csv", "--upload=b:dir/b",
                           "--download", "output.csv:./result.csv", "--download=out/x.bin", "-c",
                           "print(1)", NULL),
                     0);
    assert_int_equal(a.n_uploads, 2);
    assert_string_equal(a.uploads[0].local, "./local.csv");
    assert_string_equal(a.uploads[0].guest, "input.csv");
    assert_string_equal(a.uploads[1].local, "b");
    assert_string_equal(a.uploads[1].guest, "dir/b");
    assert_int_equal(a.n_downloads, 2);
    assert_string_equal(a.downloads[0].guest, "output.csv");
    assert_string_equal(a.downloads[0].local, "./result.csv");
    /* No local path: the guest file's name, here. */
    assert_string_equal(a.downloads[1].guest, "out/x.bin");
    assert_string_equal(a.downloads[1].local, "x.bin");
    assert_int_equal(a.n_sources, 1);
    args_free(&a);

    /* Upload splits at the last colon (local paths may hold colons), download at the first. */
    assert_int_equal(
        parse(&a, "run", "--upload", "a:b:c.txt", "--download", "g.txt:l:x", "x", NULL), 0);
    assert_string_equal(a.uploads[0].local, "a:b");
    assert_string_equal(a.uploads[0].guest, "c.txt");
    assert_string_equal(a.downloads[0].guest, "g.txt");
    assert_string_equal(a.downloads[0].local, "l:x");
    args_free(&a);

    /* Only one of each is fine too, and the order of options does not matter. */
    assert_int_equal(parse(&a, "run", "x", "--download", "o", NULL), 0);
    assert_int_equal(a.n_uploads, 0);
    assert_int_equal(a.n_downloads, 1);
    assert_string_equal(a.downloads[0].local, "o");
    args_free(&a);
    assert_int_equal(parse(&a, "run", "--upload", "/abs/local:in", "-", NULL), 0);
    assert_string_equal(a.uploads[0].local, "/abs/local");
    args_free(&a);

    expect_error("--upload wants LOCAL:GUEST, not `nocolon`", "run", "--upload", "nocolon", "x",
                 NULL);
    expect_error("--upload wants LOCAL:GUEST, not `:guest`", "run", "--upload", ":guest", "x",
                 NULL);
    expect_error("--upload wants LOCAL:GUEST, not `local:`", "run", "--upload", "local:", "x",
                 NULL);
    expect_error("is absolute", "run", "--upload", "l:/etc/passwd", "x", NULL);
    expect_error("`..` component", "run", "--upload", "l:../x", "x", NULL);
    expect_error("`..` component", "run", "--upload", "l:a/../../x", "x", NULL);
    expect_error("--upload needs a value", "run", "x", "--upload", NULL);
    expect_error("--download wants GUEST or GUEST:LOCAL, not `:x`", "run", "--download", ":x", "x",
                 NULL);
    expect_error("--download wants GUEST or GUEST:LOCAL, not `g:`", "run", "--download", "g:", "x",
                 NULL);
    expect_error("--download wants GUEST or GUEST:LOCAL, not ``", "run", "--download=", "x", NULL);
    expect_error("is absolute", "run", "--download", "/etc/shadow", "x", NULL);
    expect_error("`..` component", "run", "--download", "..", "x", NULL);
    expect_error("empty or `.` component", "run", "--download", "dir/", "x", NULL);
    expect_error("empty or `.` component", "run", "--download", "a/.", "x", NULL);
    expect_error("two --download options save to `out.csv`", "run", "--download", "out.csv",
                 "--download", "sub/out.csv", "x", NULL);
    expect_error("two --download options save to `l`", "run", "--download", "a:l", "--download",
                 "b:l", "x", NULL);
    /* 255 bytes of guest path is the limit. */
    char longp[300];
    memset(longp, 'p', sizeof longp);
    memcpy(longp, "l:", 2);
    longp[2 + SBX_MAX_PATH] = '\0';
    assert_int_equal(parse(&a, "run", "--upload", longp, "x", NULL), 0);
    args_free(&a);
    longp[2 + SBX_MAX_PATH] = 'p';
    longp[3 + SBX_MAX_PATH] = '\0';
    expect_error("the limit is 255", "run", "--upload", longp, "x", NULL);

    /* Files go with one source only. */
    expect_error("--upload and --download work with one source (got 2)", "run", "--upload", "l:g",
                 "a", "b", NULL);
    expect_error("work with one source (got 3)", "run", "--download", "g", "-c", "1", "-c", "2",
                 "x", NULL);
    expect_error("no code to run", "run", "--download", "g", NULL);
}

/* ---- session ---- */

static void test_session_commands(void **state)
{
    args a;
    expect_error("no session command given (new, exec, ls, close, upload, download, files)",
                 "session", NULL);
    expect_error("unknown session command `open`", "session", "open", NULL);
    expect_error("unknown session command `-q`", "session", "-q", "new", NULL);
    /* help, for the whole and for each subcommand */
    assert_int_equal(parse(&a, "session", "--help", NULL), 0);
    assert_int_equal(a.cmd, ARGS_CMD_SESSION);
    assert_int_equal(a.session_cmd, ARGS_SESSION_NONE);
    assert_true(a.help);
    assert_string_equal(args_command_name(&a), "sbx session");
    args_free(&a);
    assert_int_equal(parse(&a, "session", "-h", NULL), 0);
    assert_true(a.help);
    args_free(&a);
    const char *names[] = {"new", "exec", "ls", "close", "upload", "download", "files"};
    const args_session_cmd cmds[] = {ARGS_SESSION_NEW,   ARGS_SESSION_EXEC,   ARGS_SESSION_LS,
                                     ARGS_SESSION_CLOSE, ARGS_SESSION_UPLOAD, ARGS_SESSION_DOWNLOAD,
                                     ARGS_SESSION_FILES};
    for (size_t i = 0; i < ARRAY_LEN(names); i++) {
        assert_int_equal(parse(&a, "session", names[i], "--help", NULL), 0);
        assert_int_equal(a.session_cmd, cmds[i]);
        assert_true(a.help);
        char want[64];
        snprintf(want, sizeof want, "sbx session %s", names[i]);
        assert_string_equal(args_command_name(&a), want);
        args_free(&a);
        /* The command is known even when the rest is wrong, for the right --help. */
        assert_int_equal(parse(&a, "session", names[i], "--bogus", NULL), -1);
        assert_int_equal(a.session_cmd, cmds[i]);
        args_free(&a);
    }
    /* --socket before the command or after the subcommand */
    assert_int_equal(parse(&a, "--socket", "/tmp/s", "session", "ls", NULL), 0);
    assert_string_equal(a.socket_path, "/tmp/s");
    args_free(&a);
    assert_int_equal(parse(&a, "session", "ls", "--socket=/tmp/t", NULL), 0);
    assert_string_equal(a.socket_path, "/tmp/t");
    args_free(&a);
}

static void test_session_new(void **state)
{
    args a;
    assert_int_equal(parse(&a, "session", "new", NULL), 0);
    assert_int_equal(a.session_cmd, ARGS_SESSION_NEW);
    assert_null(a.language);
    assert_int_equal(a.idle_timeout_s, 0);
    assert_int_equal(a.timeout_s, 0);
    assert_int_equal(a.memory_mb, 0);
    assert_false(a.json);
    assert_null(a.session_id);
    args_free(&a);
    assert_int_equal(parse(&a, "session", "new", "-l", "javascript", "-m", "512", "-t", "60", "-e",
                           "A=1", "--env=B=2", "--idle-timeout", "10", "--json", "-q", NULL),
                     0);
    assert_string_equal(a.language, "javascript");
    assert_int_equal(a.memory_mb, 512);
    assert_int_equal(a.timeout_s, 60);
    assert_int_equal(a.n_env, 2);
    assert_string_equal(a.env[1].key, "B");
    assert_int_equal(a.idle_timeout_s, 10);
    assert_true(a.json);
    assert_true(a.quiet);
    args_free(&a);
    assert_int_equal(parse(&a, "session", "new", "--idle-timeout=3600", "-lraw", NULL), 0);
    assert_int_equal(a.idle_timeout_s, 3600);
    assert_string_equal(a.language, "raw");
    args_free(&a);
    expect_error("idle timeout 9 s is out of range (10-3600 s)", "session", "new", "--idle-timeout",
                 "9", NULL);
    expect_error("idle timeout 3601 s is out of range", "session", "new", "--idle-timeout=3601",
                 NULL);
    expect_error("--idle-timeout needs a whole number, not `5m`", "session", "new",
                 "--idle-timeout", "5m", NULL);
    expect_error("--idle-timeout needs a value", "session", "new", "--idle-timeout", NULL);
    expect_error("unknown language `ruby`", "session", "new", "-l", "ruby", NULL);
    expect_error("out of range (1-300 s)", "session", "new", "-t", "0", NULL);
    expect_error("out of range (128-2048 MB)", "session", "new", "-m", "64", NULL);
    expect_error("`PATH` is not allowed", "session", "new", "-e", "PATH=/x", NULL);
    expect_error("session new takes no arguments (got an extra `x`)", "session", "new", "x", NULL);
    /* Options of other commands are not taken. */
    expect_error("unknown option `-j`", "session", "new", "-j", "2", NULL);
    expect_error("unknown option `--upload`", "session", "new", "--upload", "a:b", NULL);
    expect_error("unknown option `-c`", "session", "new", "-c", "x", NULL);
    /* --idle-timeout belongs to sessions only. */
    expect_error("unknown option `--idle-timeout`", "run", "--idle-timeout", "60", "x", NULL);
}

static void test_session_exec(void **state)
{
    args a;
    assert_int_equal(parse(&a, "session", "exec", "abc123", "print(x)", NULL), 0);
    assert_int_equal(a.session_cmd, ARGS_SESSION_EXEC);
    assert_string_equal(a.session_id, "abc123");
    assert_int_equal(a.n_sources, 1);
    assert_string_equal(a.sources[0].text, "print(x)");
    assert_false(a.sources[0].inline_only);
    assert_false(a.json);
    assert_false(a.quiet);
    args_free(&a);
    assert_int_equal(
        parse(&a, "session", "exec", "-t", "5", "--json", "-q", "id1", "script.py", NULL), 0);
    assert_string_equal(a.session_id, "id1");
    assert_string_equal(a.sources[0].text, "script.py");
    assert_int_equal(a.timeout_s, 5);
    assert_true(a.json);
    assert_true(a.quiet);
    args_free(&a);
    assert_int_equal(parse(&a, "session", "exec", "id1", "-", NULL), 0);
    assert_string_equal(a.sources[0].text, "-");
    args_free(&a);
    assert_int_equal(parse(&a, "session", "exec", "id1", "-c", "-1", NULL), 0);
    assert_string_equal(a.sources[0].text, "-1");
    assert_true(a.sources[0].inline_only);
    args_free(&a);
    assert_int_equal(parse(&a, "session", "exec", "id1", "--", "-x", NULL), 0);
    assert_string_equal(a.sources[0].text, "-x");
    args_free(&a);
    expect_error("session exec wants ID and one CODE, FILE or -", "session", "exec", NULL);
    expect_error("session exec wants ID and one CODE, FILE or -", "session", "exec", "id", NULL);
    expect_error("(got an extra `b`)", "session", "exec", "id", "a", "b", NULL);
    expect_error("(got an extra `a`)", "session", "exec", "id", "-c", "x", "a", NULL);
    expect_error("-c was given 2 times", "session", "exec", "id", "-c", "x", "-c", "y", NULL);
    expect_error("the session id is empty", "session", "exec", "", "x", NULL);
    expect_error("is not a session id", "session", "exec", "a b", "x", NULL);
    expect_error("is not a session id", "session", "exec", "a\nb", "x", NULL);
    expect_error("out of range (1-300 s)", "session", "exec", "id", "x", "-t", "301", NULL);
    expect_error("unknown option `-l`", "session", "exec", "id", "x", "-l", "raw", NULL);
    expect_error("unknown option `-m`", "session", "exec", "id", "x", "-m", "256", NULL);
    char longid[SBX_SESSION_ID_MAX + 1];
    memset(longid, 'a', sizeof longid - 1);
    longid[sizeof longid - 1] = '\0';
    expect_error("too long for a session id", "session", "exec", longid, "x", NULL);
    longid[SBX_SESSION_ID_MAX - 1] = '\0';
    assert_int_equal(parse(&a, "session", "exec", longid, "x", NULL), 0);
    args_free(&a);
}

static void test_session_others(void **state)
{
    args a;
    assert_int_equal(parse(&a, "session", "ls", NULL), 0);
    assert_int_equal(a.session_cmd, ARGS_SESSION_LS);
    assert_false(a.json);
    args_free(&a);
    assert_int_equal(parse(&a, "session", "ls", "--json", NULL), 0);
    assert_true(a.json);
    args_free(&a);
    expect_error("session ls takes no arguments (got an extra `id`)", "session", "ls", "id", NULL);
    expect_error("unknown option `-q`", "session", "ls", "-q", NULL);

    assert_int_equal(parse(&a, "session", "close", "s1", NULL), 0);
    assert_int_equal(a.session_cmd, ARGS_SESSION_CLOSE);
    assert_string_equal(a.session_id, "s1");
    args_free(&a);
    expect_error("session close wants ID", "session", "close", NULL);
    expect_error("(got an extra `s2`)", "session", "close", "s1", "s2", NULL);
    expect_error("unknown option `--json`", "session", "close", "s1", "--json", NULL);

    assert_int_equal(parse(&a, "session", "upload", "s1", "./data.csv", "in/data.csv", NULL), 0);
    assert_int_equal(a.session_cmd, ARGS_SESSION_UPLOAD);
    assert_string_equal(a.session_id, "s1");
    assert_int_equal(a.n_uploads, 1);
    assert_string_equal(a.uploads[0].local, "./data.csv");
    assert_string_equal(a.uploads[0].guest, "in/data.csv");
    args_free(&a);
    /* Colons are fine here: nothing is split. */
    assert_int_equal(parse(&a, "session", "upload", "s1", "a:b", "c:d", NULL), 0);
    assert_string_equal(a.uploads[0].local, "a:b");
    assert_string_equal(a.uploads[0].guest, "c:d");
    args_free(&a);
    expect_error("session upload wants ID LOCAL GUEST", "session", "upload", "s1", "l", NULL);
    expect_error("(got an extra `x`)", "session", "upload", "s1", "l", "g", "x", NULL);
    expect_error("is absolute", "session", "upload", "s1", "l", "/g", NULL);
    expect_error("`..` component", "session", "upload", "s1", "l", "a/../../g", NULL);
    expect_error("the file path is empty", "session", "upload", "s1", "l", "", NULL);
    expect_error("the local path is empty", "session", "upload", "s1", "", "g", NULL);

    assert_int_equal(parse(&a, "session", "download", "s1", "out/r.csv", NULL), 0);
    assert_int_equal(a.session_cmd, ARGS_SESSION_DOWNLOAD);
    assert_int_equal(a.n_downloads, 1);
    assert_string_equal(a.downloads[0].guest, "out/r.csv");
    assert_string_equal(a.downloads[0].local, "r.csv");
    args_free(&a);
    assert_int_equal(parse(&a, "session", "download", "s1", "r.csv", "/tmp/x:y", "-q", NULL), 0);
    assert_string_equal(a.downloads[0].local, "/tmp/x:y");
    assert_true(a.quiet);
    args_free(&a);
    expect_error("session download wants ID GUEST [LOCAL]", "session", "download", "s1", NULL);
    expect_error("(got an extra `z`)", "session", "download", "s1", "g", "l", "z", NULL);
    expect_error("empty or `.` component", "session", "download", "s1", "dir/", NULL);
    expect_error("is absolute", "session", "download", "s1", "/etc/passwd", NULL);
    expect_error("the local path is empty", "session", "download", "s1", "g", "", NULL);

    assert_int_equal(parse(&a, "session", "files", "s1", NULL), 0);
    assert_int_equal(a.session_cmd, ARGS_SESSION_FILES);
    assert_null(a.guest_dir);
    args_free(&a);
    assert_int_equal(parse(&a, "session", "files", "s1", "sub/dir", "--json", NULL), 0);
    assert_string_equal(a.guest_dir, "sub/dir");
    assert_true(a.json);
    args_free(&a);
    assert_int_equal(parse(&a, "session", "files", "s1", "", NULL), 0);
    assert_null(a.guest_dir);
    args_free(&a);
    expect_error("session files wants ID [PATH]", "session", "files", NULL);
    expect_error("`..` component", "session", "files", "s1", "..", NULL);
    expect_error("is absolute", "session", "files", "s1", "/", NULL);
    expect_error("(got an extra `b`)", "session", "files", "s1", "a", "b", NULL);
}

/* ---- sources ---- */

static void test_language_for_path(void **state)
{
    assert_string_equal(args_language_for_path("a.py"), "python");
    assert_string_equal(args_language_for_path("dir/a.PY"), "python");
    assert_string_equal(args_language_for_path("a.js"), "javascript");
    assert_string_equal(args_language_for_path("/x/a.mjs"), "javascript");
    assert_string_equal(args_language_for_path("a.ts"), "typescript");
    assert_string_equal(args_language_for_path("dir/a.TS"), "typescript");
    assert_string_equal(args_language_for_path("/x/a.mts"), "typescript");
    assert_null(args_language_for_path("a.tsx"));
    assert_null(args_language_for_path("a.d.ts.map"));
    assert_string_equal(args_language_for_path("run.sh"), "raw");
    assert_null(args_language_for_path("a.rb"));
    assert_null(args_language_for_path("Makefile"));
    assert_null(args_language_for_path(".sh"));
    assert_null(args_language_for_path("dir.py/file"));
    assert_null(args_language_for_path("a.py.txt"));
}

static void test_looks_like_path(void **state)
{
    assert_true(args_looks_like_path("script.py"));
    assert_true(args_looks_like_path("./dir/app.js"));
    assert_true(args_looks_like_path("/abs/x.mjs"));
    assert_true(args_looks_like_path("go.sh"));
    assert_true(args_looks_like_path("src/main.ts"));
    assert_false(args_looks_like_path("const n: number = 1; // a.ts"));
    assert_false(args_looks_like_path("print(1)"));
    assert_false(args_looks_like_path("print('a.py')"));
    assert_false(args_looks_like_path("import x.py"));
    assert_false(args_looks_like_path("x = 1\ny.py"));
    assert_false(args_looks_like_path("\"a.js\""));
    assert_false(args_looks_like_path("echo hi"));
    assert_false(args_looks_like_path("a.txt"));
    assert_false(args_looks_like_path("1+1"));
}

typedef struct {
    char dir[64];
} tmp;

static int tmp_setup(void **state)
{
    tmp *t = calloc(1, sizeof *t);
    snprintf(t->dir, sizeof t->dir, "/tmp/test_cli_args.XXXXXX");
    if (!mkdtemp(t->dir))
        return -1;
    *state = t;
    return 0;
}

static int tmp_teardown(void **state)
{
    tmp *t = *state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", t->dir);
    int rc = system(cmd);
    free(t);
    return rc == 0 ? 0 : -1;
}

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
}

static void test_resolve(void **state)
{
    tmp *t = *state;
    char py[128], js[128], mjs[128], ts[128], sh[128], noext[128], missing[128];
    snprintf(py, sizeof py, "%s/a.py", t->dir);
    snprintf(js, sizeof js, "%s/b.js", t->dir);
    snprintf(mjs, sizeof mjs, "%s/c.mjs", t->dir);
    snprintf(ts, sizeof ts, "%s/e.ts", t->dir);
    snprintf(sh, sizeof sh, "%s/d.sh", t->dir);
    snprintf(noext, sizeof noext, "%s/script", t->dir);
    snprintf(missing, sizeof missing, "%s/missing.py", t->dir);
    write_file(py, "print(1)\n", 9);
    write_file(js, "console.log(1)\n", 15);
    write_file(mjs, "console.log(1)\n", 15);
    write_file(ts, "const n: number = 1\n", 20);
    write_file(sh, "echo 1\n", 7);
    write_file(noext, "print(1)\n", 9);

    struct {
        const char *text;
        bool inl;
        const char *lang_opt;
        source_kind kind;
        const char *lang;
    } ok[] = {
        {py, false, NULL, SOURCE_FILE, "python"},
        {js, false, NULL, SOURCE_FILE, "javascript"},
        {mjs, false, NULL, SOURCE_FILE, "javascript"},
        {ts, false, NULL, SOURCE_FILE, "typescript"},
        {ts, false, "javascript", SOURCE_FILE, "javascript"},
        {sh, false, NULL, SOURCE_FILE, "raw"},
        {noext, false, NULL, SOURCE_FILE, "python"},
        {py, false, "raw", SOURCE_FILE, "raw"}, /* -l beats the extension */
        {"print(1)", false, NULL, SOURCE_INLINE, "python"},
        {"console.log(1)", false, "javascript", SOURCE_INLINE, "javascript"},
        {"let n: number = 1", false, "typescript", SOURCE_INLINE, "typescript"},
        {"-", false, NULL, SOURCE_STDIN, "python"},
        {"-", false, "raw", SOURCE_STDIN, "raw"},
        {missing, true, NULL, SOURCE_INLINE, "python"}, /* -c is always code */
        {py, true, NULL, SOURCE_INLINE, "python"},
        {"-", true, NULL, SOURCE_INLINE, "python"},
        {t->dir, false, NULL, SOURCE_INLINE, "python"}, /* a directory not named like a file */
    };
    for (size_t i = 0; i < ARRAY_LEN(ok); i++) {
        args_source in = {ok[i].text, ok[i].inl};
        run_source s;
        if (args_source_resolve(&in, ok[i].lang_opt, &s, &err) < 0)
            fail_msg("case %zu (%s): %s", i, ok[i].text, err.msg);
        assert_int_equal(s.kind, ok[i].kind);
        assert_string_equal(s.language, ok[i].lang);
        assert_ptr_equal(s.arg, ok[i].text);
        args_source_free(&s);
    }

    run_source s;
    args_source in = {missing, false};
    assert_int_equal(args_source_resolve(&in, NULL, &s, &err), -1);
    char want[256];
    snprintf(want, sizeof want, "file not found: %s", missing);
    assert_string_equal(err.msg, want);
    in.text = "nope.js";
    assert_int_equal(args_source_resolve(&in, NULL, &s, &err), -1);
    assert_string_equal(err.msg, "file not found: nope.js");
    in.text = "nope.ts";
    assert_int_equal(args_source_resolve(&in, NULL, &s, &err), -1);
    assert_string_equal(err.msg, "file not found: nope.ts");

    char dirpy[128];
    snprintf(dirpy, sizeof dirpy, "%s/pkg.py", t->dir);
    assert_int_equal(mkdir(dirpy, 0700), 0);
    in.text = dirpy;
    assert_int_equal(args_source_resolve(&in, NULL, &s, &err), -1);
    assert_non_null(strstr(err.msg, "is a directory"));
}

static void test_load(void **state)
{
    tmp *t = *state;
    char path[128];
    snprintf(path, sizeof path, "%s/load.py", t->dir);
    run_source s;
    args_source in = {path, false};

    write_file(path, "print('hi')\n", 12);
    assert_int_equal(args_source_resolve(&in, NULL, &s, &err), 0);
    assert_int_equal(args_source_load(&s, NULL, &err), 0);
    assert_int_equal(s.code_len, 12);
    assert_string_equal(s.code, "print('hi')\n");
    args_source_free(&s);

    write_file(path, "", 0);
    assert_int_equal(args_source_resolve(&in, NULL, &s, &err), 0);
    assert_int_equal(args_source_load(&s, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "code is empty"));
    assert_non_null(strstr(err.msg, path));
    args_source_free(&s);

    write_file(path, "a\0b", 3);
    assert_int_equal(args_source_resolve(&in, NULL, &s, &err), 0);
    assert_int_equal(args_source_load(&s, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "NUL"));
    args_source_free(&s);

    /* Exactly 1 MiB loads; one byte more does not. */
    char *big = malloc(SBX_MAX_CODE + 1);
    memset(big, '#', SBX_MAX_CODE + 1);
    write_file(path, big, SBX_MAX_CODE);
    assert_int_equal(args_source_resolve(&in, NULL, &s, &err), 0);
    assert_int_equal(args_source_load(&s, NULL, &err), 0);
    assert_int_equal(s.code_len, SBX_MAX_CODE);
    args_source_free(&s);
    write_file(path, big, SBX_MAX_CODE + 1);
    assert_int_equal(args_source_resolve(&in, NULL, &s, &err), 0);
    assert_int_equal(args_source_load(&s, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "over the limit"));
    args_source_free(&s);
    free(big);

    /* Standard input. */
    char text[] = "print(42)\n";
    FILE *fp = fmemopen(text, strlen(text), "r");
    in.text = "-";
    assert_int_equal(args_source_resolve(&in, NULL, &s, &err), 0);
    assert_int_equal(args_source_load(&s, fp, &err), 0);
    assert_string_equal(s.code, "print(42)\n");
    args_source_free(&s);
    fclose(fp);
    char empty[1] = "";
    fp = fmemopen(empty, 0, "r");
    assert_int_equal(args_source_resolve(&in, NULL, &s, &err), 0);
    assert_int_equal(args_source_load(&s, fp, &err), -1);
    assert_string_equal(err.msg, "standard input: code is empty");
    args_source_free(&s);
    fclose(fp);

    /* Inline. */
    in = (args_source){"print(1)", true};
    assert_int_equal(args_source_resolve(&in, NULL, &s, &err), 0);
    assert_int_equal(args_source_load(&s, NULL, &err), 0);
    assert_string_equal(s.code, "print(1)");
    assert_int_equal(s.code_len, 8);
    args_source_free(&s);
    in = (args_source){"", true};
    assert_int_equal(args_source_resolve(&in, NULL, &s, &err), 0);
    assert_int_equal(args_source_load(&s, NULL, &err), -1);
    assert_string_equal(err.msg, "inline code: code is empty");
    args_source_free(&s);

    /* Unreadable file (skip when running as root, who reads anything). */
    if (geteuid() != 0) {
        write_file(path, "x", 1);
        chmod(path, 0);
        in = (args_source){path, false};
        assert_int_equal(args_source_resolve(&in, NULL, &s, &err), 0);
        assert_int_equal(args_source_load(&s, NULL, &err), -1);
        assert_non_null(strstr(err.msg, "Permission denied"));
        args_source_free(&s);
    }
}

static void test_label(void **state)
{
    char out[64];
    run_source s = {.kind = SOURCE_FILE, .arg = "dir/script.py"};
    args_source_label(&s, out, sizeof out);
    assert_string_equal(out, "dir/script.py");
    s = (run_source){.kind = SOURCE_STDIN, .arg = "-"};
    args_source_label(&s, out, sizeof out);
    assert_string_equal(out, "<stdin>");
    s = (run_source){.kind = SOURCE_INLINE, .arg = "print(1)"};
    args_source_label(&s, out, sizeof out);
    assert_string_equal(out, "print(1)");
    s.arg = "\n  x = 1\nprint(x)\n";
    args_source_label(&s, out, sizeof out);
    assert_string_equal(out, "x = 1\xe2\x80\xa6");
    s.arg = "x = 1\n\n";
    args_source_label(&s, out, sizeof out);
    assert_string_equal(out, "x = 1");
    s.arg = "print('aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa')";
    args_source_label(&s, out, sizeof out);
    assert_int_equal(strlen(out), 40 + 3);
    /* Never cut inside a character: 20 two-byte characters then one more. */
    char wide[64] = "";
    for (int i = 0; i < 21; i++)
        strcat(wide, "\xc3\xa9");
    s.arg = wide;
    args_source_label(&s, out, sizeof out);
    assert_int_equal(strlen(out), 40 + 3);
    s.arg = "a\tb";
    args_source_label(&s, out, sizeof out);
    assert_string_equal(out, "a b");
    char tiny[8];
    s.arg = "print(123456789)";
    args_source_label(&s, tiny, sizeof tiny);
    assert_true(strlen(tiny) < sizeof tiny);
}

/* ---- libsbx helpers used for output ---- */

static void test_error_names(void **state)
{
    assert_string_equal(sbx_error_kind_name(SBX_ERR_VM_CONFIG), "VmConfigError");
    assert_string_equal(sbx_error_kind_name(SBX_ERR_VM_TIMEOUT), "VmTimeoutError");
    assert_string_equal(sbx_error_kind_name(SBX_ERR_VM_CAPACITY), "VmCapacityError");
    assert_string_equal(sbx_error_kind_name(SBX_ERR_COMMUNICATION), "CommunicationError");
    assert_string_equal(sbx_error_kind_name(SBX_ERR_GUEST_AGENT), "GuestAgentError");
    assert_string_equal(sbx_error_kind_name(SBX_ERR_PACKAGE_NOT_ALLOWED), "PackageNotAllowedError");
    assert_string_equal(sbx_error_kind_name(SBX_ERR_SNAPSHOT), "SnapshotError");
    assert_string_equal(sbx_error_kind_name(SBX_ERR_SESSION_CLOSED), "SessionClosedError");
    assert_string_equal(sbx_error_kind_name(SBX_ERR_ASSET), "AssetError");
    assert_string_equal(sbx_error_kind_name(SBX_ERR_CONNECT), "ConnectError");
    assert_string_equal(sbx_error_kind_name(SBX_ERR_LOCAL_FILE), "LocalFileError");
    assert_string_equal(sbx_error_kind_name(SBX_ERR_PROTOCOL), "ProtocolError");
    assert_string_equal(sbx_error_kind_name(0), "SandboxError");
    assert_string_equal(sbx_error_kind_name(77), "SandboxError");
}

/* libsbx's package checks: the kinds, and runs and sessions refused before any daemon is needed
 * (no client at all here). */
static void test_libsbx_packages(void **state)
{
    sbx_error e;
    const char *good[] = {"numpy==1.26.0", "attrs"};
    assert_int_equal(sbx_check_packages(NULL, good, 2, false, &e), 0);
    assert_int_equal(sbx_check_packages("python", NULL, 0, false, NULL), 0);
    const char *off[] = {"surely-not-a-real-package-zz==1"};
    assert_int_equal(sbx_check_packages("python", off, 1, false, &e), -1);
    assert_int_equal(e.kind, SBX_ERR_PACKAGE_NOT_ALLOWED);
    assert_false(e.transient);
    assert_non_null(strstr(e.message, "--no-validation"));
    assert_int_equal(sbx_check_packages("python", off, 1, true, &e), 0);
    assert_int_equal(sbx_check_packages("python", off, 1, false, NULL), -1);
    const char *bad[] = {"numpy>=1"};
    assert_int_equal(sbx_check_packages("python", bad, 1, true, &e), -1);
    assert_int_equal(e.kind, SBX_ERR_VM_CONFIG);
    assert_int_equal(sbx_check_packages("raw", good, 2, true, &e), -1);
    assert_int_equal(e.kind, SBX_ERR_VM_CONFIG);
    assert_int_equal(sbx_check_packages("python", good, SBX_PACKAGES_MAX + 1, true, &e), -1);
    assert_int_equal(e.kind, SBX_ERR_VM_CONFIG);

    sbx_result r;
    sbx_run_opts ro = {.code = "print(1)", .packages = off, .n_packages = 1};
    assert_int_equal(sbx_run(NULL, &ro, &r, &e), -1);
    assert_int_equal(e.kind, SBX_ERR_PACKAGE_NOT_ALLOWED);
    ro.language = "javascript";
    ro.packages = good;
    ro.n_packages = 2;
    assert_int_equal(sbx_run(NULL, &ro, &r, &e), -1);
    assert_int_equal(e.kind, SBX_ERR_VM_CONFIG); /* `==` is no npm spec */
    sbx_session_info si;
    sbx_session_opts so = {.language = "python", .packages = bad, .n_packages = 1};
    assert_int_equal(sbx_session_open(NULL, &so, &si, &e), -1);
    assert_int_equal(e.kind, SBX_ERR_VM_CONFIG);
    so.packages = off;
    assert_int_equal(sbx_session_open(NULL, &so, &si, &e), -1);
    assert_int_equal(e.kind, SBX_ERR_PACKAGE_NOT_ALLOWED);
}

static void expect_utf8(const char *in, size_t n, const char *want, size_t want_len)
{
    size_t len;
    char *out = sbx_utf8_sanitize(in, n, &len);
    assert_non_null(out);
    assert_int_equal(len, want_len);
    assert_memory_equal(out, want, want_len);
    assert_int_equal(out[len], '\0');
    free(out);
}
#define U8(in, want) expect_utf8(in, sizeof(in) - 1, want, sizeof(want) - 1)
#define FFFD "\xef\xbf\xbd"

static void test_utf8(void **state)
{
    U8("", "");
    U8("hello\n", "hello\n");
    U8("a\0b", "a\0b"); /* NUL kept */
    U8("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
    U8("a\x80z", "a" FFFD "z");                  /* lone continuation */
    U8("\xff\xfe", FFFD FFFD);                   /* never valid */
    U8("\xc0\x80", FFFD FFFD);                   /* overlong NUL */
    U8("\xe0\x80\x80", FFFD FFFD FFFD);          /* overlong 3-byte */
    U8("\xed\xa0\x80", FFFD FFFD FFFD);          /* surrogate */
    U8("\xf4\x90\x80\x80", FFFD FFFD FFFD FFFD); /* above U+10FFFF */
    U8("\xe2\x82", FFFD);                        /* truncated at the end */
    U8("\xe2\x82z", FFFD "z");                   /* maximal subpart, then ASCII */
    U8("\xf0\x9f\x98", FFFD);
    U8("\xf4\x8f\xbf\xbf", "\xf4\x8f\xbf\xbf"); /* U+10FFFF itself */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_command),
        cmocka_unit_test(test_help_version),
        cmocka_unit_test(test_socket),
        cmocka_unit_test(test_status),
        cmocka_unit_test(test_run_defaults),
        cmocka_unit_test(test_run_sources_order),
        cmocka_unit_test(test_run_source_errors),
        cmocka_unit_test(test_language),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_memory),
        cmocka_unit_test(test_concurrency),
        cmocka_unit_test(test_flags),
        cmocka_unit_test(test_env),
        cmocka_unit_test(test_env_count),
        cmocka_unit_test(test_packages),
        cmocka_unit_test(test_network),
        cmocka_unit_test(test_network_counts),
        cmocka_unit_test(test_session_network),
        cmocka_unit_test(test_run_transfers),
        cmocka_unit_test(test_session_commands),
        cmocka_unit_test(test_session_new),
        cmocka_unit_test(test_session_exec),
        cmocka_unit_test(test_session_others),
        cmocka_unit_test(test_language_for_path),
        cmocka_unit_test(test_looks_like_path),
        cmocka_unit_test_setup_teardown(test_resolve, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_load, tmp_setup, tmp_teardown),
        cmocka_unit_test(test_label),
        cmocka_unit_test(test_error_names),
        cmocka_unit_test(test_libsbx_packages),
        cmocka_unit_test(test_utf8),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
