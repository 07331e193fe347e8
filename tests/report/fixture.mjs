// Writes a sample report (the template filled with synthetic data) for development and benchmarks:
//   node tests/report/fixture.mjs OUT.html [--images 10000] [--groups 1500] [--map-points M]
//        [--null-thumbs 0.01] [--seed 1] [--template src/report/template.html]
// Thumbnails are real PNG data URIs (noisy gradients with shapes, about 4 KB each, like a
// 128 px JPEG thumbnail); members of a group get look-alike pictures and nearby map points.
// --map-points defaults to every image. The data follows the schema `lookalike report` writes,
// and is put in the page the same way: every `<` escaped as \u003c.
import { readFileSync, writeFileSync } from 'node:fs';
import { deflateSync } from 'node:zlib';
import { fileURLToPath } from 'node:url';
import { dirname, resolve } from 'node:path';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const out = args.find((a, i) => !a.startsWith('--') && !(i > 0 && args[i - 1].startsWith('--')));
function opt(name, def) {
  const i = args.indexOf('--' + name);
  return i >= 0 ? args[i + 1] : def;
}
if (!out) {
  console.error('usage: node fixture.mjs OUT.html [--images N] [--groups G] [--map-points M] [--null-thumbs F] [--seed S] [--template PATH]');
  process.exit(2);
}
const nImages = +opt('images', 10000);
const nGroups = +opt('groups', 1500);
const nMap = +opt('map-points', nImages);
const nullThumbs = +opt('null-thumbs', 0.01);
const template = opt('template', resolve(here, '../../src/report/template.html'));
let seed = +opt('seed', 1) >>> 0;

function rand() { // mulberry32
  seed = (seed + 0x6d2b79f5) >>> 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const pick = a => a[Math.floor(rand() * a.length)];
const gauss = () => Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());

// ---- a tiny PNG encoder ----
const CRC = new Int32Array(256).map((_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c;
});
function crc32(buf) {
  let c = -1;
  for (const b of buf) c = CRC[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ -1) >>> 0;
}
function chunk(type, data) {
  const b = Buffer.alloc(12 + data.length);
  b.writeUInt32BE(data.length, 0);
  b.write(type, 4, 'latin1');
  data.copy(b, 8);
  b.writeUInt32BE(crc32(b.subarray(4, 8 + data.length)), 8 + data.length);
  return b;
}
function png(w, h, rgb) { // rgb: Uint8(Clamped)Array of w*h*3; rows use the Sub filter
  const raw = Buffer.alloc((w * 3 + 1) * h);
  for (let y = 0; y < h; y++) {
    const o = y * (w * 3 + 1), s = y * w * 3;
    raw[o] = 1;
    for (let x = 0; x < w * 3; x++) raw[o + 1 + x] = (rgb[s + x] - (x >= 3 ? rgb[s + x - 3] : 0)) & 0xff;
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  return Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(raw, { level: 6 })), chunk('IEND', Buffer.alloc(0))]);
}
// A "scene": gradient between two colours and a few discs; variants shift it a little.
function scene() {
  const c = () => [rand() * 255, rand() * 255, rand() * 255];
  const discs = Array.from({ length: 2 + Math.floor(rand() * 4) }, () => ({ x: rand(), y: rand(), r: 0.08 + rand() * 0.25, c: c() }));
  return { a: c(), b: c(), angle: rand() * Math.PI, discs };
}
function thumb(sc, w, h, variant) {
  const rgb = new Uint8ClampedArray(w * h * 3);
  const ca = Math.cos(sc.angle), sa = Math.sin(sc.angle), shift = variant ? (rand() - 0.5) * 0.08 : 0;
  const bright = variant ? (rand() - 0.5) * 30 : 0;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const u = x / w + shift, v = y / h;
      const t = Math.min(1, Math.max(0, 0.5 + (u - 0.5) * ca + (v - 0.5) * sa));
      let r = sc.a[0] + (sc.b[0] - sc.a[0]) * t, g = sc.a[1] + (sc.b[1] - sc.a[1]) * t, b = sc.a[2] + (sc.b[2] - sc.a[2]) * t;
      for (const d of sc.discs) {
        const dd = ((u - d.x) * w) ** 2 + ((v - d.y) * h) ** 2, rr = (d.r * Math.min(w, h)) ** 2;
        if (dd < rr) { r = d.c[0] * 0.85 + r * 0.15; g = d.c[1] * 0.85 + g * 0.15; b = d.c[2] * 0.85 + b * 0.15; }
      }
      const n = bright + (rand() < 0.012 ? (rand() - 0.5) * 40 : 0); // sparse speckle: ~4-5 KB of base64 per thumbnail
      const o = (y * w + x) * 3;
      rgb[o] = r + n; rgb[o + 1] = g + n; rgb[o + 2] = b + n; // clamped by Uint8ClampedArray
    }
  }
  return 'data:image/png;base64,' + png(w, h, rgb).toString('base64');
}

// ---- data ----
const SIZES = [[4000, 3000], [3024, 4032], [1920, 1080], [6000, 4000], [1280, 960], [4032, 3024], [2048, 1536]];
const DIRS = ['', '', 'holidays/2025/portugal/', 'phone/DCIM/Camera/', 'scans/family-album-1987/', 'work/'];
const ODD = ['weird </script><b>name</b>.jpg', 'über café/ñandú.jpg', 'a "quoted" \'name\'.png', '<img src=x onerror=alert(1)>.jpg'];
const base = Date.parse('2026-11-01T08:00:00Z');
const images = [];
for (let i = 0; i < nImages; i++) {
  const [w, h] = pick(SIZES);
  images.push({
    id: i < ODD.length ? ODD[i] : pick(DIRS) + `IMG_${String(20250000 + i * 7).slice(0, 8)}_${String(i).padStart(6, '0')}${rand() < 0.1 ? '_HDR_edited_final_v2' : ''}.jpg`,
    thumb: null, width: w, height: h, bytes: Math.round(w * h * (0.15 + rand() * 0.2)),
    inserted_at_ms: base + i * 60000 + Math.floor(rand() * 50000), map: null, group: null,
  });
}
// group sizes: mostly pairs, a few large groups; at most 60% of the images end up in a group
// (or as many as G pairs need)
const sizes = [];
let budget = Math.max(Math.floor(nImages * 0.6), Math.min(nImages, 2 * nGroups));
for (let g = 0; g < nGroups; g++) {
  const r = rand();
  let s = r < 0.55 ? 2 : r < 0.75 ? 3 : r < 0.85 ? 4 : r < 0.97 ? 5 + Math.floor(rand() * 4) : 9 + Math.floor(rand() * 30);
  s = Math.min(s, budget - 2 * (nGroups - g - 1));
  if (s < 2) throw new Error(`cannot make ${nGroups} groups from ${nImages} images`);
  sizes.push(s);
  budget -= s;
}
const order = images.map((_, i) => i);
for (let i = order.length - 1; i > 0; i--) { const j = Math.floor(rand() * (i + 1)); [order[i], order[j]] = [order[j], order[i]]; }
const groups = [];
let next = 0;
const scenes = new Map();
for (let g = 0; g < nGroups; g++) {
  const ids = order.slice(next, next + sizes[g]);
  next += sizes[g];
  const rep = images[ids[0]];
  const members = ids.map((i, k) => {
    images[i].group = g;
    if (k === 0) return { image: i, tier: null, similarity: 1.0, distance: null };
    const r = rand(), im = images[i];
    if (r < 0.25) { // exact copy
      im.width = rep.width; im.height = rep.height; im.bytes = rep.bytes;
      return { image: i, tier: 'exact', similarity: 1.0, distance: 0.0 };
    }
    if (r < 0.75) { // resized or recompressed copy
      const f = rand() < 0.5 ? 1 : pick([0.5, 0.25, 1.5]);
      im.width = Math.round(rep.width * f); im.height = Math.round(rep.height * f);
      return { image: i, tier: 'near-duplicate', similarity: 0.93 + rand() * 0.065, distance: 0.05 + rand() * 0.25 };
    }
    return { image: i, tier: 'similar', similarity: 0.85 + rand() * 0.08, distance: rand() < 0.3 ? null : 0.3 + rand() * 0.4 };
  });
  const keep = ids.reduce((a, b) => (images[b].width * images[b].height > images[a].width * images[a].height ? b : a));
  const sc = scene();
  for (const i of ids) scenes.set(i, sc);
  groups.push({ representative: ids[0], keep, keep_reason: `largest: ${images[keep].width}x${images[keep].height} px`, members });
}
for (const [i, im] of images.entries()) {
  if (rand() < nullThumbs) continue;
  const landscape = im.width >= im.height;
  const sc = scenes.get(i);
  im.thumb = thumb(sc || scene(), landscape ? 128 : 96, landscape ? 96 : 128, !!sc && groups[im.group].representative !== i);
}
// map: clusters of look-alike content; a group's members sit close together
const centres = Array.from({ length: 40 }, () => [gauss() * 40, gauss() * 40]);
const gpos = groups.map(() => { const c = pick(centres); return [c[0] + gauss() * 6, c[1] + gauss() * 6]; });
for (const i of order.slice(0, Math.min(nMap, nImages))) {
  const im = images[i];
  if (im.group != null) im.map = [gpos[im.group][0] + gauss() * 0.8, gpos[im.group][1] + gauss() * 0.8];
  else { const c = pick(centres); im.map = [c[0] + gauss() * 7, c[1] + gauss() * 7]; }
}
const mapped = images.filter(im => im.map).length;
const data = {
  title: 'lookalike report',
  generated_at: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
  server: 'http://127.0.0.1:50051',
  stats: {
    images: nImages, groups: nGroups, grouped_images: next, map_points: mapped,
    map_method: `t-SNE (perplexity 30) of the PCA-projected CNN features of ${mapped} images`,
  },
  images, groups,
};
const json = JSON.stringify(data).replace(/</g, '\\u003c');
const tpl = readFileSync(template, 'utf8');
const marker = '__LOOKALIKE_DATA__';
if (tpl.split(marker).length !== 2) throw new Error(`${template}: the placeholder must appear exactly once`);
const html = tpl.split(marker).join(json); // not String.replace: `$` in the data would be special
writeFileSync(out, html);
console.error(`${out}: ${(Buffer.byteLength(html) / 1048576).toFixed(1)} MB, ${nImages} images, ${nGroups} groups (${next} images), ${mapped} map points`);
