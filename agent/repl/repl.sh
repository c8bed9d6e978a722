# Persistent shell REPL of sbx-agent (keep_state execs): the prelude of the session.
# The agent starts `bash --noprofile --norc /proc/self/fd/100` as uid 1000, so bash reads its
# script from the command pipe (fd 100) one line at a time, and state (variables, functions,
# the working directory, options) simply stays in that one shell. The first line sources this
# file; each exec is then one line
#   builtin source ENV_FILE; builtin source CODE_FILE; builtin printf '%s %d\n' SEQ "$?" >&101; \
#   builtin disown -a
# (ENV_FILE only when the exec has variables) whose result line goes to fd 101 after the code's
# foreground commands are done. The agent kills what the exec left running in the background;
# disown spares the next exec bash's "Killed" notices about those jobs. `exit N` ends the shell:
# the agent reports N and restarts it. ($? does not carry over to the next exec.)

# bash reads the script through its own descriptor (255, close-on-exec): the code, and the
# commands it starts, need neither the pipe nor a way to read the next exec's line from it.
exec 100<&-
