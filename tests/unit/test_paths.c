/* The state-directory helpers (common/paths.c): which directories are trusted, files written and
 * read without following links, the cache directory's default without $HOME. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "paths.h"

#define OTHER_UID 65534

static char base[64];

static int setup(void **state)
{
    snprintf(base, sizeof base, "/tmp/sbx-test-paths-XXXXXX");
    return mkdtemp(base) ? 0 : -1;
}

static int teardown(void **state)
{
    return paths_rm_tree_at(AT_FDCWD, base, 8);
}

static void sub(char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s/%s", base, name);
}

static void put(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
}

static void expect_contents(const char *path, const char *text)
{
    char buf[256] = "";
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    assert_true(n >= 0);
    buf[n] = '\0';
    assert_string_equal(buf, text);
}

static void test_creates_and_accepts_own_dir(void **state)
{
    char p[128];
    sub(p, sizeof p, "a/b/c");
    sbx_err e = {0};
    int fd = paths_dir_open(p, geteuid(), 0700, &e);
    assert_true(fd >= 0);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0700);
    close(fd);
    /* Reused as it is: 0755 is fine too (others may read, not write). */
    assert_int_equal(chmod(p, 0755), 0);
    fd = paths_dir_open(p, geteuid(), 0700, &e);
    assert_true(fd >= 0);
    close(fd);
}

static void test_refuses_writable_by_others(void **state)
{
    char p[128];
    sub(p, sizeof p, "open");
    assert_int_equal(mkdir(p, 0700), 0);
    assert_int_equal(chmod(p, 0777), 0);
    sbx_err e = {0};
    assert_int_equal(paths_dir_open(p, geteuid(), 0700, &e), -1);
    assert_int_equal(e.code, EPERM);
    assert_non_null(strstr(e.msg, p));
    assert_non_null(strstr(e.msg, "writable by everyone (mode 0777)"));
    assert_int_equal(chmod(p, 0770), 0);
    assert_int_equal(paths_dir_open(p, geteuid(), 0, &e), -1);
    assert_non_null(strstr(e.msg, "writable by its group"));
}

static void test_refuses_other_owner(void **state)
{
    if (geteuid() != 0)
        skip(); /* needs chown to another uid: counted as skipped, not passed */
    char p[128], q[128];
    sub(p, sizeof p, "theirs");
    assert_int_equal(mkdir(p, 0700), 0);
    assert_int_equal(chown(p, OTHER_UID, OTHER_UID), 0);
    sbx_err e = {0};
    assert_int_equal(paths_dir_open(p, geteuid(), 0700, &e), -1);
    assert_non_null(strstr(e.msg, "belongs to uid 65534, not to uid 0"));
    /* ...and as an ancestor: ours inside theirs is not ours alone. */
    sub(q, sizeof q, "theirs/ours");
    assert_int_equal(mkdir(q, 0700), 0);
    assert_int_equal(paths_dir_open(q, geteuid(), 0, &e), -1);
    assert_non_null(strstr(e.msg, "on the way to"));
    assert_non_null(strstr(e.msg, "uid 65534"));
    /* The other uid accepts it as its own. */
    int fd = paths_dir_open(p, OTHER_UID, 0, &e);
    assert_true(fd >= 0);
    close(fd);
}

static void test_ancestor_rules(void **state)
{
    char p[128], q[128];
    /* A writable ancestor without the sticky bit lets others swap what is below it. */
    sub(p, sizeof p, "shared");
    assert_int_equal(mkdir(p, 0700), 0);
    assert_int_equal(chmod(p, 0777), 0);
    sub(q, sizeof q, "shared/mine");
    assert_int_equal(mkdir(q, 0700), 0);
    sbx_err e = {0};
    assert_int_equal(paths_dir_open(q, geteuid(), 0, &e), -1);
    assert_non_null(strstr(e.msg, "without the sticky bit"));
    /* With it (like /tmp) they can add entries but not replace ours. */
    assert_int_equal(chmod(p, 01777), 0);
    int fd = paths_dir_open(q, geteuid(), 0, &e);
    assert_true(fd >= 0);
    close(fd);
}

static void test_missing_and_not_a_dir(void **state)
{
    char p[128];
    sub(p, sizeof p, "absent");
    sbx_err e = {0};
    assert_int_equal(paths_dir_open(p, geteuid(), 0, &e), -1);
    assert_int_equal(e.code, ENOENT);
    sub(p, sizeof p, "file");
    put(p, "x");
    assert_int_equal(paths_dir_open(p, geteuid(), 0, &e), -1);
    assert_int_equal(e.code, ENOTDIR);
    assert_non_null(strstr(e.msg, p));
}

static void test_write_replaces_link_without_following(void **state)
{
    char dir[128], target[128], link[128];
    sub(dir, sizeof dir, "state");
    sub(target, sizeof target, "victim");
    put(target, "precious");
    sbx_err e = {0};
    int fd = paths_dir_open(dir, geteuid(), 0700, &e);
    assert_true(fd >= 0);
    snprintf(link, sizeof link, "%s/verdict", dir);
    assert_int_equal(symlink(target, link), 0);
    /* Reading refuses the link. */
    assert_int_equal(paths_open_read_at(fd, dir, "verdict", geteuid(), &e), -1);
    assert_int_equal(e.code, ELOOP);
    assert_non_null(strstr(e.msg, "not followed"));
    /* Writing replaces it; the file it pointed at is untouched. */
    assert_int_equal(paths_write_at(fd, dir, "verdict", "new\n", 4, 0644, &e), 0);
    expect_contents(target, "precious");
    struct stat st;
    assert_int_equal(lstat(link, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0644);
    int r = paths_open_read_at(fd, dir, "verdict", geteuid(), &e);
    assert_true(r >= 0);
    close(r);
    expect_contents(link, "new\n");
    /* Nothing else left behind: no temporary file. */
    int n = 0;
    DIR *d = opendir(dir);
    for (struct dirent *x; (x = readdir(d));)
        n += strcmp(x->d_name, ".") && strcmp(x->d_name, "..");
    closedir(d);
    assert_int_equal(n, 1);
    close(fd);
}

static void test_read_checks_owner_and_mode(void **state)
{
    char dir[128], p[128];
    sub(dir, sizeof dir, "r");
    sbx_err e = {0};
    int fd = paths_dir_open(dir, geteuid(), 0700, &e);
    assert_true(fd >= 0);
    snprintf(p, sizeof p, "%s/f", dir);
    put(p, "x");
    assert_int_equal(chmod(p, 0666), 0);
    assert_int_equal(paths_open_read_at(fd, dir, "f", geteuid(), &e), -1);
    assert_non_null(strstr(e.msg, "mode 0666"));
    assert_int_equal(paths_open_read_at(fd, dir, "none", geteuid(), &e), -1);
    assert_int_equal(e.code, ENOENT);
    snprintf(p, sizeof p, "%s/fifo", dir);
    assert_int_equal(mkfifo(p, 0600), 0);
    assert_int_equal(paths_open_read_at(fd, dir, "fifo", geteuid(), &e), -1); /* no hang */
    assert_non_null(strstr(e.msg, "not a regular file"));
    close(fd);
}

static void test_rm_tree_does_not_follow_links(void **state)
{
    char keep[128], tree[128], p[160];
    sub(keep, sizeof keep, "keep");
    assert_int_equal(mkdir(keep, 0700), 0);
    snprintf(p, sizeof p, "%s/file", keep);
    put(p, "kept");
    sub(tree, sizeof tree, "tree");
    snprintf(p, sizeof p, "%s/x/y", tree);
    assert_int_equal(paths_mkdir_p(p, 0700), 0);
    snprintf(p, sizeof p, "%s/x/y/link", tree);
    assert_int_equal(symlink(keep, p), 0);
    assert_int_equal(paths_rm_tree_at(AT_FDCWD, tree, 8), 0);
    assert_int_equal(access(tree, F_OK), -1);
    snprintf(p, sizeof p, "%s/file", keep);
    expect_contents(p, "kept");
}

static void test_cache_dir_without_home(void **state)
{
    char out[256];
    sbx_err e = {0};
    unsetenv("EXEC_SANDBOX_CACHE_DIR");
    unsetenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    char saved[256] = "";
    if (home)
        snprintf(saved, sizeof saved, "%s", home);
    setenv("HOME", "/home/someone", 1);
    assert_int_equal(paths_cache_dir(out, sizeof out, &e), 0);
    assert_string_equal(out, "/home/someone/.cache/exec-sandbox");
    unsetenv("HOME");
    int r = paths_cache_dir(out, sizeof out, &e);
    if (geteuid() == 0) {
        assert_int_equal(r, 0);
        assert_string_equal(out, PATHS_SYSTEM_CACHE_DIR);
    } else {
        assert_int_equal(r, -1);
        assert_non_null(strstr(e.msg, "EXEC_SANDBOX_CACHE_DIR"));
    }
    assert_null(strstr(out, "/tmp"));
    setenv("EXEC_SANDBOX_CACHE_DIR", "/srv/sbx", 1);
    assert_int_equal(paths_cache_dir(out, sizeof out, &e), 0);
    assert_string_equal(out, "/srv/sbx");
    unsetenv("EXEC_SANDBOX_CACHE_DIR");
    if (saved[0])
        setenv("HOME", saved, 1);
}

static void test_socket_named_or_per_user(void **state)
{
    char out[108];
    setenv("EXEC_SANDBOX_SOCKET", "/run/x.sock", 1);
    assert_true(paths_socket_named());
    assert_int_equal(paths_default_socket(out, sizeof out), 0);
    assert_string_equal(out, "/run/x.sock");
    unsetenv("EXEC_SANDBOX_SOCKET");
    assert_false(paths_socket_named());
    setenv("XDG_RUNTIME_DIR", base, 1);
    assert_int_equal(paths_default_socket(out, sizeof out), 0);
    char want[108];
    snprintf(want, sizeof want, "%s/exec-sandbox/sbxd.sock", base);
    assert_string_equal(out, want);
    setenv("XDG_RUNTIME_DIR", "/nonexistent/run", 1);
    assert_int_equal(paths_user_socket(out, sizeof out), 0);
    snprintf(want, sizeof want, "/tmp/exec-sandbox-%u/sbxd.sock", (unsigned)getuid());
    assert_string_equal(out, want);
    unsetenv("XDG_RUNTIME_DIR");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_creates_and_accepts_own_dir, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refuses_writable_by_others, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refuses_other_owner, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ancestor_rules, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_and_not_a_dir, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_replaces_link_without_following, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_read_checks_owner_and_mode, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rm_tree_does_not_follow_links, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cache_dir_without_home, setup, teardown),
        cmocka_unit_test_setup_teardown(test_socket_named_or_per_user, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
