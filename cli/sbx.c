/* sbx: the command line. Parses (args.c), prints the help, and hands each command to its room
 * (sbx_run.c, sbx_session.c, sbx_status.c); everything else goes through libsbx, so the CLI can
 * do nothing another libsbx program could not. */
#include "sbx.h"

#include "packages.h"

static const char main_help[] =
    "Usage: sbx [--socket PATH] COMMAND [OPTIONS]\n"
    "\n"
    "Run untrusted Python, JavaScript or shell code in throw-away QEMU microVMs.\n"
    "\n"
    "Commands:\n"
    "  run        run code, each source in a fresh VM (sbx run --help)\n"
    "  session    keep a VM across several execs, move files in and out\n"
    "             (sbx session --help)\n"
    "  status     show what the daemon is doing (sbx status --help)\n"
    "  prefetch   install a prebuilt asset bundle: --from URL|PATH [--version V] [--arch A]\n"
    "             [-q] (checked file by file; EXEC_SANDBOX_OFFLINE=1 refuses)\n"
    "  bundle     pack this host's assets into a bundle: --out DIR [--images-dir DIR]\n"
    "             [--version V] [--arch A] (make release)\n"
    "\n"
    "Options:\n"
    "      --socket PATH  the daemon's control socket; default $EXEC_SANDBOX_SOCKET, else\n"
    "                     $XDG_RUNTIME_DIR/exec-sandbox/sbxd.sock, else\n"
    "                     /tmp/exec-sandbox-UID/sbxd.sock\n"
    "  -V, --version      print the version and exit\n"
    "  -h, --help         print this help and exit\n"
    "\n"
    "If no daemon listens on the socket, `sbx run` and `sbx session new` start a private one\n"
    "for this user (sbxd from $EXEC_SANDBOX_SBXD, beside sbx, or in $PATH); it exits after\n"
    "5 idle minutes. The per-user socket is used only when its directory is this user's alone\n"
    "and the daemon on it runs as this user or root; a socket named with --socket or\n"
    "$EXEC_SANDBOX_SOCKET may be any user's daemon (sbx status shows its uid).\n";

static const char run_help[] =
    "Usage: sbx run [OPTIONS] [SOURCE...]\n"
    "\n"
    "Run code in a fresh microVM that is thrown away afterwards.\n"
    "\n"
    "Each SOURCE is `-` (read standard input), the path of an existing file, or the code\n"
    "itself. A file's extension picks its language (.py python, .js/.mjs javascript, .ts/.mts\n"
    "typescript, .sh raw).\n"
    "An argument that looks like a file name (ends in one of those extensions, no spaces,\n"
    "quotes or parentheses) but names no file is an error, not code.\n"
    "\n"
    "Options:\n"
    "  -c, --code CODE        code to run, never taken for a file name (repeatable)\n"
    "  -l, --language LANG    python, javascript, typescript (Bun) or raw (a shell);\n"
    "                         default: by file extension, else python\n"
    "  -t, --timeout SECONDS  wall-clock limit, 1-300 (daemon default 30)\n"
    "  -m, --memory MB        guest memory, 128-2048 (daemon default 256)\n"
    "  -e, --env KEY=VALUE    environment variable for the code (repeatable, up to 100)\n"
    "  -j, --concurrency N    VMs at once when there are several sources, 1-100 (default 10)\n"
    "      --network          let the code reach the network: any public address, or with\n"
    "                         --allow-domain only TLS (port 443) to those domains\n"
    "      --allow-domain DOMAIN\n"
    "                         a domain the code may reach, its subdomains included\n"
    "                         (repeatable, up to 100; needs --network)\n"
    "      --expose INTERNAL[:EXTERNAL][/tcp|/udp]\n"
    "                         make a guest port reachable on 127.0.0.1:EXTERNAL (1024-65535;\n"
    "                         0 or none: the OS picks one); the address is printed on stderr\n"
    "                         before the code's output (repeatable, up to 10)\n"
    "  -p, --package SPEC     a package to install before the code runs: python\n"
    "                         NAME==VERSION, javascript NAME@VERSION or @SCOPE/NAME@VERSION\n"
    "                         (repeatable, up to 50); NAME alone is unpinned (a warning:\n"
    "                         never cached). Names must be among the 10,000 most downloaded\n"
    "                         of their index (PyPI, npm)\n"
    "      --no-validation    skip that list (the syntax is still checked)\n"
    "      --upload LOCAL:GUEST\n"
    "                         copy a local file into the VM before the code runs; GUEST is\n"
    "                         relative to the sandbox home (repeatable)\n"
    "      --download GUEST[:LOCAL]\n"
    "                         copy a file out of the VM after the code ran; LOCAL defaults\n"
    "                         to GUEST's name in the current directory, and may be an\n"
    "                         existing directory (repeatable)\n"
    "      --json             print results as JSON instead of output (no live output)\n"
    "  -q, --quiet            no progress or summary lines\n"
    "      --socket PATH      the daemon's control socket\n"
    "  -h, --help             print this help and exit\n"
    "\n"
    "Packages are refused by this version of sbxd once checked (VmConfigError: not\n"
    "available yet); a name off the list is PackageNotAllowedError before any VM starts.\n"
    "\n"
    "Without --network or --expose the VM has no network interface at all. Private and\n"
    "loopback addresses stay unreachable unless the daemon's operator allows them;\n"
    "what was refused is counted in the summary and listed under `network` in --json.\n"
    "\n"
    "--upload and --download take one source; the run then goes through a session that\n"
    "is closed afterwards, also on errors and on ^C. GUEST may not contain `:` there (use\n"
    "`sbx session upload/download`). Files are at most 50 MiB. Downloads are tried even\n"
    "when the code failed; a file is saved only once it arrived whole (size and SHA-256\n"
    "checked), never in part.\n"
    "\n"
    "One source: its output is shown as it is produced. Several sources: they run\n"
    "concurrently, each in its own VM, and each one's output is printed afterwards, in the\n"
    "order given, under a header line (stderr lines go to stderr). With --json: one JSON\n"
    "object per run (an array for several sources) with the output and all result fields.\n"
    "\n"
    "Exit status:\n"
    "  one source      the code's own exit status; 124 if it timed out\n"
    "  several         0 if every one exited 0, else 1\n"
    "  2               bad usage, or a request the sandbox refuses (VmConfigError,\n"
    "                  PackageNotAllowedError)\n"
    "  125             any other sandbox error (no daemon, VM failed to start, ...), or a\n"
    "                  file that could not be uploaded or downloaded; a failed download\n"
    "                  leaves the code's own exit status (or 124) when that is not 0\n";

static const char session_help[] =
    "Usage: sbx session COMMAND [OPTIONS] [ARGS]\n"
    "\n"
    "A session keeps one microVM, and the interpreter state in it (variables, imports,\n"
    "functions, files, the shell's directory), across several execs. The daemon holds it,\n"
    "not this command: it stays until `sbx session close` or until it has been idle for\n"
    "its idle timeout. Execs on one session run one at a time.\n"
    "\n"
    "Commands:\n"
    "  new [-l LANG] [-m MB] [-t SECONDS] [-e KEY=VALUE]... [--idle-timeout SECONDS]\n"
    "      [--network] [--allow-domain DOMAIN]... [--expose SPEC]...\n"
    "      [-p SPEC]... [--no-validation]\n"
    "        start a session and print its id alone on stdout: ID=$(sbx session new)\n"
    "        network and package options as for `sbx run`; exposed ports are printed\n"
    "        on stderr\n"
    "        -t is the default time limit of each exec (1-300, daemon default 30);\n"
    "        --idle-timeout 10-3600 s (daemon default 300); --json prints the session\n"
    "  exec ID CODE|FILE|- [-c CODE] [-t SECONDS] [--json] [-q]\n"
    "        run code in the session; output, --json and exit status as for `sbx run`\n"
    "        with one source, and the JSON object also has exec_count and\n"
    "        interpreter_reset. If the interpreter had to be restarted (it died, or was\n"
    "        killed at the time limit) a note says so on stderr: state was lost.\n"
    "  ls [--json]\n"
    "        list the daemon's sessions\n"
    "  close ID\n"
    "        close the session and destroy its VM\n"
    "  upload ID LOCAL GUEST\n"
    "        copy a local file to GUEST, a path relative to the sandbox home\n"
    "  download ID GUEST [LOCAL]\n"
    "        copy GUEST out to LOCAL (default: GUEST's name in the current directory;\n"
    "        an existing directory keeps that name); saved only once it arrived whole\n"
    "  files ID [PATH] [--json]\n"
    "        list a directory of the sandbox (default: the sandbox home)\n"
    "\n"
    "Every command takes --socket PATH and -h/--help. Files are at most 50 MiB; guest\n"
    "paths are relative, at most 255 bytes, without `..`.\n"
    "\n"
    "Exit status: 0 on success (exec: the code's own exit status, 124 if it timed out);\n"
    "2 for bad usage or a refused request (VmConfigError, PackageNotAllowedError); 125\n"
    "for other errors, a session that is gone (SessionClosedError) among them.\n";

static const char status_help[] =
    "Usage: sbx status [--json] [--socket PATH]\n"
    "\n"
    "Show the daemon's version, accelerator, VMs, sessions and counters. Does not start a\n"
    "daemon.\n"
    "\n"
    "Options:\n"
    "      --json         print one JSON object\n"
    "      --socket PATH  the daemon's control socket\n"
    "  -h, --help         print this help and exit\n"
    "\n"
    "Exit status: 0 when a daemon answered, 3 when none is listening, 125 on other errors.\n";

int connect_client(const args *a, bool show_progress, sbx_client **out, sbx_error *err)
{
    sbx_connect_opts o = {
        .socket_path = a->socket_path,
        .flags = SBX_CONNECT_AUTOSTART,
        .client_name = "sbx/" SBX_VERSION,
        .on_progress = show_progress ? progress_cb : NULL,
    };
    return sbx_connect_ex(&o, out, err);
}

sbx_network network_opts(const args *a, sbx_port_expose ports[SBX_EXPOSE_MAX])
{
    size_t n = a->n_expose < SBX_EXPOSE_MAX ? a->n_expose : SBX_EXPOSE_MAX;
    for (size_t i = 0; i < n; i++)
        ports[i] = (sbx_port_expose){
            .internal = a->expose[i].internal,
            .external = a->expose[i].external,
            .udp = a->expose[i].udp,
        };
    return (sbx_network){
        .allow_network = a->network,
        .allowed_domains = a->domains,
        .n_allowed_domains = a->n_domains,
        .expose = ports,
        .n_expose = n,
    };
}

int packages_check(const args *a, const char *language, bool warn)
{
    sbx_error e = {0};
    if (!a->n_packages)
        return -1;
    if (sbx_check_packages(language, a->packages, a->n_packages, a->no_validation, &e) < 0) {
        if (e.kind == SBX_ERR_PACKAGE_NOT_ALLOWED)
            print_error(&e);
        else
            fprintf(stderr, "sbx: --package: %s (see %s --help)\n", e.message,
                    args_command_name(a));
        return EXIT_USAGE;
    }
    pkg_lang lang;
    pkg_spec s;
    if (!warn || a->quiet || pkg_lang_of(language, &lang, NULL) < 0)
        return -1;
    for (size_t i = 0; i < a->n_packages; i++)
        if (pkg_parse(lang, a->packages[i], &s, NULL) == 0 && !s.version[0])
            fprintf(stderr,
                    "sbx: warning: package `%s` is not pinned (%s%sVERSION): it is installed "
                    "afresh for every run, never cached\n",
                    s.name, s.name, lang == PKG_PYTHON ? "==" : "@");
    return -1;
}

static int cmd_session(const args *a)
{
    switch (a->session_cmd) {
    case ARGS_SESSION_NEW:
        return cmd_session_new(a);
    case ARGS_SESSION_EXEC:
        return cmd_session_exec(a);
    case ARGS_SESSION_LS:
        return cmd_session_ls(a);
    case ARGS_SESSION_CLOSE:
        return cmd_session_close(a);
    case ARGS_SESSION_UPLOAD:
        return cmd_session_upload(a);
    case ARGS_SESSION_DOWNLOAD:
        return cmd_session_download(a);
    case ARGS_SESSION_FILES:
        return cmd_session_files(a);
    case ARGS_SESSION_NONE:
        break;
    }
    fputs(session_help, stdout);
    return 0;
}

int main(int argc, char **argv)
{
    /* The asset commands (bundle.c) parse their own few options. */
    if (argc > 1 && !strcmp(argv[1], "bundle"))
        return cmd_bundle(argc - 1, argv + 1);
    if (argc > 1 && !strcmp(argv[1], "prefetch"))
        return cmd_prefetch(argc - 1, argv + 1);
    args a;
    sbx_err why = {0};
    if (args_parse(argc, argv, &a, &why) < 0) {
        fprintf(stderr, "sbx: %s (see %s --help)\n", why.msg, args_command_name(&a));
        args_free(&a);
        return EXIT_USAGE;
    }
    int code = 0;
    switch (a.cmd) {
    case ARGS_CMD_HELP:
    case ARGS_CMD_NONE:
        fputs(main_help, stdout);
        break;
    case ARGS_CMD_VERSION:
        printf("sbx %s (control protocol %d)\n", SBX_VERSION, SBX_PROTOCOL_VERSION);
        break;
    case ARGS_CMD_RUN:
        if (a.help)
            fputs(run_help, stdout);
        else
            code = cmd_run(&a);
        break;
    case ARGS_CMD_STATUS:
        if (a.help)
            fputs(status_help, stdout);
        else
            code = cmd_status(&a);
        break;
    case ARGS_CMD_SESSION:
        if (a.help)
            fputs(session_help, stdout);
        else
            code = cmd_session(&a);
        break;
    }
    args_free(&a);
    return code;
}
