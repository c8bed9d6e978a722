/* The children that hash a layer image, and the packer, which first turns an install VM's tar
 * into that image with tar2sqfs (squashfs-tools-ng: the tree is never unpacked on the host). A
 * layer is hundreds of MB: never hashed on the loop. The packer runs as a VM uid of its own with
 * no_new_privs and limits on file size, CPU and processes, forgets the remote cache's
 * credentials, and dies with sbxd; whatever that uid leaves is killed before the slot is freed. */
#include "packer.h"

#include <fcntl.h>
#include <grp.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "child.h"
#include "install.h"
#include "paths.h"
#include "remote.h"
#include "spawn.h"

#define PACK_CPU_S 900
/* Processes and threads the packer's uid may have: itself, tar2sqfs and its block processor. */
#define PACK_PROCS 8
/* Wall-clock bound of a hashing or packing child (its CPU is bounded by RLIMIT_CPU too). */
#define CHILD_WALL_S 1800

struct hasher {
    child *c;
    int uid_slot; /* the packer's, or -1 */
    hash_done done;
    void *owner;
};

/* What a hashing child is told: the file, and for the packer where tar2sqfs is and its uid. */
struct hash_job {
    const char *path;
    const char *tool; /* NULL: hash only */
    int uid_slot;
    pid_t sbxd;
};

/* sha256 of path to fd 1 as "HEX SIZE". */
static int hash_to_stdout(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
        return 10;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    static unsigned char buf[1 << 20];
    uint64_t total = 0;
    if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
        return 11;
    for (;;) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return 12;
        if (r == 0)
            break;
        EVP_DigestUpdate(md, buf, (size_t)r);
        total += (uint64_t)r;
    }
    unsigned char d[32];
    char hex[65];
    EVP_DigestFinal_ex(md, d, NULL);
    sbx_hex(d, 32, hex);
    dprintf(1, "%s %llu\n", hex, (unsigned long long)total);
    return 0;
}

/* In the packer, as the packer's uid: tar (fd 0) to a squashfs image at out. */
static int pack(const char *tool, const char *out)
{
    pid_t packer = getpid();
    pid_t p = fork();
    if (p < 0)
        return 20;
    if (p == 0) {
        sbx_child_of(packer);
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull < 0 || dup2(devnull, 1) < 0)
            _exit(126); /* never with the report pipe as its stdout */
        char *const env[] = {"PATH=/usr/bin:/bin", "LC_ALL=C", NULL};
        /* -k/-d: no time stamps and root-owned implicit directories, so that the same tree
         * gives the same image; -x: no xattrs; -s: a record it cannot read is an error. */
        char *const argv[] = {"tar2sqfs",  "-q", "-f", "-c",
                              "zstd",      "-j", "1",  "-k",
                              "-x",        "-s", "-d", "uid=0,gid=0,mode=0755,mtime=0",
                              (char *)out, NULL};
        execve(tool, argv, env);
        dprintf(2, "exec %s: %s (install squashfs-tools-ng)\n", tool, strerror(errno));
        _exit(127);
    }
    int st;
    while (waitpid(p, &st, 0) < 0 && errno == EINTR)
        ;
    if (!WIFEXITED(st) || WEXITSTATUS(st)) {
        dprintf(2, "tar2sqfs %s %d\n", WIFEXITED(st) ? "exited with status" : "died of signal",
                WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
        return 21;
    }
    return 0;
}

/* The child's body. The packer goes into the staging directory first (its parents are not its
 * to walk), becomes the VM uid of its slot (when sbxd is root) with no_new_privs and limits on
 * file size, CPU and processes, and dies with sbxd. */
static int hash_body(void *arg)
{
    const struct hash_job *j = arg;
    const char *path = j->path;
    remote_forget();
    if (!j->tool)
        return hash_to_stdout(path);
    const char *slash = strrchr(path, '/');
    if (slash) {
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
        if (chdir(dir) < 0)
            return 32;
        path = slash + 1;
    }
    if (j->uid_slot >= 0) {
        uid_t u = cfg.vm_uid_base + (uid_t)j->uid_slot;
        struct rlimit procs = {PACK_PROCS, PACK_PROCS};
        if (setgroups(0, NULL) < 0 || setresgid(u, u, u) < 0 ||
            setrlimit(RLIMIT_NPROC, &procs) < 0 || setresuid(u, u, u) < 0)
            return 30;
        sbx_child_of(j->sbxd); /* changing uid cleared the parent-death signal */
    }
    struct rlimit fs = {INSTALL_TREE_MAX, INSTALL_TREE_MAX};
    struct rlimit cpu = {PACK_CPU_S, PACK_CPU_S};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 || setrlimit(RLIMIT_FSIZE, &fs) < 0 ||
        setrlimit(RLIMIT_CPU, &cpu) < 0)
        return 31;
    int rc = pack(j->tool, path);
    return rc ? rc : hash_to_stdout(path);
}

/* Every process of a uid, gone: a child that becomes it and signals all it may (kill -1
 * spares the caller). The packer's uid is its own while the slot is held, so this reaches
 * whatever tar2sqfs might have left behind, before the slot (and the directory it owned) is
 * reused or trusted. */
static void kill_uid(int slot)
{
    uid_t u = cfg.vm_uid_base + (uid_t)slot;
    pid_t p = fork();
    if (p == 0) {
        if (setgroups(0, NULL) == 0 && setresgid(u, u, u) == 0 && setresuid(u, u, u) == 0)
            kill(-1, SIGKILL);
        _exit(0);
    }
    while (p > 0 && waitpid(p, NULL, 0) < 0 && errno == EINTR)
        ;
}

static void hasher_free(hasher *h)
{
    if (h->uid_slot >= 0) {
        kill_uid(h->uid_slot);
        spawn_uid_free(h->uid_slot);
    }
    free(h);
}

static void hashed(void *owner, bool ok, const char *line)
{
    hasher *h = owner;
    char hex[65] = "";
    unsigned long long size = 0;
    ok = ok && sscanf(line, "%64[0-9a-f] %llu", hex, &size) == 2 && strlen(hex) == 64;
    hash_done done = h->done;
    void *o = h->owner;
    hasher_free(h);
    done(o, ok, hex, size);
}

/* Hash path, after packing tar_fd into it when tar_fd >= 0 (as the packer: see hash_body; the
 * hasher owns uid_slot from here, its stderr goes to log_fd). */
hasher *packer_start(const char *path, int tar_fd, int log_fd, int uid_slot, hash_done done,
                     void *owner, sbx_err *err)
{
    char tool[PATH_MAX] = "";
    if (tar_fd >= 0 && paths_which("tar2sqfs", tool, sizeof tool) < 0)
        return sbx_fail(err, ENOENT, "tar2sqfs is not installed (squashfs-tools-ng)"), NULL;
    hasher *h = calloc(1, sizeof *h);
    if (!h)
        return sbx_fail(err, ENOMEM, "out of memory"), NULL;
    h->uid_slot = uid_slot;
    h->done = done;
    h->owner = owner;
    struct hash_job j = {path, tar_fd >= 0 ? tool : NULL, uid_slot, getpid()};
    h->c = child_start(tar_fd >= 0 ? "package layers: packer" : "package layers: hashing",
                       hash_body, &j, tar_fd, log_fd, CHILD_WALL_S, hashed, h, err);
    if (!h->c) {
        free(h); /* the slot stays the caller's */
        return NULL;
    }
    return h;
}

hasher *hash_file(const char *path, hash_done done, void *owner, sbx_err *err)
{
    return packer_start(path, -1, -1, -1, done, owner, err);
}

void hash_cancel(hasher *h)
{
    child_cancel(h->c);
    hasher_free(h);
}
