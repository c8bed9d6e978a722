/* What the worker's own files share. */
#ifndef SBX_WORKER_H
#define SBX_WORKER_H

#include <stdbool.h>
#include <stdint.h>

#include "common.h"
#include "agent.pb-c.h"
#include "frame.h"
#include "qemu.h"
#include "qmp.h"
#include "worker.pb-c.h"

#define CONSOLE_TAIL 2048

typedef struct {
    int ctl; /* sbxd */
    frame_reader ctl_rd;
    int sigfd;
    qemu_vm vm;
    int agent;
    frame_reader ag_rd;
    int con;
    char con_tail[CONSOLE_TAIL];
    size_t con_len;
    Sbx__Worker__VmConfig *cfg;
    uint64_t req_id;
    uint64_t t_start;
    bool idle; /* waiting for sbxd's next request: time for the balloon (balloon.h) */
} worker;

extern worker W;
extern qmp_conn qmp;
extern const char *start_mode;
extern char restore_error[512];
extern bool restore_timed_out;
extern uint64_t agent_seq;

/* One line on stderr (sbxd's log), prefixed with the worker's pid. */
__attribute__((format(printf, 1, 2))) void wlog(const char *fmt, ...);

/* worker.c */
void send_ctl(Sbx__Worker__FromWorker *m);
void cleanup_vm(void);
__attribute__((noreturn, format(printf, 3, 4))) void fail(Sbx__Control__ErrorKind kind,
                                                          bool transient, const char *fmt, ...);
__attribute__((format(printf, 3, 4))) void reply_error(Sbx__Control__ErrorKind kind, bool transient,
                                                       const char *fmt, ...);
const char *vm_gone_reason(char *buf, size_t n);
void console_read(void);
void send_agent(Sbx__Agent__HostMsg *m);
void agent_nonblock(void);
int try_send_hello(sbx_err *err);
bool reap_signals(int *st);
enum { EV_NONE, EV_CTL, EV_AGENT, EV_TIMEOUT };
int next_event(uint64_t deadline, bool want_ctl, const uint8_t **frame, size_t *len);
Sbx__Agent__GuestMsg *recv_agent(uint64_t id, uint64_t deadline);

/* relay.c */
void run_exec(Sbx__Worker__ExecRequest *req, uint64_t boot_ms, uint64_t setup_ms);
void run_file_op(Sbx__Worker__ToWorker *m);

/* snapshot.c */
bool boot_restore(uint64_t *boot_ms);
__attribute__((noreturn)) void make_template(uint64_t boot_ms);

#endif
