// Persistent JavaScript and TypeScript REPL of sbx-agent (keep_state execs), run by Bun as uid
// 1000 with
//   argv: bun repl.js CODE_FILE ENV_FILE js|ts
//   fd 100: commands, one line per exec: "SEQ HAS_ENV\n"
//   fd 101: results, one line per exec: "SEQ EXIT_CODE\n", written after stdout/stderr drained
// Each exec's code (CODE_FILE, rewritten by the agent before each command) goes through Bun's
// REPL transform: top-level const/let/class/function/import become global var bindings inside an
// async wrapper, so names persist, a later exec may declare them again, and top-level await
// works. With `ts` the code is TypeScript: the same transform strips its types (Bun does not
// check them) and a syntax error is thrown as a build error. ENV_FILE holds KEY=VALUE\0 entries
// to set first. An exec is done when its code has run and the promise of its top-level awaits
// has settled; timers it leaves run on in the background. A thrown error is printed and reported
// as exit code 1 with the state kept; process.exit() ends the process, and the agent reports the
// code and restarts the REPL.
const fs = require("node:fs");
const vm = require("node:vm");
const { createRequire } = require("node:module");

const CMD_FD = 100;
const RESULT_FD = 101;
const [codePath, envPath, mode] = process.argv.slice(2);
const loader = mode === "ts" ? "ts" : "js";
const transpiler = new Bun.Transpiler({ loader, replMode: true });
const importer = vm.constants && vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER;

// Like a script in the home directory: require() and relative imports resolve from there.
globalThis.require = createRequire(process.cwd() + "/");
process.argv = [process.argv[0]];
// An error nobody waits for (a rejected promise left floating, a throwing timer) is printed,
// as Node's REPL does, instead of ending the session.
process.on("uncaughtException", (e) => console.error(e));
process.on("unhandledRejection", (e) => console.error(e));

// Bun writes process.stdout/stderr to a pipe asynchronously, with no way to learn when the bytes
// have left the process; a result line sent before them would cut them off from their exec.
// Writes through these streams are made synchronous instead (console.log already is), waiting
// out EAGAIN on the non-blocking pipe.
const pause = new Int32Array(new SharedArrayBuffer(4));
function syncWrite(fd) {
  return function write(chunk, encoding, cb) {
    if (typeof encoding === "function") {
      cb = encoding;
      encoding = undefined;
    }
    const buf = typeof chunk === "string" ? Buffer.from(chunk, encoding || "utf8") : chunk;
    let off = 0;
    while (off < buf.length) {
      try {
        off += fs.writeSync(fd, buf, off, buf.length - off);
      } catch (e) {
        if (e.code !== "EAGAIN") break;
        Atomics.wait(pause, 0, 0, 1);
      }
    }
    if (cb) process.nextTick(cb);
    return true;
  };
}
process.stdout.write = syncWrite(1);
process.stderr.write = syncWrite(2);

// Math.random keeps its state in this process from its start: in VMs restored from one memory
// snapshot every REPL would draw the same numbers. It is replaced by xoshiro128** (the quality
// of the engines' own generators), reseeded from the kernel before each exec; the agent has the
// kernel's generator reseeded by the host on every restore.
const rng = new Uint32Array(4);
function reseedMathRandom() {
  const fd = fs.openSync("/dev/urandom", "r");
  try {
    do fs.readSync(fd, rng, 0, 16, null);
    while ((rng[0] | rng[1] | rng[2] | rng[3]) === 0);
  } finally {
    fs.closeSync(fd);
  }
}
function next32() {
  const s = rng;
  const x = Math.imul(s[1], 5);
  const r = Math.imul((x << 7) | (x >>> 25), 9) >>> 0;
  const t = s[1] << 9;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = (s[3] << 11) | (s[3] >>> 21);
  return r;
}
reseedMathRandom();
Object.defineProperty(Math, "random", {
  value: function random() {
    return ((next32() >>> 5) * 67108864 + (next32() >>> 6)) / 9007199254740992;
  },
  writable: true,
  configurable: true,
});

let n = 0;
async function runOne(seq, hasEnv) {
  let rc = 0;
  try {
    if (hasEnv) {
      for (const kv of fs.readFileSync(envPath, "utf8").split("\0")) {
        const eq = kv.indexOf("=");
        if (eq > 0) process.env[kv.slice(0, eq)] = kv.slice(eq + 1);
      }
    }
    const src = fs.readFileSync(codePath, "utf8");
    reseedMathRandom();
    // The agent's warm-up (an empty command) takes no exec number.
    if (src) n += 1;
    const js = transpiler.transformSync(src);
    const result = vm.runInThisContext(js, {
      filename: `exec-${n}.${loader}`,
      importModuleDynamically: importer,
    });
    if (result && typeof result.then === "function") await result;
  } catch (e) {
    rc = 1;
    console.error(e);
  }
  // Let rejections left unhandled by this exec be reported before it ends.
  await new Promise((resolve) => setImmediate(resolve));
  fs.writeSync(RESULT_FD, `${seq} ${rc}\n`);
}

// Commands are read through Bun's own non-blocking pipe reader, which wakes the event loop
// directly (fs.createReadStream goes through a thread and costs milliseconds per exec under
// emulation). One exec at a time: the agent sends the next command after the result.
async function main() {
  let pending = "";
  const decoder = new TextDecoder("latin1");
  try {
    for await (const chunk of Bun.file(CMD_FD).stream()) {
      pending += decoder.decode(chunk);
      let nl;
      while ((nl = pending.indexOf("\n")) >= 0) {
        const [seq, hasEnv] = pending.slice(0, nl).split(" ");
        pending = pending.slice(nl + 1);
        await runOne(seq, hasEnv === "1");
      }
    }
  } catch (e) {
    console.error("sbx repl:", e);
  }
  // The agent closed the channel (or it broke): nothing more will come.
  process.exit(0);
}

main();
