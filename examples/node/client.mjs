// A lookalike client in Node.js: insert images, query with one, compare two.
//
//   cd examples/node && npm ci
//   node client.mjs --server 127.0.0.1:50051 --api-key KEY IMAGE...
//
// @grpc/grpc-js with the proto loaded at run time by @grpc/proto-loader
// (no code generation step). Optional proto3 fields (a match's `distance`)
// arrive as `null` when absent.
import { readFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const args = process.argv.slice(2);
const flag = (name, fallback) => {
  const i = args.indexOf(name);
  if (i < 0) return fallback;
  const [, value] = args.splice(i, 2);
  return value;
};
const server = flag("--server", "127.0.0.1:50051");
const apiKey = flag("--api-key", process.env.LOOKALIKE_API_KEY);
const images = args;
if (images.length === 0) {
  console.error("usage: node client.mjs [--server HOST:PORT] [--api-key KEY] IMAGE...");
  process.exit(2);
}

const definition = protoLoader.loadSync(join(root, "proto/lookalike/v1/lookalike.proto"), {
  keepCase: true,
  longs: Number,
  defaults: true,
  oneofs: true,
});
const { Lookalike } = grpc.loadPackageDefinition(definition).lookalike.v1;
const client = new Lookalike(server, grpc.credentials.createInsecure());
const metadata = new grpc.Metadata();
if (apiKey) metadata.set("authorization", `Bearer ${apiKey}`);
const call = (method, request, md = metadata) =>
  new Promise((resolve, reject) =>
    client[method](request, md, (err, reply) => (err ? reject(err) : resolve(reply))),
  );
const fmt = (v) => (v === null || v === undefined ? "n/a" : v.toFixed(4));

for (const path of images) {
  const reply = await call("Insert", {
    id: basename(path),
    image: readFileSync(path),
    metadata: { path },
    upsert: true,
  });
  const dups = reply.duplicates.map((d) => `${d.id} (${d.similarity.toFixed(3)})`).join(", ");
  console.log(`inserted ${reply.id}${dups ? `; duplicates: ${dups}` : ""}`);
}

const { matches } = await call("Query", { image: { data: readFileSync(images[0]) }, k: 3 });
for (const m of matches) {
  console.log(
    `match ${m.id} similarity ${m.similarity.toFixed(4)} distance ${fmt(m.distance)} duplicate ${m.duplicate}`,
  );
}

if (images.length >= 2) {
  const [a, b] = images.slice(0, 2).map((p) => basename(p));
  const c = await call("Compare", { a: { id: a }, b: { id: b } });
  console.log(
    `compare ${a} ${b}: similarity ${c.similarity.toFixed(4)} distance ${fmt(c.distance)} duplicate ${c.duplicate}`,
  );
}

try {
  await call("Stats", {}, new grpc.Metadata());
  console.log("stats without a key: allowed (the daemon has no key)");
} catch (err) {
  console.log(`stats without a key: ${grpc.status[err.code]}`);
}
client.close();
