# Persistent Python REPL of sbx-agent (keep_state execs). The agent starts it as uid 1000 with
#   argv: python3 repl.py CODE_FILE ENV_FILE
#   fd 100: commands, one line per exec: "SEQ HAS_ENV\n"
#   fd 101: results, one line per exec: "SEQ EXIT_CODE\n", written after stdout/stderr are flushed
# and runs each exec's code (CODE_FILE, rewritten by the agent before each command) in one
# namespace that lives as long as this process. ENV_FILE holds KEY=VALUE\0 entries to export
# first. An exception is printed and reported as exit code 1 with the state kept; sys.exit()
# and os._exit() end the process, and the agent reports the exit code and restarts the REPL.
import os
import sys

CMD_FD, RESULT_FD = 100, 101


def main():
    code_path, env_path = sys.argv[1], sys.argv[2]
    # Processes the code starts must not inherit the control pipes.
    os.set_inheritable(CMD_FD, False)
    os.set_inheritable(RESULT_FD, False)
    import builtins
    import types

    # The user's namespace is a real __main__ module, so pickle and friends find its classes.
    main_mod = types.ModuleType("__main__")
    main_mod.__builtins__ = builtins
    sys.modules["__main__"] = main_mod
    ns = main_mod.__dict__
    # Like the interactive interpreter: no script arguments, the working directory importable.
    sys.argv = [""]
    sys.path[0] = ""
    my_pid = os.getpid()
    sources = {}  # exec file name -> source, for tracebacks (linecache is loaded lazily)
    pending = b""
    n = 0
    while True:
        while b"\n" not in pending:
            chunk = os.read(CMD_FD, 4096)
            if not chunk:
                os._exit(0)  # the agent closed the channel
            pending += chunk
        line, pending = pending.split(b"\n", 1)
        seq, has_env = line.split()
        n += 1
        rc = 0
        try:
            if has_env == b"1":
                with open(env_path, "rb") as f:
                    for kv in f.read().split(b"\0"):
                        k, eq, v = kv.partition(b"=")
                        if eq:
                            os.environb[k] = v
            with open(code_path, "rb") as f:
                src = f.read()
            if src:
                name = "<exec-%d>" % n
                sources[name] = src
                code = compile(src, name, "exec")
                exec(code, ns)
            else:
                n -= 1  # the agent's warm-up (an empty command) takes no exec number
        except SystemExit:
            raise
        except BaseException as e:
            rc = 1
            report(e, sources)
        if os.getpid() != my_pid:
            # A fork of the code came back here: it must not serve commands.
            flush()
            os._exit(rc)
        flush()
        os.write(RESULT_FD, b"%s %d\n" % (seq, rc))


def flush():
    for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            s.flush()
        except BaseException:
            pass


def report(e, sources):
    """Print the traceback as the interpreter would, without this wrapper's frame."""
    try:
        import linecache
        import traceback

        for name, src in sources.items():
            if name not in linecache.cache:
                text = src.decode("utf-8", "replace")
                linecache.cache[name] = (len(text), None, text.splitlines(True), name)
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next
        traceback.print_exception(type(e), e, tb)
    except BaseException:
        try:
            sys.stderr.write("%s: %s\n" % (type(e).__name__, e))
        except BaseException:
            pass


main()
