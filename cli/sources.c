/* The code an sbx command runs: each source the arguments name (inline, a file, stdin) with its
 * language (the option, else the file's extension, else python), loaded with the contract's size
 * cap, and labelled for messages. The only part of argument handling that touches files. */
#include "args.h"

#include "common.h"
#include "libsbx.h"
#include "sbx_limits.h"

#include <limits.h>
#include <strings.h>
#include <sys/stat.h>

const char *args_language_for_path(const char *path)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *dot = strrchr(base, '.');
    if (!dot || dot == base)
        return NULL; /* no extension, or a dot file such as `.sh` */
    if (!strcasecmp(dot, ".py"))
        return "python";
    if (!strcasecmp(dot, ".js") || !strcasecmp(dot, ".mjs"))
        return "javascript";
    if (!strcasecmp(dot, ".ts") || !strcasecmp(dot, ".mts"))
        return "typescript";
    if (!strcasecmp(dot, ".sh"))
        return "raw";
    return NULL;
}

bool args_looks_like_path(const char *s)
{
    if (!args_language_for_path(s))
        return false;
    for (const char *p = s; *p; p++)
        if (strchr(" \t\n\r\v\f\"'`()", *p))
            return false;
    return true;
}

int args_source_resolve(const args_source *in, const char *language_opt, run_source *out,
                        sbx_err *err)
{
    memset(out, 0, sizeof *out);
    out->arg = in->text;
    const char *lang = language_opt ? limits_language_name(language_opt) : NULL;
    if (language_opt && !lang)
        return sbx_fail(err, 0, "unknown language `%.64s` (" SBX_LANGUAGES ")", language_opt);
    if (in->inline_only) {
        out->kind = SOURCE_INLINE;
    } else if (!strcmp(in->text, "-")) {
        out->kind = SOURCE_STDIN;
    } else {
        /* Any existing non-directory counts as a file, so `sbx run <(gen)` reads the pipe. */
        struct stat st;
        bool exists =
            strlen(in->text) < PATH_MAX && !strchr(in->text, '\n') && stat(in->text, &st) == 0;
        if (exists && !S_ISDIR(st.st_mode)) {
            out->kind = SOURCE_FILE;
            if (!lang)
                lang = args_language_for_path(in->text);
        } else if (args_looks_like_path(in->text)) {
            if (exists)
                return sbx_fail(err, 0, "`%.200s` is a directory", in->text);
            return sbx_fail(err, 0, "file not found: %.200s", in->text);
        } else {
            out->kind = SOURCE_INLINE;
        }
    }
    out->language = lang ? lang : "python";
    return 0;
}

/* Up to one byte over the limit, so that an oversized input is refused without being read whole. */
static int read_capped(FILE *fp, char **out, size_t *len)
{
    size_t cap = 65536, n = 0, max = SBX_MAX_CODE + 1;
    cleanup_free char *buf = malloc(cap + 1);
    if (!buf)
        return -1;
    for (;;) {
        if (n == cap) {
            cap = cap * 2 > max ? max : cap * 2;
            char *nb = realloc(buf, cap + 1);
            if (!nb)
                return -1;
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n, fp);
        n += got;
        if (n >= max || got == 0)
            break;
    }
    if (ferror(fp))
        return -1;
    buf[n] = '\0';
    *out = steal_ptr(&buf);
    *len = n;
    return 0;
}

int args_source_load(run_source *s, FILE *stdin_fp, sbx_err *err)
{
    sbx_err why_err = {0};
    const char *name = s->arg;
    if (s->kind == SOURCE_INLINE) {
        name = "inline code";
        s->code_len = strlen(s->arg);
        s->code = strdup(s->arg);
        if (!s->code)
            return sbx_fail(err, 0, "out of memory");
    } else if (s->kind == SOURCE_STDIN) {
        name = "standard input";
        if (read_capped(stdin_fp, &s->code, &s->code_len) < 0)
            return sbx_fail(err, errno, "read standard input: %s", strerror(errno));
    } else {
        cleanup_fclose FILE *fp = fopen(s->arg, "rbe");
        if (!fp)
            return sbx_fail(err, errno, "open `%.200s`: %s", s->arg, strerror(errno));
        if (read_capped(fp, &s->code, &s->code_len) < 0)
            return sbx_fail(err, errno, "read `%.200s`: %s", s->arg, strerror(errno));
    }
    if (limits_check_code((const uint8_t *)s->code, s->code_len, &why_err) < 0) {
        if (s->code_len > SBX_MAX_CODE) /* we stopped reading at the limit */
            return sbx_fail(err, 0, "%.200s: code is over the limit of %u bytes (1 MiB)", name,
                            SBX_MAX_CODE);
        return sbx_fail(err, 0, "%.200s: %s", name, why_err.msg);
    }
    return 0;
}

void args_source_label(const run_source *s, char *out, size_t n)
{
    if (n == 0)
        return;
    if (s->kind == SOURCE_STDIN) {
        snprintf(out, n, "<stdin>");
        return;
    }
    if (s->kind == SOURCE_FILE) {
        snprintf(out, n, "%s", s->arg);
        return;
    }
    /* Inline code: its first non-blank line, cut at a character boundary. */
    const size_t max = 40;
    const char *p = s->arg;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    size_t len = strcspn(p, "\r\n");
    bool cut = p[len] != '\0' && p[len + strspn(p + len, "\r\n \t")] != '\0';
    if (len > max) {
        len = max;
        while (len > 0 && ((unsigned char)p[len] & 0xc0) == 0x80)
            len--;
        cut = true;
    }
    const char *ell = cut ? "\xe2\x80\xa6" : "";
    if (len + strlen(ell) + 1 > n)
        len = n > strlen(ell) + 1 ? n - strlen(ell) - 1 : 0;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)p[i];
        out[o++] = (ch < 0x20 || ch == 0x7f) ? ' ' : (char)ch;
    }
    out[o] = '\0';
    if (n - o > strlen(ell))
        strcat(out, ell);
}

void args_source_free(run_source *s)
{
    free(s->code);
    s->code = NULL;
    s->code_len = 0;
}
