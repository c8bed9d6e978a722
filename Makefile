# exec-sandbox build. `make` builds the binaries; `make run` sets up everything from nothing and
# runs a sandboxed print; `make test` runs the whole suite (see README.md).
CC ?= cc
# Debian's interpreter: the tests use Debian's python3-protobuf (scripts/setup-host.sh).
PYTHON ?= /usr/bin/python3
BUILD ?= build
# CFLAGS_BASE: no host include paths (the cross-built agent uses it as it is).
CFLAGS_BASE = -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow -Wmissing-prototypes -Wformat=2 \
	-Wno-unused-parameter -Wno-format-truncation \
	-iquote $(BUILD)/gen -iquote common -iquote proto -iquote cli -g
CFLAGS_COMMON = $(CFLAGS_BASE)
CFLAGS ?= -O2
# Libraries from pkg-config where they ship a .pc file (libev does not).
PKGS = libprotobuf-c jansson libseccomp libcap-ng libzstd libcrypto libcurl libarchive
LIBS_HOST = -lev $(shell pkg-config --libs $(PKGS)) -lslirp -pthread
CFLAGS_COMMON += $(shell pkg-config --cflags $(PKGS))
PROTOS = files control worker agent net
GEN_C = $(PROTOS:%=$(BUILD)/gen/%.pb-c.c)
GEN_H = $(PROTOS:%=$(BUILD)/gen/%.pb-c.h)
COMMON_SRC = proto/frame.c common/sbx_limits.c common/paths.c common/netpolicy.c common/pump.c common/arch.c
# Package specs and the allowlists compiled in from data/ (sbxd, sbx, libsbx; not the agent).
PKG_SRC = common/packages.c
PKG_GEN = $(BUILD)/gen/pkglists.c
SBXD_SRC = supervisor/main.c supervisor/config.c supervisor/control.c supervisor/request.c \
	supervisor/run.c supervisor/conn.c \
	supervisor/sched.c \
	supervisor/cgroup.c supervisor/session.c supervisor/pool.c \
	supervisor/accel.c supervisor/snapshot.c supervisor/workerlog.c supervisor/spawn.c \
	supervisor/assets.c supervisor/layers.c supervisor/install.c supervisor/packer.c supervisor/cachedir.c supervisor/child.c supervisor/remote.c \
	supervisor/ledger.c supervisor/metrics.c
WORKER_SRC = common/syscalls.c vmworker/worker.c vmworker/chan.c vmworker/relay.c vmworker/snapshot.c vmworker/qemu.c \
	vmworker/machine.c \
	vmworker/jail.c vmworker/qmp.c vmworker/balloon.c vmworker/net.c vmworker/netloop.c \
	vmworker/netfilter.c vmworker/netconn.c vmworker/netudp.c vmworker/netparse.c
LIBSBX_SRC = cli/client.c cli/autostart.c cli/run.c cli/session.c cli/file.c cli/status.c \
	cli/utf8.c cli/net.c cli/pkg.c
SBX_SRC = cli/sbx.c cli/sbx_run.c cli/sbx_session.c cli/sbx_status.c cli/sbx_output.c cli/args.c \
	cli/sources.c cli/bundle.c
# The network broker (one per VM with a NIC): policy, resolution, connect, listening sockets.
BROKER_SRC = netbroker/broker.c netbroker/request.c netbroker/policyio.c netbroker/resolve.c \
	netbroker/confine.c netbroker/relay.c common/netpolicy.c common/syscalls.c common/pump.c proto/frame.c
BROKER_PROTOS = net control files
LIBS_BROKER = $(shell pkg-config --libs libprotobuf-c libseccomp libcap-ng)
AGENT_SRC = agent/agent.c agent/chan.c agent/boot.c agent/net.c agent/exec.c agent/sandbox.c agent/repl.c \
	agent/files.c agent/zram.c agent/pkgs.c

# Header dependencies of every object, written by the compiler (-MMD -MP).
.DEFAULT_GOAL := all
-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

.PHONY: fuzz all clean format format-check assets run test test-fast test-unit test-e2e bench setup asan \
	python test-python test-python-vm test-broker test-arm64 bench-arm64

all: $(BUILD)/sbxd $(BUILD)/sbx-vmworker $(BUILD)/sbx-netbroker $(BUILD)/sbx $(BUILD)/sbx-agent $(BUILD)/libsbx.a \
	$(BUILD)/example

$(BUILD)/gen/%.pb-c.c $(BUILD)/gen/%.pb-c.h: proto/%.proto
	@mkdir -p $(BUILD)/gen
	protoc-c --proto_path=proto --c_out=$(BUILD)/gen $<

$(PKG_GEN): data/pypi-top-10k.txt data/npm-top-10k.txt scripts/gen-pkglists.sh
	@mkdir -p $(BUILD)/gen
	scripts/gen-pkglists.sh data/pypi-top-10k.txt data/npm-top-10k.txt > $@.tmp && mv -f $@.tmp $@

# Objects of one variant (release or asan) live under $(BUILD)/<variant>/.
define variant
$(BUILD)/$(1)/%.o: %.c $(GEN_H)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(CFLAGS_COMMON) $(2) -MMD -MP -c $$< -o $$@
$(BUILD)/$(1)/gen/%.o: $(BUILD)/gen/%.c $(GEN_H)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(CFLAGS_COMMON) $(2) -Wno-error -c $$< -o $$@
$(1)_COMMON_OBJ = $$(COMMON_SRC:%.c=$(BUILD)/$(1)/%.o) $$(PROTOS:%=$(BUILD)/$(1)/gen/%.pb-c.o)
$(1)_PKG_OBJ = $$(PKG_SRC:%.c=$(BUILD)/$(1)/%.o) $(BUILD)/$(1)/gen/pkglists.o
$(BUILD)/$(1)/sbxd: $$(SBXD_SRC:%.c=$(BUILD)/$(1)/%.o) $$($(1)_COMMON_OBJ) $$($(1)_PKG_OBJ)
	$$(CC) $(2) -o $$@ $$^ $$(LIBS_HOST)
$(BUILD)/$(1)/sbx-vmworker: $$(WORKER_SRC:%.c=$(BUILD)/$(1)/%.o) $$($(1)_COMMON_OBJ)
	$$(CC) $(2) -o $$@ $$^ $$(LIBS_HOST)
$(BUILD)/$(1)/sbx-netbroker: $$(BROKER_SRC:%.c=$(BUILD)/$(1)/%.o) \
		$$(BROKER_PROTOS:%=$(BUILD)/$(1)/gen/%.pb-c.o)
	$$(CC) $(2) -o $$@ $$^ $$(LIBS_BROKER)
# libsbx and the shared code it uses are built with hidden visibility (libsbx.h marks the API
# visible), linked into one object whose hidden symbols are then made local: a program that
# links libsbx.a meets sbx_* alone, never frame_send or paths_which.
$(BUILD)/$(1)/libsbx/%.o: %.c $(GEN_H) $(wildcard common/*.h proto/*.h cli/*.h)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(CFLAGS_COMMON) $(2) -fvisibility=hidden -c $$< -o $$@
$(BUILD)/$(1)/libsbx/gen/%.o: $(BUILD)/gen/%.c $(GEN_H)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(CFLAGS_COMMON) $(2) -fvisibility=hidden -Wno-error -c $$< -o $$@
$(BUILD)/$(1)/libsbx.a: $$(LIBSBX_SRC:%.c=$(BUILD)/$(1)/libsbx/%.o) \
		$$(COMMON_SRC:%.c=$(BUILD)/$(1)/libsbx/%.o) $(BUILD)/$(1)/libsbx/gen/control.pb-c.o \
		$(BUILD)/$(1)/libsbx/gen/files.pb-c.o $$(PKG_SRC:%.c=$(BUILD)/$(1)/libsbx/%.o) \
		$(BUILD)/$(1)/libsbx/gen/pkglists.o
	$$(LD) -r -o $(BUILD)/$(1)/libsbx.o $$^
	objcopy --localize-hidden $(BUILD)/$(1)/libsbx.o
	rm -f $$@ && ar rcs $$@ $(BUILD)/$(1)/libsbx.o
$(BUILD)/$(1)/sbx: $$(SBX_SRC:%.c=$(BUILD)/$(1)/%.o) $(BUILD)/$(1)/libsbx.a $$($(1)_COMMON_OBJ) \
		$$($(1)_PKG_OBJ)
	$$(CC) $(2) -o $$@ $$^ $$(LIBS_HOST)
endef

ASAN_FLAGS = -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
$(eval $(call variant,rel,$(CFLAGS)))
$(eval $(call variant,asan,$(ASAN_FLAGS)))

$(BUILD)/sbxd $(BUILD)/sbx-vmworker $(BUILD)/sbx-netbroker $(BUILD)/sbx $(BUILD)/libsbx.a: $(BUILD)/%: $(BUILD)/rel/%
	cp $< $@.tmp && mv -f $@.tmp $@

# The libsbx example program, built the way an outside user would: header plus archive.
$(BUILD)/example: cli/example.c cli/libsbx.h $(BUILD)/libsbx.a
	$(CC) $(CFLAGS_COMMON) $(CFLAGS) -o $@ cli/example.c $(BUILD)/libsbx.a $(LIBS_HOST)

asan: $(BUILD)/asan/sbxd $(BUILD)/asan/sbx-vmworker $(BUILD)/asan/sbx-netbroker $(BUILD)/asan/sbx

# The guest agent is PID 1 in the VM: static, no sanitizer. $(call agent_link,COMPILER,CFLAGS)
AGENT_DEPS = $(AGENT_SRC) $(COMMON_SRC) $(GEN_C) $(GEN_H) agent/*.h common/*.h proto/*.h
agent_link = $(1) $(2) -O2 -static -o $@ $(AGENT_SRC) $(COMMON_SRC) \
	$(BUILD)/gen/files.pb-c.c $(BUILD)/gen/agent.pb-c.c -l:libprotobuf-c.a -l:libzstd.a -l:libcrypto.a
$(BUILD)/sbx-agent: $(AGENT_DEPS)
	$(call agent_link,$(CC),$(CFLAGS_COMMON))
# The agent for a given guest architecture, with Debian's cross compiler and the static
# libraries of that architecture (scripts/setup-host.sh --arch ARCH installs both).
$(BUILD)/aarch64/sbx-agent $(BUILD)/x86_64/sbx-agent: $(BUILD)/%/sbx-agent: $(AGENT_DEPS)
	@mkdir -p $(dir $@)
	$(call agent_link,$*-linux-gnu-gcc,$(CFLAGS_BASE))

# Unit tests (cmocka), built with ASan/UBSan.
UNIT_TESTS = test_frame test_limits test_config test_cli_args test_balloon test_paths test_netparse \
	test_netpolicy test_packages test_arch test_machine test_syscalls
$(BUILD)/tests/test_frame: tests/unit/test_frame.c $(asan_COMMON_OBJ)
$(BUILD)/tests/test_limits: tests/unit/test_limits.c $(asan_COMMON_OBJ)
$(BUILD)/tests/test_paths: tests/unit/test_paths.c $(asan_COMMON_OBJ)
$(BUILD)/tests/test_netpolicy: tests/unit/test_netpolicy.c $(asan_COMMON_OBJ)
$(BUILD)/tests/test_packages: tests/unit/test_packages.c $(asan_PKG_OBJ) $(asan_COMMON_OBJ)
$(BUILD)/tests/test_config: tests/unit/test_config.c $(BUILD)/asan/supervisor/config.o $(asan_COMMON_OBJ)
$(BUILD)/tests/test_syscalls: tests/unit/test_syscalls.c $(BUILD)/asan/common/syscalls.o $(asan_COMMON_OBJ) \
	vmworker/jail_syscalls.h netbroker/confine_syscalls.h
$(BUILD)/tests/test_arch: tests/unit/test_arch.c $(BUILD)/asan/supervisor/config.o $(asan_COMMON_OBJ)
$(BUILD)/tests/test_cli_args: tests/unit/test_cli_args.c $(BUILD)/asan/cli/args.o $(BUILD)/asan/cli/sources.o \
	$(BUILD)/asan/libsbx.a \
	$(asan_COMMON_OBJ) $(asan_PKG_OBJ)
$(BUILD)/tests/test_balloon: tests/unit/test_balloon.c $(BUILD)/asan/vmworker/balloon.o $(asan_COMMON_OBJ)
$(BUILD)/tests/test_netparse: tests/unit/test_netparse.c $(BUILD)/asan/vmworker/netparse.o $(asan_COMMON_OBJ)
$(BUILD)/tests/test_machine: tests/unit/test_machine.c $(BUILD)/asan/vmworker/machine.o $(asan_COMMON_OBJ)
$(UNIT_TESTS:%=$(BUILD)/tests/%):
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) -iquote supervisor -iquote vmworker -iquote netbroker $(ASAN_FLAGS) -o $@ \
		$(filter-out %.h,$^) -lcmocka $(LIBS_HOST)

test-unit: $(UNIT_TESTS:%=$(BUILD)/tests/%)
	@set -e; for t in $^; do echo "== $$t"; $$t; done

# libFuzzer targets for every decoder of untrusted bytes (clang). `make fuzz` runs each for
# FUZZ_SECONDS; crashes are saved under build/fuzz/.
FUZZ_TARGETS = control worker agent qmp control_conn netparse netbroker
FUZZ_SECONDS ?= 15
FUZZ_SRC = tests/fuzz/fuzz_frames.c proto/frame.c common/sbx_limits.c $(GEN_C)
$(BUILD)/fuzz/fuzz_%: $(FUZZ_SRC) $(GEN_H) common/*.h proto/*.h
	@mkdir -p $(dir $@)
	clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
		-DFUZZ_$(shell echo $* | tr a-z A-Z) -iquote $(BUILD)/gen -iquote common -iquote proto -o $@ $(FUZZ_SRC) \
		-lprotobuf-c
# The worker's QMP reader: QEMU's replies and events are its input.
$(BUILD)/fuzz/fuzz_qmp: tests/fuzz/fuzz_qmp.c vmworker/qmp.c vmworker/qemu.c vmworker/machine.c common/arch.c \
		$(GEN_C) $(GEN_H) vmworker/*.h common/*.h proto/*.h
	@mkdir -p $(dir $@)
	clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -iquote $(BUILD)/gen \
		-iquote common -iquote proto -iquote vmworker -o $@ tests/fuzz/fuzz_qmp.c vmworker/qmp.c vmworker/qemu.c \
		vmworker/machine.c common/arch.c $(GEN_C) -lprotobuf-c -ljansson
# The worker's parsers of the guest's network bytes: frames, DNS queries, TLS ClientHellos.
$(BUILD)/fuzz/fuzz_netparse: tests/fuzz/fuzz_netparse.c vmworker/netparse.c vmworker/netparse.h
	@mkdir -p $(dir $@)
	clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -iquote vmworker \
		-o $@ tests/fuzz/fuzz_netparse.c vmworker/netparse.c
# The life of control connections: sbxd's control, request and session rooms on a real loop
# against a fake scheduler (the input is a script of connects, writes, closes, VM answers).
CONN_FUZZ_SRC = tests/fuzz/fuzz_control_conn.c supervisor/control.c supervisor/conn.c supervisor/request.c \
	supervisor/session.c supervisor/ledger.c supervisor/config.c proto/frame.c common/sbx_limits.c \
	common/paths.c common/arch.c \
	common/netpolicy.c common/packages.c $(PKG_GEN)
$(BUILD)/fuzz/fuzz_control_conn: $(CONN_FUZZ_SRC) $(GEN_C) $(GEN_H) supervisor/*.h common/*.h proto/*.h
	@mkdir -p $(dir $@)
	clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -iquote $(BUILD)/gen \
		-iquote common -iquote proto -iquote supervisor -o $@ $(CONN_FUZZ_SRC) $(GEN_C) -lprotobuf-c -lev \
		-ljansson -lcrypto
# The network broker's view of a worker's request: parse, then the policy decisions and the
# answer cache.
NETBROKER_FUZZ_SRC = tests/fuzz/fuzz_netbroker.c netbroker/request.c netbroker/resolve.c \
	netbroker/policyio.c common/netpolicy.c proto/frame.c $(BUILD)/gen/net.pb-c.c \
	$(BUILD)/gen/control.pb-c.c $(BUILD)/gen/files.pb-c.c
$(BUILD)/fuzz/fuzz_netbroker: $(NETBROKER_FUZZ_SRC) $(GEN_H) netbroker/*.h common/*.h proto/*.h
	@mkdir -p $(dir $@)
	clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -iquote $(BUILD)/gen \
		-iquote common -iquote proto -iquote netbroker -o $@ $(NETBROKER_FUZZ_SRC) -lprotobuf-c
fuzz: $(FUZZ_TARGETS:%=$(BUILD)/fuzz/fuzz_%)
	@set -e; for t in $(FUZZ_TARGETS); do mkdir -p $(BUILD)/fuzz/corpus-$$t; \
		echo "== fuzz_$$t ($(FUZZ_SECONDS) s)"; \
		rc=0; $(BUILD)/fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -max_len=8192 \
			-artifact_prefix=$(BUILD)/fuzz/crash-$$t- $(BUILD)/fuzz/corpus-$$t \
			> $(BUILD)/fuzz/fuzz_$$t.log 2>&1 || rc=$$?; tail -2 $(BUILD)/fuzz/fuzz_$$t.log; \
		[ $$rc -eq 0 ] || { echo "fuzz_$$t FAILED (exit $$rc, log $(BUILD)/fuzz/fuzz_$$t.log)"; \
			grep -m5 -A20 "ERROR" $(BUILD)/fuzz/fuzz_$$t.log; exit 1; }; done

setup:
	scripts/setup-host.sh

# make assets ARCH=aarch64 (or x86_64): the assets of that guest architecture, default the
# host's; another architecture's agent is cross-built (scripts/setup-host.sh --arch ARCH).
HOST_ARCH := $(shell uname -m)
GUEST_ARCH = $(patsubst arm64,aarch64,$(patsubst amd64,x86_64,$(or $(ARCH),$(HOST_ARCH))))
ASSET_AGENT = $(if $(filter-out $(HOST_ARCH),$(GUEST_ARCH)),$(BUILD)/$(GUEST_ARCH)/sbx-agent,$(BUILD)/sbx-agent)
assets: $(ASSET_AGENT)
	SBX_AGENT=$(ASSET_AGENT) scripts/build-assets.sh

run: setup
	$(MAKE) all
	$(MAKE) assets
	$(BUILD)/sbx run 'print("Hello from sandbox")'

test: setup
	$(MAKE) all asan
	$(MAKE) assets
	$(MAKE) format-check
	$(MAKE) test-unit
	$(MAKE) fuzz FUZZ_SECONDS=10
	$(MAKE) test-broker
	$(PYTHON) tests/e2e/run.py --sbx $(BUILD)/asan/sbx --sbxd $(BUILD)/asan/sbxd
	$(MAKE) test-python-vm
	$(MAKE) test-arm64

# The e2e tests marked any_arch (hello in every language, a session, files, a timeout, a
# snapshot restore, the jail) against aarch64 guests: under cross-architecture TCG on an x86
# host, natively on an arm64 one. Its assets are built like the host's (make assets ARCH=aarch64).
test-arm64: all asan
	scripts/setup-host.sh --arch aarch64
	$(MAKE) assets ARCH=aarch64
	$(PYTHON) tests/e2e/run.py --guest-arch aarch64 --sbx $(BUILD)/asan/sbx --sbxd $(BUILD)/asan/sbxd

# The Python client (clients/python): its protobuf modules, generated from proto/ (not committed).
python:
	$(PYTHON) clients/python/genproto.py

# The Python client's tests (tests/python): test-python those without VMs (a fake sbxd),
# test-python-vm all of them, against the ASan daemon and real VMs.
test-python: python
	$(PYTHON) -m pytest -q -m "not vm" tests/python
test-python-vm: python asan
	EXEC_SANDBOX_SBXD=$(BUILD)/asan/sbxd $(PYTHON) -m pytest -q tests/python

# The network broker against a fake worker (tests/broker): release and ASan builds. Root: it
# binds 127.0.0.x:443 and checks the privilege drop.
test-broker: $(BUILD)/sbx-netbroker $(BUILD)/asan/sbx-netbroker
	$(PYTHON) -m pytest -q tests/broker --broker $(BUILD)/sbx-netbroker
	$(PYTHON) -m pytest -q tests/broker --broker $(BUILD)/asan/sbx-netbroker

test-fast: all asan test-unit
	$(PYTHON) tests/e2e/run.py --fast --sbx $(BUILD)/asan/sbx --sbxd $(BUILD)/asan/sbxd

# An asset bundle of the kernel, initramfs and images this host built (or fetched; ARCH=aarch64:
# those of aarch64 guests), for
# `sbx prefetch --from dist` (or a URL serving dist/) on other hosts: dist/exec-sandbox-assets-
# <version>-<arch>.tar.zst and dist/SHA256SUMS.
release: all
	$(BUILD)/sbx bundle --out dist $(if $(ARCH),--arch $(ARCH))

# Start-up benchmarks, each way beside its floor (a table, not a test): cold, warm pool,
# throughput and memory; then snapshot restore; the Python client; the network path (bench-net.py).
bench: all
	scripts/bench.py
	scripts/bench-restore.py
	scripts/bench-throughput.py
	$(PYTHON) scripts/bench-python.py
	scripts/bench-net.py
	scripts/bench-packages.py

# The same for aarch64 guests (under cross-architecture TCG on an x86 host): cold and warm
# beside their floors, then restore (make assets ARCH=aarch64 first).
bench-arm64: all
	scripts/bench.py --guest-arch aarch64 --skip tput,mem
	scripts/bench-restore.py --guest-arch aarch64

FORMAT_SRC = $(wildcard common/*.[ch] proto/*.[ch] supervisor/*.[ch] vmworker/*.[ch] agent/*.[ch] cli/*.[ch] \
	netbroker/*.[ch] tests/unit/*.c tests/fuzz/fuzz_netbroker.c)
format:
	clang-format -i $(FORMAT_SRC)
format-check:
	clang-format --dry-run --Werror $(FORMAT_SRC)

clean:
	rm -rf $(BUILD)
