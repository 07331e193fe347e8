// Opens a report written by `lookalike report` in headless Chromium and checks it:
//   node tests/report/check.mjs REPORT.html SCREENSHOT.png [--groups N] [--map-points M] [--runs K]
// Fails (exit 1, the reasons on stderr) on: a console error, a page error, a request whose URL
// is not file: or data:, window.lookalikeReady not true within 30 s; with --groups N: the data
// not holding N groups, the rendered .group cards not min(N, 20) (the template's first page),
// a rendered group without exactly one .member.keep, N = 0 without the "No duplicates" message;
// with --map-points M: the data not holding M images with a map position, and for M > 0 a blank
// canvas#map (no pixel differing from the background), for M = 0 no message in its place.
// Writes a full-page screenshot to SCREENSHOT.png (of the first run, all cards rendered, thumbnails
// decoded).
// Prints one JSON line: {"groups_rendered","map_points","console_errors","requests","load_ms",
// "load_ms_runs","frame_ms","frame_ms_runs"}: requests lists the URLs that were neither file: nor
// data: (so [] when good); load_ms is the time from the start of page.goto to the moment the page
// sets window.lookalikeReady (an init script times the assignment), frame_ms to the start of the
// next animation frame after it (so it includes the style and layout work left for the browser);
// with --runs K, the medians of K loads, each in a fresh browser context (*_runs: each run's).
// Needs /usr/bin/chromium (Debian package chromium) and `npm ci` here: scripts/setup-test-tools.sh.
import { chromium } from 'playwright-core';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { existsSync } from 'node:fs';

const FIRST_PAGE = 20; // groups the template renders before "show more" (PAGE in src/report/template.html)
const TIMEOUT_MS = 30000;

const args = process.argv.slice(2);
const pos = [];
const opts = {};
for (let i = 0; i < args.length; i++) {
  if (args[i].startsWith('--')) {
    const v = args[++i];
    if (v === undefined || !/^\d+$/.test(v)) usage(`${args[i - 1]} needs a whole number`);
    opts[args[i - 1].slice(2)] = +v;
  } else pos.push(args[i]);
}
for (const k of Object.keys(opts)) if (!['groups', 'map-points', 'runs'].includes(k)) usage(`unknown option --${k}`);
if (pos.length !== 2) usage('REPORT.html and SCREENSHOT.png are needed');
function usage(msg) {
  console.error(`check.mjs: ${msg}\nusage: node check.mjs REPORT.html SCREENSHOT.png [--groups N] [--map-points M] [--runs K]`);
  process.exit(2);
}
const [report, shot] = pos;
if (!existsSync(report)) usage(`no such file: ${report}`);
const url = pathToFileURL(resolve(report)).href;
const runs = Math.max(1, opts.runs ?? 1);

const failures = [];
const fail = msg => failures.push(msg);
const consoleErrors = [];
const badRequests = [];
const times = [];
const frames = [];
let groupsRendered = null, mapPoints = null;

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
try {
  for (let run = 0; run < runs && !failures.length; run++) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    page.on('console', m => {
      if (m.type() === 'error') { consoleErrors.push(m.text()); fail(`console error: ${m.text()}`); }
    });
    page.on('pageerror', e => fail(`page error: ${e.message}`));
    page.on('request', r => {
      const u = r.url();
      if (!u.startsWith('file:') && !u.startsWith('data:')) { badRequests.push(u); fail(`request to ${u.slice(0, 200)}`); }
    });
    // Timestamps (epoch ms) of the moment the page sets lookalikeReady, and of the next frame.
    await page.addInitScript(() => {
      let v;
      Object.defineProperty(window, 'lookalikeReady', {
        configurable: true,
        get: () => v,
        set: x => {
          v = x;
          if (x === true && !window.__readyAt) {
            window.__readyAt = performance.timeOrigin + performance.now();
            requestAnimationFrame(() => { window.__frameAt = performance.timeOrigin + performance.now(); });
          }
        },
      });
    });
    const t0 = performance.timeOrigin + performance.now();
    try {
      await page.goto(url, { waitUntil: 'commit', timeout: TIMEOUT_MS });
      await page.waitForFunction(() => window.lookalikeReady === true && window.__frameAt, null,
        { timeout: Math.max(1000, TIMEOUT_MS - (performance.timeOrigin + performance.now() - t0)), polling: 'raf' });
    } catch (e) {
      fail(`window.lookalikeReady not true within ${TIMEOUT_MS / 1000} s (${e.message.split('\n')[0]})`);
      await context.close();
      break;
    }
    const [readyAt, frameAt] = await page.evaluate(() => [window.__readyAt, window.__frameAt]);
    times.push(Math.round(readyAt - t0));
    frames.push(Math.round(frameAt - t0));
    if (run > 0) { await context.close(); continue; }

    const r = await page.evaluate(() => {
      let data = null;
      try { data = JSON.parse(document.getElementById('lookalike-data').textContent); } catch (e) { /* reported below */ }
      const cards = [...document.querySelectorAll('.group')];
      const canvas = document.querySelector('canvas#map');
      let ink = 0;
      if (canvas && canvas.width && canvas.height) {
        const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        const [r0, g0, b0, a0] = px; // the top-left pixel is background
        for (let i = 0; i < px.length; i += 4)
          if (px[i] !== r0 || px[i + 1] !== g0 || px[i + 2] !== b0 || px[i + 3] !== a0) ink++;
      }
      return {
        parsed: !!data,
        dataGroups: data && Array.isArray(data.groups) ? data.groups.length : null,
        dataMap: data && Array.isArray(data.images) ? data.images.filter(im => im && Array.isArray(im.map)).length : null,
        cards: cards.length,
        badKeep: cards.map((c, i) => [i, c.querySelectorAll('.member.keep').length]).filter(([, n]) => n !== 1),
        readyAttr: document.body.dataset.ready,
        canvas: !!canvas, ink,
        groupsEmpty: !!document.querySelector('#groups-sec .empty'),
        mapEmpty: !!document.querySelector('#map-sec .empty'),
      };
    });
    groupsRendered = r.cards;
    mapPoints = r.dataMap;
    if (!r.parsed) fail('the #lookalike-data script does not hold valid JSON');
    if (r.readyAttr !== '1') fail(`document.body.dataset.ready is ${JSON.stringify(r.readyAttr)}, not "1"`);
    if (r.badKeep.length) fail(`${r.badKeep.length} rendered group(s) without exactly one .member.keep, e.g. card ${r.badKeep[0][0]} has ${r.badKeep[0][1]}`);
    if (opts.groups !== undefined) {
      const n = opts.groups;
      if (r.dataGroups !== n) fail(`the data holds ${r.dataGroups} groups, expected ${n}`);
      if (r.cards !== Math.min(n, FIRST_PAGE)) fail(`${r.cards} .group cards rendered, expected ${Math.min(n, FIRST_PAGE)}`);
      if (n === 0 && !r.groupsEmpty) fail('no groups, but no "No duplicates found" (.empty) message');
    }
    if (opts['map-points'] !== undefined) {
      const m = opts['map-points'];
      if (r.dataMap !== m) fail(`the data holds ${r.dataMap} images with a map position, expected ${m}`);
      if (m > 0 && !r.canvas) fail('no canvas#map');
      else if (m > 0 && r.ink === 0) fail('canvas#map is blank');
      if (m === 0 && !r.mapEmpty) fail('no map points, but no .empty message in the map section');
    }
    // The template gives the cards content-visibility:auto (the browser skips laying out and painting
    // those out of view); a full-page screenshot would show those empty, so render them all for it.
    await page.addStyleTag({ content: '.group{content-visibility:visible!important}' });
    await page.evaluate(() => Promise.all([...document.images].map(i => i.decode().catch(() => {}))));
    await page.screenshot({ path: shot, fullPage: true });
    await context.close();
  }
} finally {
  await browser.close();
}
function median(xs) {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b), h = s.length >> 1;
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
}
console.log(JSON.stringify({
  groups_rendered: groupsRendered, map_points: mapPoints, console_errors: consoleErrors.length,
  requests: badRequests, load_ms: median(times), load_ms_runs: times, frame_ms: median(frames), frame_ms_runs: frames,
}));
if (failures.length) {
  for (const f of failures) console.error(`check.mjs: ${f}`);
  process.exit(1);
}
