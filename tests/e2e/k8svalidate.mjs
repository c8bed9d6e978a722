// Checks Kubernetes manifests against the API's schemas (kubernetes-models: ajv validators
// generated from Kubernetes' OpenAPI spec; types, required fields, enums and formats, but not
// unknown fields). Usage: node k8svalidate.mjs MODULES_DIR FILE...
// Prints one JSON line per object ({file, kind, name, ok, error}); exits 1 if any is invalid.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { join } from "node:path";

const [modules, ...files] = process.argv.slice(2);
const require = createRequire(join(modules, "node_modules", "x.js"));
const yaml = require("js-yaml");

// kubernetes-models has one module per group/version: kubernetes-models/apps/v1, .../v1.
function kindClass(apiVersion, kind) {
  const path = apiVersion.includes("/") ? apiVersion : "v1";
  const mod = require(`kubernetes-models/${path}`);
  return mod[kind];
}

let bad = 0;
for (const file of files) {
  let docs;
  try {
    docs = yaml.loadAll(readFileSync(file, "utf8"));
  } catch (e) {
    console.log(JSON.stringify({ file, ok: false, error: `YAML: ${e.message}` }));
    bad++;
    continue;
  }
  for (const doc of docs.filter((d) => d !== null)) {
    const out = { file, kind: doc.kind, name: doc.metadata?.name, ok: true };
    try {
      if (typeof doc.apiVersion !== "string" || typeof doc.kind !== "string")
        throw new Error("apiVersion and kind must be strings");
      const Cls = kindClass(doc.apiVersion, doc.kind);
      if (!Cls) throw new Error(`unknown kind ${doc.apiVersion} ${doc.kind}`);
      new Cls(doc).validate();
    } catch (e) {
      out.ok = false;
      out.error = e.message;
      bad++;
    }
    console.log(JSON.stringify(out));
  }
}
process.exit(bad ? 1 : 0);
