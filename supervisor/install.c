/* Installing a package set. The install VM is a VM like any other (sched.c) in the language's
 * image, with a NIC in allowlist mode whose only names are the package index's: the network
 * issue's broker enforces that, so the installer reaches the index and nothing else, and the
 * user's code never runs in it. What runs there is sbxd's own program (below): the image's pip
 * with wheels only (--only-binary=:all:, so no build script runs) into a target directory, or
 * `bun add --ignore-scripts`; then tar of that directory in the home. sbxd reads the tar out
 * through the file channel (a read bigger than clients may ask for: read_max_bytes), hashing and
 * writing it into the staging directory as it comes, and stops the VM. A packer child, running
 * as a VM uid with no_new_privs and a file size limit, turns the tar into a squashfs image with
 * tar2sqfs (squashfs-tools-ng: the tree never touches the host's file system as files) and
 * hashes the image. Exit codes of the program: 0 done, 2 the installer refused (no such
 * version, no wheel: permanent), 3 the index did not answer (transient). */
#include "install.h"

#include <fcntl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "netpolicy.h"
#include "packer.h"
#include "packages.h"
#include "remote.h"
#include "paths.h"
#include "sbx_limits.h"
#include "spawn.h"

#define INSTALL_MEMORY_MB 2048
#define INSTALL_TAR "layer.tar"
#define TREE_FILE "tree.tar"
/* The tar read: the file channel moves ~50 MB/s under TCG; generous for 1.5 GiB. */
#define INSTALL_READ_S 600
#define OUTPUT_TAIL 1200

/* ---- the program the install VM runs ------------------------------------------------------ */

/* Where the program's configuration (base64 JSON) goes. */
#define CONFIG_MARK "@CONFIG@"

static const char python_program[] =
    "import base64, json, os, ssl, subprocess, sys, urllib.error, urllib.request\n"
    "c = json.loads(base64.b64decode('" CONFIG_MARK "'))\n"
    "t = '/tmp/sbx-layer'\n"
    "a = [sys.executable, '-m', 'pip', 'install', '--only-binary=:all:', '--target', t,\n"
    "     '--index-url', c['index'], '--no-input', '--disable-pip-version-check',\n"
    "     '--no-cache-dir', '--progress-bar', 'off', '--no-warn-script-location',\n"
    "     '--timeout', '30', '--retries', '2']\n"
    "ca = None\n"
    "if c['ca']:\n"
    "    ca = '/tmp/sbx-index-ca.pem'\n"
    "    open(ca, 'w').write(c['ca'])\n"
    "    a += ['--cert', ca]\n"
    "sys.stdout.flush()\n"
    "r = subprocess.run(a + c['specs'])\n"
    "if r.returncode:\n"
    "    try:\n"
    "        q = urllib.request.Request(c['index'].rstrip('/') + '/', method='HEAD')\n"
    "        urllib.request.urlopen(q, timeout=15, context=ssl.create_default_context(cafile=ca))\n"
    "    except urllib.error.HTTPError:\n"
    "        pass\n"
    "    except Exception as e:\n"
    "        print('the package index did not answer:', e, file=sys.stderr)\n"
    "        sys.exit(3)\n"
    "    sys.exit(2)\n"
    "subprocess.run(['tar', '--owner=0', '--group=0', '--numeric-owner', '-C', t, '-cf',\n"
    "                os.path.expanduser('~/" INSTALL_TAR "'), '.'], check=True)\n";

static const char javascript_program[] =
    "const fs = require('node:fs');\n"
    "const c = JSON.parse(Buffer.from('" CONFIG_MARK "', 'base64').toString());\n"
    "const t = '/tmp/sbx-layer';\n"
    "(async () => {\n"
    "  fs.mkdirSync(t, { recursive: true });\n"
    "  fs.writeFileSync(t + '/package.json', '{\"name\": \"sbx-layer\", \"private\": true}');\n"
    "  const a = ['/usr/local/bin/bun', 'add', '--ignore-scripts', '--no-progress',\n"
    "    '--backend=copyfile', '--linker=hoisted', '--registry=' + c.index,\n"
    "    '--cache-dir=/tmp/sbx-bun-cache'];\n"
    "  if (c.ca) {\n"
    "    fs.writeFileSync('/tmp/sbx-index-ca.pem', c.ca);\n"
    "    a.push('--cafile=/tmp/sbx-index-ca.pem');\n"
    "  }\n"
    "  const r = Bun.spawnSync([...a, ...c.specs], { cwd: t, stdout: 'inherit', stderr: "
    "'inherit' });\n"
    "  if (r.exitCode !== 0) {\n"
    "    try {\n"
    "      await fetch(c.index, { method: 'HEAD', signal: AbortSignal.timeout(15000),\n"
    "        tls: c.ca ? { ca: c.ca } : undefined });\n"
    "    } catch (e) {\n"
    "      console.error('the package index did not answer:', String(e));\n"
    "      process.exit(3);\n"
    "    }\n"
    "    process.exit(2);\n"
    "  }\n"
    "  const z = Bun.spawnSync(['tar', '--owner=0', '--group=0', '--numeric-owner', '-C', t,\n"
    "    '-cf', process.env.HOME + '/" INSTALL_TAR "', '.'], { stdout: 'inherit', stderr: "
    "'inherit' });\n"
    "  process.exit(z.exitCode === 0 ? 0 : 1);\n"
    "})();\n";

const char *install_index_url(const char *language)
{
    return strcmp(language, "python") ? cfg.npm_registry_url : cfg.pypi_index_url;
}

/* The host of an https URL: the allowlist reaches names on port 443 only. */
static int url_host(const char *url, char *host, size_t n, sbx_err *err)
{
    if (strncmp(url, "https://", 8))
        return sbx_fail(err, EINVAL, "package index `%.200s` is not an https:// URL", url);
    const char *h = url + 8;
    size_t len = strcspn(h, "/?#");
    if (!len || len >= n || memchr(h, '@', len))
        return sbx_fail(err, EINVAL, "package index `%.200s`: no host name in it", url);
    if (memchr(h, ':', len) && !(len > 4 && !strncmp(h + len - 4, ":443", 4)))
        return sbx_fail(err, EINVAL, "package index `%.200s`: only port 443 is reachable", url);
    memcpy(host, h, len);
    host[len] = '\0';
    host[strcspn(host, ":")] = '\0';
    sbx_err why = {0};
    const char *one[] = {host};
    if (net_check_domains(one, 1, &why) < 0)
        return sbx_fail(err, EINVAL, "package index `%.200s`: %s", url, why.msg);
    return 0;
}

int install_index_hosts(const char *language, char hosts[2][256], size_t *n, sbx_err *err)
{
    if (url_host(install_index_url(language), hosts[0], 256, err) < 0)
        return -1;
    *n = 1;
    /* PyPI serves its files from a second name. */
    if (!strcmp(hosts[0], "pypi.org")) {
        snprintf(hosts[1], 256, "files.pythonhosted.org");
        *n = 2;
    }
    return 0;
}

/* The CA file's PEM text, or NULL without one. A whole CA bundle fits (a host's trust store,
 * where a TLS-inspecting proxy stands between the host and the index): the program carries it,
 * and code may be 1 MiB. */
#define CA_FILE_MAX (512 << 10)
#define HOST_CA_BUNDLE "/etc/ssl/certs/ca-certificates.crt"

/* package_index_ca_file: a path; unset, the host's trust store when it has one (the installers
 * then trust what the host trusts, a TLS-inspecting proxy's CA included); "none": the guest
 * image's own store. */
static const char *ca_path(void)
{
    const char *p = cfg.package_index_ca_file;
    if (!strcmp(p, "none"))
        return NULL;
    if (!*p)
        return access(HOST_CA_BUNDLE, R_OK) == 0 ? HOST_CA_BUNDLE : NULL;
    return p;
}

static int read_ca(char **out, sbx_err *err)
{
    *out = NULL;
    const char *path = ca_path();
    if (!path)
        return 0;
    cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0)
        return sbx_fail(err, errno, "package_index_ca_file `%s`: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode) || st.st_size <= 0 || st.st_size > CA_FILE_MAX)
        return sbx_fail(err, EINVAL, "package_index_ca_file `%s`: not a PEM file of 1 B-%d KiB",
                        path, CA_FILE_MAX >> 10);
    char *buf = calloc(1, (size_t)st.st_size + 1);
    if (!buf)
        return sbx_fail(err, ENOMEM, "out of memory");
    if (read(fd, buf, (size_t)st.st_size) != st.st_size) {
        free(buf);
        return sbx_fail(err, EIO, "read `%s`", path);
    }
    /* PEM is ASCII; a bundle's comments need not be (and JSON wants UTF-8). */
    for (char *c = buf; *c; c++)
        if ((unsigned char)*c >= 0x80)
            *c = '?';
    *out = buf;
    return 0;
}

/* The program for language, its configuration (index, specs, CA) inside as base64 JSON. */
static char *make_program(const char *language, const char *const *specs, size_t n, sbx_err *err)
{
    cleanup_free char *ca = NULL;
    if (read_ca(&ca, err) < 0)
        return NULL;
    json_t *c = json_object(), *list = json_array();
    bool bad = !c || !list;
    for (size_t i = 0; !bad && i < n; i++)
        bad = json_array_append_new(list, json_string(specs[i])) < 0;
    bad = bad || json_object_set_new(c, "specs", list) < 0 ||
          json_object_set_new(c, "index", json_string(install_index_url(language))) < 0 ||
          json_object_set_new(c, "ca", ca ? json_string(ca) : json_null()) < 0;
    cleanup_free char *text = bad ? NULL : json_dumps(c, JSON_COMPACT);
    json_decref(c);
    if (!text) {
        sbx_fail(err, ENOMEM, "out of memory");
        return NULL;
    }
    size_t tl = strlen(text), bl = 4 * ((tl + 2) / 3) + 1;
    cleanup_free unsigned char *b64 = malloc(bl);
    if (!b64) {
        sbx_fail(err, ENOMEM, "out of memory");
        return NULL;
    }
    EVP_EncodeBlock(b64, (const unsigned char *)text, (int)tl);
    const char *tmpl = strcmp(language, "python") ? javascript_program : python_program;
    const char *mark = strstr(tmpl, CONFIG_MARK);
    size_t head = (size_t)(mark - tmpl), b64len = strlen((const char *)b64);
    size_t tail = strlen(mark + strlen(CONFIG_MARK));
    char *prog = malloc(head + b64len + tail + 1);
    if (!prog) {
        sbx_fail(err, ENOMEM, "out of memory");
        return NULL;
    }
    memcpy(prog, tmpl, head);
    memcpy(prog + head, b64, b64len);
    memcpy(prog + head + b64len, mark + strlen(CONFIG_MARK), tail + 1);
    return prog;
}

/* ---- the install VM ----------------------------------------------------------------------- */

typedef enum { I_EXEC, I_READ, I_PACK, I_DONE } install_phase;

struct install {
    job *job;
    install_phase phase;
    char language[16];
    char *program;
    char hosts[2][256];
    char *host_ptrs[2];
    Sbx__Control__NetworkRequest net;
    char staging[PATH_MAX];
    int tar_fd; /* staging/tree.tar, being written */
    int log_fd; /* staging/pack.log: the packer's stderr */
    uint64_t tar_bytes;
    EVP_MD_CTX *sha;
    ZSTD_DCtx *z;
    uint8_t *plain;
    hasher *packer;
    uint64_t t_start, t_read, t_pack;
    char output[OUTPUT_TAIL + 1]; /* the installer's last words */
    install_done done;
    void *owner;
    install_outcome out;
};

static void install_free(install *in)
{
    if (in->job)
        sched_vm_close(in->job);
    if (in->packer)
        hash_cancel(in->packer);
    if (in->tar_fd >= 0)
        close(in->tar_fd);
    if (in->log_fd >= 0)
        close(in->log_fd);
    EVP_MD_CTX_free(in->sha);
    ZSTD_freeDCtx(in->z);
    free(in->plain);
    free(in->program);
    free(in);
}

/* The end, good or bad: the owner hears once; the install is freed. */
static void install_finish(install *in)
{
    in->phase = I_DONE;
    install_done done = in->done;
    void *owner = in->owner;
    install_outcome o = in->out;
    install_free(in);
    done(owner, &o);
}

__attribute__((format(printf, 4, 5))) static void
install_fail(install *in, Sbx__Control__ErrorKind kind, bool transient, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(in->out.why, sizeof in->out.why, fmt, ap);
    va_end(ap);
    in->out.ok = false;
    in->out.kind = kind;
    in->out.transient = transient;
    install_finish(in);
}

/* The last OUTPUT_TAIL bytes of what the installer printed (stderr after stdout), one line. */
static void keep_output(install *in, const Sbx__Control__ExecResult *r)
{
    char all[2 * OUTPUT_TAIL + 2];
    size_t n = 0;
    const ProtobufCBinaryData parts[2] = {r->stdout, r->stderr};
    for (int i = 0; i < 2; i++) {
        size_t take = parts[i].len > OUTPUT_TAIL ? OUTPUT_TAIL : parts[i].len;
        if (!take)
            continue;
        memcpy(all + n, parts[i].data + parts[i].len - take, take);
        n += take;
        if (take && all[n - 1] != '\n')
            all[n++] = '\n';
    }
    size_t from = n > OUTPUT_TAIL ? n - OUTPUT_TAIL : 0;
    size_t m = 0;
    for (size_t i = from; i < n; i++) {
        unsigned char ch = (unsigned char)all[i];
        in->output[m++] = ch == '\n' ? '|' : (ch < 0x20 || ch == 0x7f) ? ' ' : (char)ch;
    }
    while (m && (in->output[m - 1] == '|' || in->output[m - 1] == ' '))
        m--;
    in->output[m] = '\0';
}

static void packed(void *owner, bool ok, const char *sha256, uint64_t size)
{
    install *in = owner;
    in->packer = NULL;
    if (!ok) {
        /* Through the fd opened before the packer owned the directory, never by name. */
        char log[600] = "";
        ssize_t r = pread(in->log_fd, log, sizeof log - 1, 0);
        log[r > 0 ? r : 0] = '\0';
        log[strcspn(log, "\n")] = '\0';
        install_fail(in, SBX__CONTROL__ERROR_KIND__ERROR_PACKAGE_INSTALL, true,
                     "packing the installed packages into an image failed%s%s", log[0] ? ": " : "",
                     log);
        return;
    }
    in->out.ok = true;
    snprintf(in->out.sha256, sizeof in->out.sha256, "%s", sha256);
    in->out.size = size;
    in->out.pack_ms = now_ms() - in->t_pack;
    install_finish(in);
}

/* The tar is complete and checked: pack it, as a VM uid that owns the staging directory. */
static void start_packer(install *in)
{
    in->phase = I_PACK;
    in->t_pack = now_ms();
    sbx_err err = {0};
    int slot = -1;
    char out[PATH_MAX + 16], logp[PATH_MAX + 16];
    snprintf(out, sizeof out, "%s/" LAYER_FILE, in->staging);
    snprintf(logp, sizeof logp, "%s/pack.log", in->staging);
    in->log_fd = open(logp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (in->log_fd < 0) {
        install_fail(in, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "create `%s`: %s", logp,
                     strerror(errno));
        return;
    }
    if (getuid() == 0) {
        if ((slot = spawn_uid_alloc()) < 0) {
            install_fail(in, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true,
                         "no free uid for the packer");
            return;
        }
        uid_t u = cfg.vm_uid_base + (uid_t)slot;
        if (chown(in->staging, u, u) < 0) {
            spawn_uid_free(slot);
            install_fail(in, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "chown `%s`: %s",
                         in->staging, strerror(errno));
            return;
        }
    }
    lseek(in->tar_fd, 0, SEEK_SET);
    in->packer = packer_start(out, in->tar_fd, in->log_fd, slot, packed, in, &err);
    close(in->tar_fd);
    in->tar_fd = -1;
    if (!in->packer) {
        if (slot >= 0)
            spawn_uid_free(slot);
        install_fail(in, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "start the packer: %s",
                     err.msg);
    }
}

static void ask_for_tree(install *in)
{
    in->phase = I_READ;
    in->t_read = now_ms();
    Sbx__Control__FileRead fr = SBX__CONTROL__FILE_READ__INIT;
    fr.path = INSTALL_TAR;
    Sbx__Worker__ToWorker m = SBX__WORKER__TO_WORKER__INIT;
    m.body_case = SBX__WORKER__TO_WORKER__BODY_FILE_READ;
    m.file_read = &fr;
    m.read_max_bytes = INSTALL_TREE_MAX;
    if (sched_vm_send(in->job, &m) < 0) {
        install_fail(in, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "out of memory");
        return;
    }
    sched_vm_deadline(in->job, INSTALL_READ_S);
}

static void got_result(install *in, const Sbx__Control__ExecResult *r)
{
    keep_output(in, r);
    in->out.install_ms = now_ms() - in->t_start;
    if (r->exit_code == 0 && !r->timed_out) {
        ask_for_tree(in);
        return;
    }
    if (r->timed_out)
        install_fail(in, SBX__CONTROL__ERROR_KIND__ERROR_PACKAGE_INSTALL, true,
                     "the install ran past package_install_timeout (%u s): %s",
                     cfg.package_install_timeout, in->output);
    else if (r->exit_code == 2)
        install_fail(in, SBX__CONTROL__ERROR_KIND__ERROR_PACKAGE_INSTALL, false,
                     "the installer refused the package set: %s", in->output);
    else if (r->exit_code == 3)
        install_fail(in, SBX__CONTROL__ERROR_KIND__ERROR_PACKAGE_INSTALL, true,
                     "the package index %s is unreachable from the install VM: %s",
                     install_index_url(in->language), in->output);
    else
        install_fail(in, SBX__CONTROL__ERROR_KIND__ERROR_PACKAGE_INSTALL, true,
                     "the install failed (exit %d): %s", r->exit_code, in->output);
}

static void got_chunk(install *in, const Sbx__Files__FileChunk *k)
{
    if (!in->z && !(in->z = ZSTD_createDCtx()))
        goto oom;
    if (!in->plain && !(in->plain = malloc(SBX_FILE_CHUNK)))
        goto oom;
    size_t n = ZSTD_decompressDCtx(in->z, in->plain, SBX_FILE_CHUNK, k->zdata.data, k->zdata.len);
    if (ZSTD_isError(n)) {
        install_fail(in, SBX__CONTROL__ERROR_KIND__ERROR_COMMUNICATION, true,
                     "the package tree from the install VM: a chunk does not decompress");
        return;
    }
    if (in->tar_bytes + n > INSTALL_TREE_MAX) {
        install_fail(in, SBX__CONTROL__ERROR_KIND__ERROR_PACKAGE_INSTALL, false,
                     "the installed packages take over %llu MiB",
                     (unsigned long long)INSTALL_TREE_MAX >> 20);
        return;
    }
    /* A regular file on local disk: these writes do not wait on anyone. */
    if (sbx_write_all(in->tar_fd, in->plain, n) < 0) {
        install_fail(in, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "write `%s/%s`: %s",
                     in->staging, TREE_FILE, strerror(errno));
        return;
    }
    EVP_DigestUpdate(in->sha, in->plain, n);
    in->tar_bytes += n;
    return;
oom:
    install_fail(in, SBX__CONTROL__ERROR_KIND__ERROR_INTERNAL, true, "out of memory");
}

static void got_done(install *in, const Sbx__Files__FileDone *d)
{
    unsigned char md[32];
    EVP_DigestFinal_ex(in->sha, md, NULL);
    if (d->size != in->tar_bytes || d->sha256.len != 32 || memcmp(d->sha256.data, md, 32)) {
        install_fail(in, SBX__CONTROL__ERROR_KIND__ERROR_COMMUNICATION, true,
                     "the package tree from the install VM does not match its checksum");
        return;
    }
    /* The VM's work is done: its slot goes back now, not after the packing. */
    sched_vm_close(in->job);
    in->job = NULL;
    slog("package install: tree of %llu KiB read in %llu ms",
         (unsigned long long)in->tar_bytes >> 10, (unsigned long long)(now_ms() - in->t_read));
    start_packer(in);
}

static int install_started(void *owner, job *j)
{
    install *in = owner;
    Sbx__Worker__ExecRequest ex = SBX__WORKER__EXEC_REQUEST__INIT;
    ex.language = in->language;
    ex.code.data = (uint8_t *)in->program;
    ex.code.len = strlen(in->program);
    ex.timeout_ms = cfg.package_install_timeout * 1000u;
    Sbx__Worker__ToWorker m = SBX__WORKER__TO_WORKER__INIT;
    m.body_case = SBX__WORKER__TO_WORKER__BODY_EXEC;
    m.exec = &ex;
    return sched_vm_send(j, &m);
}

static void install_booted(void *owner, const Sbx__Worker__Booted *b)
{
    install *in = owner;
    in->t_start = now_ms();
    sched_vm_deadline(in->job, cfg.package_install_timeout);
}

static void install_frame(void *owner, Sbx__Worker__FromWorker *m)
{
    install *in = owner;
    switch (m->body_case) {
    case SBX__WORKER__FROM_WORKER__BODY_RESULT:
        if (in->phase == I_EXEC)
            got_result(in, m->result);
        break;
    case SBX__WORKER__FROM_WORKER__BODY_FILE_CHUNK:
        if (in->phase == I_READ)
            got_chunk(in, m->file_chunk);
        break;
    case SBX__WORKER__FROM_WORKER__BODY_FILE_DONE:
        if (in->phase == I_READ)
            got_done(in, m->file_done);
        break;
    case SBX__WORKER__FROM_WORKER__BODY_ERROR:
        install_fail(in, SBX__CONTROL__ERROR_KIND__ERROR_PACKAGE_INSTALL,
                     m->error->transient || in->phase != I_EXEC, "the install VM: %s",
                     m->error->message ? m->error->message : "failed");
        break;
    default:
        break;
    }
}

static void install_gone(void *owner, Sbx__Control__ErrorKind kind, bool transient, const char *why)
{
    install *in = owner;
    in->job = NULL;
    install_fail(in, SBX__CONTROL__ERROR_KIND__ERROR_PACKAGE_INSTALL, true,
                 "the install VM ended before the packages were read out: %s", why);
}

static const vm_owner_ops install_ops = {
    .booted = install_booted,
    .frame = install_frame,
    .gone = install_gone,
    .started = install_started,
};

install *install_start(const char *language, const char *const *specs, size_t n,
                       const char *staging, install_done done, void *owner, sbx_err *err)
{
    install *in = calloc(1, sizeof *in);
    if (!in)
        return sbx_fail(err, ENOMEM, "out of memory"), NULL;
    in->tar_fd = in->log_fd = -1;
    snprintf(in->language, sizeof in->language, "%s", language);
    snprintf(in->staging, sizeof in->staging, "%s", staging);
    in->done = done;
    in->owner = owner;
    size_t nh = 0;
    if (install_index_hosts(language, in->hosts, &nh, err) < 0 ||
        !(in->program = make_program(language, specs, n, err))) {
        install_free(in);
        return NULL;
    }
    char p[PATH_MAX + 16];
    snprintf(p, sizeof p, "%s/" TREE_FILE, staging);
    in->tar_fd = open(p, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (in->tar_fd < 0 || !(in->sha = EVP_MD_CTX_new()) ||
        EVP_DigestInit_ex(in->sha, EVP_sha256(), NULL) != 1) {
        sbx_fail(err, errno, "create `%s`: %s", p, strerror(errno));
        install_free(in);
        return NULL;
    }
    sbx__control__network_request__init(&in->net);
    for (size_t i = 0; i < nh; i++)
        in->host_ptrs[i] = in->hosts[i];
    in->net.allow_network = true;
    in->net.allowed_domains = in->host_ptrs;
    in->net.n_allowed_domains = nh;
    in->job = sched_open_vm(language, INSTALL_MEMORY_MB, &install_ops, in);
    if (!in->job) {
        sbx_fail(err, errno,
                 errno == EAGAIN ? "too many requests wait for a VM slot" : "out of memory");
        install_free(in);
        return NULL;
    }
    sched_vm_set_network(in->job, &in->net);
    return in;
}

void install_cancel(install *in)
{
    install_free(in);
}
