/* Forked helpers of sbxd (see child.h). The child is a copy of sbxd that never returns to the
 * loop: it runs its body and _exits. */
#include "child.h"

#include <ev.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sbxd.h"
#include "spawn.h"

struct child {
    char what[48];
    pid_t pid;
    int rd; /* the report pipe */
    ev_child w;
    ev_timer deadline;
    unsigned wall_s;
    child_done done;
    void *owner;
};

pid_t child_pid(const child *c)
{
    return c->pid;
}

static void child_free(child *c)
{
    ev_child_stop(EV_DEFAULT, &c->w);
    ev_timer_stop(EV_DEFAULT, &c->deadline);
    if (c->rd >= 0)
        close(c->rd);
    free(c);
}

static void child_exited(EV_P_ ev_child *w, int revents)
{
    child *c = w->data;
    char line[CHILD_LINE_MAX + 1] = "";
    kill(-c->pid, SIGKILL); /* anything it left in its group */
    /* The child has exited: whatever it wrote is in the pipe (at most one line is read; the
     * read end never blocks, even should something else still hold the write end). */
    ssize_t r = read(c->rd, line, CHILD_LINE_MAX);
    line[r > 0 ? r : 0] = '\0';
    line[strcspn(line, "\n")] = '\0';
    bool ok = WIFEXITED(w->rstatus) && WEXITSTATUS(w->rstatus) == 0;
    if (!ok)
        slog("%s: its child ended with %s %d", c->what, WIFEXITED(w->rstatus) ? "status" : "signal",
             WIFEXITED(w->rstatus) ? WEXITSTATUS(w->rstatus) : WTERMSIG(w->rstatus));
    child_done done = c->done;
    void *owner = c->owner;
    child_free(c);
    done(owner, ok, line);
}

static void child_late(EV_P_ ev_timer *t, int revents)
{
    child *c = t->data;
    slog("%s: its child ran past %u s; killing it", c->what, c->wall_s);
    kill(-c->pid, SIGKILL); /* its exit reports it as a failure */
}

child *child_start(const char *what, child_body body, void *arg, int in_fd, int err_fd,
                   unsigned wall_s, child_done done, void *owner, sbx_err *err)
{
    child *c = calloc(1, sizeof *c);
    int p[2];
    if (!c)
        return sbx_fail(err, ENOMEM, "out of memory"), NULL;
    if (pipe2(p, O_CLOEXEC) < 0 || fcntl(p[0], F_SETFL, O_NONBLOCK) < 0) {
        free(c);
        return sbx_fail(err, errno, "pipe: %s", strerror(errno)), NULL;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        close(p[0]);
        close(p[1]);
        free(c);
        return sbx_fail(err, errno, "fork: %s", strerror(errno)), NULL;
    }
    if (pid == 0) {
        /* libev's handlers are the parent's business: gone before the mask opens. */
        for (int s = 1; s < NSIG; s++)
            signal(s, SIG_DFL);
        sbx_child_of(parent);
        setpgid(0, 0);
        struct rlimit no_core = {0, 0};
        setrlimit(RLIMIT_CORE, &no_core);
        int devnull = open("/dev/null", O_RDWR);
        if (dup2(in_fd >= 0 ? in_fd : devnull, 0) < 0 || dup2(p[1], 1) < 0 ||
            dup2(err_fd >= 0 ? err_fd : devnull, 2) < 0)
            _exit(126);
        close_range(3, ~0U, 0);
        _exit(body(arg));
    }
    close(p[1]);
    setpgid(pid, pid); /* as the child does: whoever runs first */
    snprintf(c->what, sizeof c->what, "%s", what);
    c->pid = pid;
    c->wall_s = wall_s;
    c->rd = p[0];
    c->done = done;
    c->owner = owner;
    ev_child_init(&c->w, child_exited, pid, 0);
    c->w.data = c;
    ev_child_start(EV_DEFAULT, &c->w);
    ev_timer_init(&c->deadline, child_late, wall_s, 0.);
    c->deadline.data = c;
    ev_timer_start(EV_DEFAULT, &c->deadline);
    return c;
}

void child_cancel(child *c)
{
    kill(-c->pid, SIGKILL);
    /* Reaped already (its exit waits in this loop iteration): nothing left to reap. */
    if (!ev_is_pending(&c->w)) {
        kill(c->pid, SIGKILL);
        spawn_reap(c->pid);
    }
    child_free(c);
}
