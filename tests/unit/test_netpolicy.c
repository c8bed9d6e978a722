/* The network policy's pure parts: domains, matching, private ranges, expose specs. */
#include <arpa/inet.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "common.h"
#include "netpolicy.h"

static sbx_err err = {0};

static void test_modes(void **state)
{
    assert_int_equal(net_mode_of(false, 0, 0), NET_NONE);
    assert_int_equal(net_mode_of(false, 0, 2), NET_PORTS);
    assert_int_equal(net_mode_of(true, 3, 0), NET_ALLOWLIST);
    assert_int_equal(net_mode_of(true, 0, 1), NET_OPEN);
    for (net_mode m = NET_NONE; m <= NET_OPEN; m++)
        assert_int_equal(net_mode_parse(net_mode_name(m)), m);
    assert_int_equal(net_mode_parse("bogus"), NET_NONE);
    assert_int_equal(net_mode_parse(NULL), NET_NONE);
    assert_string_equal(net_mode_name((net_mode)42), "none");
}

/* A domain of `labels` labels of `each` bytes ("aaa.aaa...") in buf. */
static const char *make_domain(char *buf, size_t labels, size_t each)
{
    char *p = buf;
    for (size_t i = 0; i < labels; i++) {
        if (i)
            *p++ = '.';
        memset(p, 'a', each);
        p += each;
    }
    *p = '\0';
    return buf;
}

static void expect_bad_domain(const char *d, const char *why)
{
    if (net_check_domain(d, &err) != -1)
        fail_msg("`%s` accepted", d);
    if (!strstr(err.msg, why))
        fail_msg("`%s`: message `%s` lacks `%s`", d, err.msg, why);
}

static void test_domain_syntax(void **state)
{
    const char *good[] = {"example.com",     "example.com.",  "EXAMPLE.com", "a.b.c.d.e",
                          "x-y.example.com", "1password.com", "a1.b2"};
    for (size_t i = 0; i < ARRAY_LEN(good); i++)
        if (net_check_domain(good[i], &err) != 0)
            fail_msg("`%s` refused: %s", good[i], err.msg);
    expect_bad_domain("", "empty");
    expect_bad_domain(NULL, "empty");
    expect_bad_domain("-a.com", "hyphen");
    expect_bad_domain("a-.com", "hyphen");
    expect_bad_domain("a..com", "empty label");
    expect_bad_domain(".a.com", "empty label");
    expect_bad_domain("a.com..", "empty label");
    expect_bad_domain("localhost", "single label");
    expect_bad_domain("localhost.", "localhost are not allowed");
    expect_bad_domain("1.2.3.4", "IP address");
    expect_bad_domain("1.2.3.4.", "IP address");
    expect_bad_domain("::1", "IP address");
    expect_bad_domain("a.123", "numeric");
    expect_bad_domain("*.x.com", "wildcard");
    expect_bad_domain("a_b.com", "`_`");
    expect_bad_domain("a b.com", "` `");
    expect_bad_domain("exa\xc3\xa9mple.com", "only letters");
    expect_bad_domain("a.com/path", "`/`");

    char buf[600];
    /* Labels: 63 bytes is the most. */
    snprintf(buf + 300, 100, "%s.com", make_domain(buf, 1, 63));
    assert_int_equal(net_check_domain(buf + 300, &err), 0);
    snprintf(buf + 300, 100, "%s.com", make_domain(buf, 1, 64));
    expect_bad_domain(buf + 300, "64 bytes");
    /* The whole name: 4 x 63 + 3 dots = 255; 3 x 63 + 61 + 3 dots = 253. */
    make_domain(buf, 4, 63);
    buf[253] = '\0';
    assert_int_equal(strlen(buf), 253);
    assert_int_equal(net_check_domain(buf, &err), 0);
    strcat(buf, "."); /* the optional root dot does not count */
    assert_int_equal(net_check_domain(buf, &err), 0);
    make_domain(buf, 4, 63);
    buf[254] = '\0';
    expect_bad_domain(buf, "254 bytes");
}

static void test_domain_list(void **state)
{
    const char *list[NET_MAX_DOMAINS + 1];
    for (size_t i = 0; i < ARRAY_LEN(list); i++)
        list[i] = "example.com";
    assert_int_equal(net_check_domains(list, NET_MAX_DOMAINS, &err), 0);
    assert_int_equal(net_check_domains(list, NET_MAX_DOMAINS + 1, &err), -1);
    assert_non_null(strstr(err.msg, "101 allowed domains"));
    list[5] = "bad..com";
    assert_int_equal(net_check_domains(list, 10, &err), -1);
    assert_non_null(strstr(err.msg, "bad..com"));
    assert_int_equal(net_check_domains(NULL, 0, &err), 0);
}

static void test_normalize(void **state)
{
    char out[NET_MAX_DOMAIN_LEN + 1];
    net_normalize_domain("Api.EXAMPLE.com.", out, sizeof out);
    assert_string_equal(out, "api.example.com");
    net_normalize_domain("x.y", out, sizeof out);
    assert_string_equal(out, "x.y");
    char small[4];
    net_normalize_domain("abcdef", small, sizeof small);
    assert_string_equal(small, "abc");
}

static void test_matching(void **state)
{
    const char *allowed[] = {"example.com", "API.Other.org."};
    const size_t n = ARRAY_LEN(allowed);
    assert_true(net_name_allowed("example.com", allowed, n));
    assert_true(net_name_allowed("EXAMPLE.com", allowed, n));
    assert_true(net_name_allowed("example.com.", allowed, n));
    assert_true(net_name_allowed("api.example.com", allowed, n));
    assert_true(net_name_allowed("a.b.Example.COM.", allowed, n));
    assert_true(net_name_allowed("api.other.org", allowed, n));
    assert_true(net_name_allowed("v1.api.other.org", allowed, n));
    assert_false(net_name_allowed("other.org", allowed, n)); /* the parent of an allowed name */
    assert_false(net_name_allowed("badexample.com", allowed, n));
    assert_false(net_name_allowed("example.com.evil.net", allowed, n));
    assert_false(net_name_allowed("xapi.other.org", allowed, n));
    assert_false(net_name_allowed("com", allowed, n));
    assert_false(net_name_allowed("", allowed, n));
    assert_false(net_name_allowed(".example.com", allowed, 0));
    assert_false(net_name_allowed(NULL, allowed, n));
    char long_name[400];
    memset(long_name, 'a', 380);
    strcpy(long_name + 380, ".example.com");
    assert_false(net_name_allowed(long_name, allowed, n));
    const char *narrow[] = {"api.example.com"};
    assert_false(net_name_allowed("example.com", narrow, 1));
}

static bool private_ip(const char *dotted)
{
    struct in_addr a;
    assert_int_equal(inet_pton(AF_INET, dotted, &a), 1);
    return net_ipv4_private(a.s_addr);
}

static void test_private_ranges(void **state)
{
    const char *priv[] = {"0.0.0.0",    "0.255.255.255",   "10.0.0.0",    "10.255.255.255",
                          "100.64.0.0", "100.127.255.255", "127.0.0.1",   "169.254.169.254",
                          "172.16.0.0", "172.31.255.255",  "192.168.0.1", "192.168.255.255",
                          "224.0.0.1",  "239.255.255.255", "240.0.0.1",   "255.255.255.255"};
    const char *pub[] = {"1.1.1.1",         "9.255.255.255",   "11.0.0.0",     "100.63.255.255",
                         "100.128.0.0",     "126.255.255.255", "128.0.0.0",    "169.253.255.255",
                         "169.255.0.0",     "172.15.255.255",  "172.32.0.0",   "192.0.2.1",
                         "192.167.255.255", "192.169.0.0",     "198.51.100.1", "203.0.113.1",
                         "223.255.255.255", "8.8.8.8"};
    for (size_t i = 0; i < ARRAY_LEN(priv); i++)
        if (!private_ip(priv[i]))
            fail_msg("%s counted as public", priv[i]);
    for (size_t i = 0; i < ARRAY_LEN(pub); i++)
        if (private_ip(pub[i]))
            fail_msg("%s counted as private", pub[i]);
}

static void expect_expose(const char *spec, uint16_t in, uint16_t ex, bool udp)
{
    net_expose e = {0};
    if (net_parse_expose(spec, &e, &err) != 0)
        fail_msg("`%s` refused: %s", spec, err.msg);
    assert_int_equal(e.internal, in);
    assert_int_equal(e.external, ex);
    assert_int_equal(e.udp, udp);
}

static void expect_bad_expose(const char *spec, const char *why)
{
    net_expose e = {0};
    if (net_parse_expose(spec, &e, &err) != -1)
        fail_msg("`%s` accepted", spec);
    if (!strstr(err.msg, why))
        fail_msg("`%s`: message `%s` lacks `%s`", spec, err.msg, why);
}

static void test_expose_specs(void **state)
{
    expect_expose("8080", 8080, 0, false);
    expect_expose("8080:9000", 8080, 9000, false);
    expect_expose("8080:0/udp", 8080, 0, true);
    expect_expose("53/udp", 53, 0, true);
    expect_expose("80/tcp", 80, 0, false);
    expect_expose("1:1024", 1, 1024, false);
    expect_expose("65535:65535", 65535, 65535, false);
    expect_expose("00080", 80, 0, false);
    expect_bad_expose("0", "out of range");
    expect_bad_expose("65536", "out of range");
    expect_bad_expose("70000", "70000");
    expect_bad_expose("99999999999999999999", "out of range");
    expect_bad_expose("8080:80", "below 1024");
    expect_bad_expose("8080:1023", "below 1024");
    expect_bad_expose("8080:70000", "out of range");
    expect_bad_expose("8080/sctp", "sctp");
    expect_bad_expose("8080/TCP", "TCP");
    expect_bad_expose("8080/", "no protocol");
    expect_bad_expose("8080:", "no host port");
    expect_bad_expose(":9000", "no guest port");
    expect_bad_expose("", "no guest port");
    expect_bad_expose(NULL, "no guest port");
    expect_bad_expose("-1", "no guest port");
    expect_bad_expose("+80", "no guest port");
    expect_bad_expose(" 80", "no guest port");
    expect_bad_expose("80 ", "unexpected");
    expect_bad_expose("80:90:100", "unexpected");
    expect_bad_expose("8080x", "unexpected");
    /* The refusal names the spec. */
    expect_bad_expose("8080:80", "expose `8080:80`");
}

static void test_expose_split(void **state)
{
    assert_int_equal(net_check_expose(8080, 0, "", &err), 0);
    assert_int_equal(net_check_expose(8080, 0, NULL, &err), 0);
    assert_int_equal(net_check_expose(8080, 9000, "udp", &err), 0);
    assert_int_equal(net_check_expose(0, 0, "tcp", &err), -1);
    assert_int_equal(net_check_expose(65536, 0, "tcp", &err), -1);
    assert_int_equal(net_check_expose(80, 443, "tcp", &err), -1);
    assert_int_equal(net_check_expose(80, 100000, "tcp", &err), -1);
    assert_int_equal(net_check_expose(80, 0, "icmp", &err), -1);
    assert_int_equal(net_check_expose_count(NET_MAX_EXPOSE, &err), 0);
    assert_int_equal(net_check_expose_count(NET_MAX_EXPOSE + 1, &err), -1);
    assert_non_null(strstr(err.msg, "11 exposed ports"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_modes),        cmocka_unit_test(test_domain_syntax),
        cmocka_unit_test(test_domain_list),  cmocka_unit_test(test_normalize),
        cmocka_unit_test(test_matching),     cmocka_unit_test(test_private_ranges),
        cmocka_unit_test(test_expose_specs), cmocka_unit_test(test_expose_split),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
