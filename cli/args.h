/* sbx's command line: parsing argv into a request (pure: no I/O, so every option is unit-tested)
 * and turning the run's SOURCE arguments into code (stat, read). */
#ifndef SBX_ARGS_H
#define SBX_ARGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common.h"
#include "netpolicy.h"

#define ARGS_CONCURRENCY_DEFAULT 10u
#define ARGS_CONCURRENCY_MIN 1u
#define ARGS_CONCURRENCY_MAX 100u

typedef enum {
    ARGS_CMD_NONE = 0, /* nothing parsed yet (only seen with an error) */
    ARGS_CMD_HELP,     /* sbx --help */
    ARGS_CMD_VERSION,  /* sbx --version */
    ARGS_CMD_RUN,      /* sbx run ... */
    ARGS_CMD_STATUS,   /* sbx status ... */
    ARGS_CMD_SESSION,  /* sbx session SUBCOMMAND ... */
} args_cmd;

typedef enum {
    ARGS_SESSION_NONE = 0, /* `sbx session --help`, or not recognised yet */
    ARGS_SESSION_NEW,      /* new [-l] [-m] [-t] [-e]... [--idle-timeout] */
    ARGS_SESSION_EXEC,     /* exec ID SOURCE */
    ARGS_SESSION_LS,       /* ls */
    ARGS_SESSION_CLOSE,    /* close ID */
    ARGS_SESSION_UPLOAD,   /* upload ID LOCAL GUEST: uploads[0] */
    ARGS_SESSION_DOWNLOAD, /* download ID GUEST [LOCAL]: downloads[0] */
    ARGS_SESSION_FILES,    /* files ID [PATH] */
} args_session_cmd;

/* One file to move between here and a session. Both paths are owned copies. For a download
 * without a local path, local is the guest path's last component (saved in the current
 * directory). */
typedef struct {
    char *local;
    char *guest;
} args_transfer;

/* A code argument as given, in command-line order. */
typedef struct {
    const char *text; /* points into argv */
    bool inline_only; /* from -c/--code: code even if it names a file */
} args_source;

/* One -e KEY=VALUE; a later one with the same key replaces the earlier value. */
typedef struct {
    char *key;         /* owned */
    const char *value; /* points into argv */
} args_env;

typedef struct {
    args_cmd cmd;
    bool help;               /* `--help` after the command: print that command's help */
    const char *socket_path; /* --socket; NULL: the default */
    bool json;               /* --json */
    /* run */
    bool quiet;           /* -q/--quiet */
    const char *language; /* -l; NULL: from the file extension, else python */
    uint32_t timeout_s;   /* -t; 0: the daemon's default */
    uint32_t memory_mb;   /* -m; 0: the daemon's default */
    unsigned concurrency; /* -j; ARGS_CONCURRENCY_DEFAULT unless given */
    args_source *sources;
    size_t n_sources;
    args_env *env;
    size_t n_env;
    /* run, session new: the network (checked here with common/netpolicy.c) */
    bool network;         /* --network */
    const char **domains; /* --allow-domain, in the order given; point into argv */
    size_t n_domains;
    net_expose *expose; /* --expose, parsed */
    size_t n_expose;
    /* run, session new: packages, as given (their syntax and the lists are checked once the
     * language is known, in sbx_run.c and sbx_session.c) */
    const char **packages; /* -p/--package, in the order given; point into argv */
    size_t n_packages;
    bool no_validation; /* --no-validation: skip the top-10k lists */
    /* run --upload/--download (in the order given), session upload/download (one) */
    args_transfer *uploads;
    size_t n_uploads;
    args_transfer *downloads;
    size_t n_downloads;
    /* session */
    args_session_cmd session_cmd;
    const char *session_id;  /* points into argv */
    uint32_t idle_timeout_s; /* --idle-timeout; 0: the daemon's default */
    const char *guest_dir;   /* session files [PATH]; NULL: the sandbox home */
} args;

/* Parse argv (argv[0] is the program). Returns 0, or -1 with a message (no "sbx: " prefix) in
 * err. a->cmd (and a->session_cmd) is set as far as it was recognised even on error, so the
 * caller can point at the right --help. Release with args_free in both cases. */
int args_parse(int argc, char *const argv[], args *a, sbx_err *err);
void args_free(args *a);
/* The command's name for messages: "sbx run", "sbx session exec", ... or "sbx". */
const char *args_command_name(const args *a);

/* ---- sources ---- */

typedef enum {
    SOURCE_INLINE, /* the argument is the code */
    SOURCE_FILE,   /* the argument names a file */
    SOURCE_STDIN,  /* `-` */
} source_kind;

/* ---- sources.c: the code the arguments name ---- */

/* A source resolved to what it is, then loaded. */
typedef struct {
    source_kind kind;
    const char *arg;      /* as given */
    const char *language; /* static string: one of SBX_LANGUAGES */
    char *code;           /* owned, after args_source_load; NUL-terminated */
    size_t code_len;
} run_source;

/* Language for a file name by its extension (.py, .js/.mjs, .sh), or NULL. */
const char *args_language_for_path(const char *path);
/* Whether an argument that is not an existing file was meant as one: it ends in a known
 * extension and holds nothing a file name on a command line rarely holds (space, quote, paren). */
bool args_looks_like_path(const char *s);
/* Decide what a source is (stats it) and its language (language_opt, else by extension, else
 * python). -1 with a message for a path-like argument that does not exist or is a directory. */
int args_source_resolve(const args_source *in, const char *language_opt, run_source *out,
                        sbx_err *err);
/* Read the code of a resolved source (stdin_fp for `-`) and check it against the code limits.
 * -1 with a message naming the source. */
int args_source_load(run_source *s, FILE *stdin_fp, sbx_err *err);
/* A short name for headers: the path, "<stdin>", or the first line of inline code, cut. */
void args_source_label(const run_source *s, char *out, size_t n);
void args_source_free(run_source *s);

#endif
