/* sbx inside: what the command's rooms (sbx.c, sbx_run.c, sbx_session.c, sbx_status.c,
 * sbx_output.c) share. Not part of libsbx: nothing here is linked into libsbx.a. */
#ifndef SBX_SBX_H
#define SBX_SBX_H

#include "args.h"
#include "common.h"
#include "libsbx.h"
#include "sbx_limits.h"

#include <jansson.h>
#include <limits.h>

#define EXIT_USAGE 2
#define EXIT_TIMEOUT 124
#define EXIT_SANDBOX 125
#define EXIT_NOT_RUNNING 3

/* ---- sbx.c ---- */

int connect_client(const args *a, bool show_progress, sbx_client **out, sbx_error *err);
/* The network asked for on the command line, its ports written to ports. */
sbx_network network_opts(const args *a, sbx_port_expose ports[SBX_EXPOSE_MAX]);
/* The packages asked for, checked for a language before anything is sent: a spec that is not
 * one is a usage error, a name off its list PackageNotAllowedError; unpinned specs are warned
 * about unless -q (and warn is false). -1 when they are fine, else the exit status (2), the
 * error printed. */
int packages_check(const args *a, const char *language, bool warn);

/* ---- sbx_output.c ---- */

int error_exit(const sbx_error *e);
__attribute__((format(printf, 2, 3))) void error_wrap(sbx_error *e, const char *fmt, ...);
void print_error(const sbx_error *e);
void fmt_ms(char *out, size_t n, uint64_t ms);
void fmt_duration(char *out, size_t n, uint64_t ms);
void fmt_size(char *out, size_t n, uint64_t b);
void print_notes(const args *a, const sbx_result *r);
void stream_cb(sbx_stream stream, const char *data, size_t len, void *userdata);
void ports_cb(const sbx_exposed_port *ports, size_t n, void *userdata);
void progress_cb(const char *message, void *userdata);
/* bundle.c: `sbx bundle` and `sbx prefetch` (argv from the command's name). */
int cmd_bundle(int argc, char **argv);
int cmd_prefetch(int argc, char **argv);
json_t *json_ports(const sbx_exposed_port *ports, size_t n);
void end_lines(void);
json_t *json_bytes(const char *data, size_t len);
json_t *json_text(const char *s);
json_t *json_result_fields(const char *language, const char *source, const sbx_result *r);
json_t *json_result(const run_source *src, const sbx_result *r);
json_t *json_error(const run_source *src, const sbx_error *e);
int json_print(json_t *j);
int report_result(const args *a, json_t *j, const sbx_result *r, const char *language);
int report_error(const args *a, const run_source *src, const sbx_error *e);

/* ---- sbx_run.c ---- */

int cmd_run(const args *a);

/* ---- sbx_session.c ---- */

int check_upload_source(const char *path, sbx_err *why);
int download_target(const args_transfer *t, char *out, size_t n, sbx_err *why);
int cmd_session_new(const args *a);
int cmd_session_exec(const args *a);
int cmd_session_ls(const args *a);
int cmd_session_close(const args *a);
int cmd_session_upload(const args *a);
int cmd_session_download(const args *a);
int cmd_session_files(const args *a);

/* ---- sbx_status.c ---- */

int cmd_status(const args *a);

#endif
