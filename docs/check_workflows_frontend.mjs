// Load each UI-format workflow in the real ComfyUI frontend (headless Chromium) and report what it made of it.
//
// For every workflows/*.json: app.loadGraphData(json), then record nodes the frontend does not know, the
// dialogs and toasts it showed (missing nodes / models, schema validation), page errors, widget values it
// changed while loading (a sign of a widget order or count mismatch), and the API prompt from
// app.graphToPrompt(). The prompt is written to OUT/<name>.json and compared with workflows/api/<name>.json;
// a screenshot goes to OUT/<name>.png. No dependencies: it speaks the DevTools protocol over Node's WebSocket.
//
//   apt-get install chromium-headless-shell      # or chromium
//   node --experimental-websocket docs/check_workflows_frontend.mjs --out /tmp/frontend-check [workflows/x.json ...]
//
// Options: --url http://127.0.0.1:8188 (a running ComfyUI), --browser PATH (default: $CHROMIUM, then
// chromium-headless-shell / chromium on PATH), --timeout SECONDS (page start, default 120),
// --window W,H (browser window, default 1600,1000; a wider one gives screenshots with readable node text).
// Exit status 0 only when every workflow loaded cleanly and its prompt matches the API file.

import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, delimiter, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const BROWSERS = ["chromium-headless-shell", "chromium", "chromium-browser", "google-chrome"];

function parseArgs(argv) {
  const args = { url: "http://127.0.0.1:8188", out: null, browser: process.env.CHROMIUM || null, timeout: 120,
    window: "1600,1000", files: [] };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (["--url", "--out", "--browser", "--timeout", "--window"].includes(flag)) {
      if (i + 1 >= argv.length) throw new Error(`${flag} needs a value`);
      args[flag.slice(2)] = flag === "--timeout" ? Number(argv[++i]) : argv[++i];
    } else if (flag.startsWith("--")) {
      throw new Error(`unknown option ${flag}`);
    } else {
      args.files.push(resolve(flag));
    }
  }
  if (!args.out) throw new Error("--out DIR is required (a new or empty folder for prompts and screenshots)");
  if (args.files.length === 0) {
    const folder = join(REPO, "workflows");
    args.files = readdirSync(folder).filter((f) => f.endsWith(".json")).sort().map((f) => join(folder, f));
  }
  return args;
}

function findBrowser(explicit) {
  if (explicit) return explicit;
  for (const name of BROWSERS) {
    for (const dir of (process.env.PATH || "").split(delimiter)) {
      if (dir && existsSync(join(dir, name))) return join(dir, name);
    }
  }
  throw new Error(`no Chromium found (tried ${BROWSERS.join(", ")}); apt-get install chromium-headless-shell, or --browser`);
}

function launchBrowser(path, profile, timeoutMs, windowSize) {
  const flags = ["--headless", "--disable-gpu", "--remote-debugging-port=0", `--user-data-dir=${profile}`,
    `--window-size=${windowSize}`, "--no-first-run", "about:blank"];
  if (process.getuid?.() === 0) flags.unshift("--no-sandbox"); // Chromium refuses to sandbox as root
  const child = spawn(path, flags, { stdio: ["ignore", "ignore", "pipe"] });
  return new Promise((resolvePromise, reject) => {
    let log = "";
    const timer = setTimeout(() => reject(new Error(`${path} did not start:\n${log}`)), timeoutMs);
    child.stderr.on("data", (chunk) => {
      log += chunk;
      const match = log.match(/DevTools listening on (ws:\/\/\S+)/);
      if (match) {
        clearTimeout(timer);
        resolvePromise({ child, endpoint: match[1] });
      }
    });
    child.on("exit", (code) => reject(new Error(`${path} exited (${code}):\n${log}`)));
  });
}

class DevTools {
  constructor(socket) {
    this.socket = socket;
    this.nextId = 1;
    this.pending = new Map();
    this.listeners = [];
    socket.addEventListener("message", (event) => {
      const message = JSON.parse(event.data);
      if (message.id && this.pending.has(message.id)) {
        const { resolveCall, rejectCall, method } = this.pending.get(message.id);
        this.pending.delete(message.id);
        if (message.error) rejectCall(new Error(`${method}: ${message.error.message}`));
        else resolveCall(message.result);
      } else if (message.method) {
        for (const listener of this.listeners) listener(message.method, message.params);
      }
    });
  }

  static async connect(url) {
    const socket = new WebSocket(url);
    await new Promise((ok, fail) => {
      socket.addEventListener("open", ok, { once: true });
      socket.addEventListener("error", () => fail(new Error(`cannot connect to ${url}`)), { once: true });
    });
    return new DevTools(socket);
  }

  send(method, params = {}) {
    const id = this.nextId++;
    this.socket.send(JSON.stringify({ id, method, params }));
    return new Promise((resolveCall, rejectCall) => this.pending.set(id, { resolveCall, rejectCall, method }));
  }

  /** Run an async page function with JSON arguments; returns its JSON result or throws the page error. */
  async call(fn, ...args) {
    const expression = `(${fn})(...${JSON.stringify(args)})`;
    const reply = await this.send("Runtime.evaluate", { expression, awaitPromise: true, returnByValue: true });
    if (reply.exceptionDetails) {
      const details = reply.exceptionDetails;
      throw new Error(details.exception?.description || details.text);
    }
    return reply.result.value;
  }
}

// ---- functions that run inside the page (installed as page globals by installPageHelpers) --------------------------------------------------------------

function pageReady() {
  const app = window.app;
  return Boolean(app && (app.rootGraph || app.graph) && app.canvas && window.LiteGraph
    && Object.keys(window.LiteGraph.registered_node_types).length > 50);
}

/** The frontend's dialog store (Pinia), when this frontend version exposes it. */
function pageDialogStore() {
  return document.querySelector("#vue-app")?.__vue_app__?.config.globalProperties.$pinia?._s.get("dialog") ?? null;
}

/** Open dialogs: the store's keys (e.g. global-load-workflow-warning) and each dialog's text. */
function pageOpenDialogs() {
  const store = pageDialogStore();
  const keys = store?.dialogStack?.map((d) => d.key) ?? [];
  const texts = [...document.querySelectorAll(".p-dialog")].map((e) => e.innerText.trim().replace(/\s+/g, " "));
  return { keys, texts: texts.filter(Boolean) };
}

function pageCloseDialogs() {
  const store = pageDialogStore();
  for (const dialog of [...(store?.dialogStack ?? [])]) store.closeDialog({ key: dialog.key });
  for (const button of document.querySelectorAll(".p-dialog-close-button, .p-dialog-header-close")) button.click();
  for (const toast of document.querySelectorAll(".p-toast-close-button")) toast.click();
}

/** Close open dialogs and toasts (store, close buttons, then Escape); returns what is still open. */
async function closeDialogs(page) {
  await page.call(pageCloseDialogs);
  for (const type of ["keyDown", "keyUp"]) {
    await page.send("Input.dispatchKeyEvent", { type, key: "Escape", code: "Escape", windowsVirtualKeyCode: 27 });
  }
  await new Promise((done) => setTimeout(done, 300));
  return page.call(pageOpenDialogs);
}

function dialogsOpenedSince(before, now) {
  const keys = now.keys.filter((k) => !before.keys.includes(k));
  const texts = now.texts.filter((t) => !before.texts.includes(t));
  return keys.length || texts.length ? [`${keys.join(", ") || "dialog"}: ${texts.join(" | ")}`] : [];
}

/** Show the whole graph (for the screenshot); best effort, the frontend's canvas API differs by version. */
function pageFitView(graph) {
  const nodes = graph._nodes || [];
  if (!nodes.length || !window.app.canvas?.ds?.fitToBounds) return;
  const xs = nodes.flatMap((n) => [n.pos[0], n.pos[0] + n.size[0]]);
  const ys = nodes.flatMap((n) => [n.pos[1] - 30, n.pos[1] + n.size[1]]); // 30: the title bar
  const [x, y] = [Math.min(...xs), Math.min(...ys)];
  window.app.canvas.ds.fitToBounds([x, y, Math.max(...xs) - x, Math.max(...ys) - y]);
  window.app.canvas.setDirty(true, true);
}

async function pageLoadWorkflow(workflow, name) {
  const app = window.app;
  const toastTexts = () => [...document.querySelectorAll(".p-toast-message")].map((e) => e.innerText.trim());
  const before = pageOpenDialogs();
  const toastsBefore = new Set(toastTexts());
  const registered = window.LiteGraph.registered_node_types;
  const unknown = [...new Set(workflow.nodes.filter((n) => !(n.type in registered)).map((n) => n.type))];
  await app.loadGraphData(workflow, true, true, name);
  await new Promise((done) => setTimeout(done, 500)); // dialogs and toasts mount asynchronously
  const graph = app.rootGraph || app.graph;
  pageFitView(graph);
  const saved = graph.serialize();
  const fileWidgets = Object.fromEntries(workflow.nodes.map((n) => [String(n.id), n.widgets_values ?? []]));
  const widgetChanges = saved.nodes
    .filter((n) => JSON.stringify(n.widgets_values ?? []) !== JSON.stringify(fileWidgets[String(n.id)] ?? []))
    .map((n) => ({ id: n.id, type: n.type, file: fileWidgets[String(n.id)], frontend: n.widgets_values }));
  const flagged = graph._nodes.filter((n) => n.has_errors).map((n) => ({ id: n.id, type: n.type }));
  const prompt = await app.graphToPrompt();
  return {
    unknown, flagged, widgetChanges,
    dialogs: dialogsOpenedSince(before, pageOpenDialogs()),
    toasts: toastTexts().filter((t) => t && !toastsBefore.has(t)),
    counts: { nodes: [workflow.nodes.length, saved.nodes.length], links: [workflow.links.length, saved.links.length] },
    prompt: prompt.output,
  };
}

const PAGE_HELPERS = [pageDialogStore, pageOpenDialogs, pageCloseDialogs, dialogsOpenedSince, pageFitView, pageLoadWorkflow];

async function installPageHelpers(page) {
  const reply = await page.send("Runtime.evaluate", { expression: PAGE_HELPERS.map(String).join("\n") });
  if (reply.exceptionDetails) throw new Error(`page helpers: ${reply.exceptionDetails.text}`);
}

// ---- comparison with workflows/api ------------------------------------------------------------------

function promptDifferences(frontend, shipped) {
  const diffs = [];
  const ids = new Set([...Object.keys(frontend), ...Object.keys(shipped)]);
  for (const id of [...ids].sort((a, b) => Number(a) - Number(b))) {
    const a = frontend[id];
    const b = shipped[id];
    if (!a || !b) {
      diffs.push(`node ${id} (${(a || b).class_type}) only in ${a ? "the frontend's prompt" : "the API file"}`);
      continue;
    }
    if (a.class_type !== b.class_type) diffs.push(`node ${id}: class ${a.class_type} vs ${b.class_type}`);
    for (const input of new Set([...Object.keys(a.inputs), ...Object.keys(b.inputs)])) {
      const left = JSON.stringify(a.inputs[input]);
      const right = JSON.stringify(b.inputs[input]);
      if (left !== right) diffs.push(`node ${id} (${a.class_type}).${input}: frontend ${left} vs API file ${right}`);
    }
  }
  return diffs;
}

function writeNew(path, data) {
  writeFileSync(path, data, { flag: "wx" }); // never overwrite an earlier run's files
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  if (typeof WebSocket === "undefined") {
    throw new Error("this Node has no WebSocket: run it with node --experimental-websocket (Node 20/21) or Node 22+");
  }
  mkdirSync(args.out, { recursive: true });
  const profile = mkdtempSync(join(tmpdir(), "comfy-frontend-"));
  const { child, endpoint } = await launchBrowser(findBrowser(args.browser), profile, 30_000, args.window);
  let failures = 0;
  try {
    const port = new URL(endpoint).port;
    const targets = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
    const page = await DevTools.connect(targets.find((t) => t.type === "page").webSocketDebuggerUrl);
    const events = [];
    page.listeners.push((method, params) => {
      if (method === "Runtime.exceptionThrown") events.push(`exception: ${params.exceptionDetails.exception?.description || params.exceptionDetails.text}`);
      if (method === "Runtime.consoleAPICalled" && ["error", "warning", "assert"].includes(params.type)) {
        events.push(`console.${params.type}: ${params.args.map((a) => a.value ?? a.description ?? "").join(" ").slice(0, 500)}`);
      }
    });
    await page.send("Runtime.enable");
    await page.send("Page.enable");
    await page.send("Page.navigate", { url: args.url });
    const deadline = Date.now() + args.timeout * 1000;
    while (!(await page.call(pageReady).catch(() => false))) {
      if (Date.now() > deadline) throw new Error(`the ComfyUI frontend at ${args.url} did not start in ${args.timeout} s`);
      await new Promise((done) => setTimeout(done, 500));
    }
    await installPageHelpers(page);
    await new Promise((done) => setTimeout(done, 2000)); // first-run dialogs (templates) open a moment later
    const startup = events.splice(0);
    const startupDialogs = await page.call(pageOpenDialogs);
    const stillOpen = await closeDialogs(page);
    console.log(`frontend ready at ${args.url}${startup.length ? ` (${startup.length} console messages while starting)` : ""}`);
    if (startupDialogs.keys.length || startupDialogs.texts.length) {
      const state = stillOpen.texts.length ? "NOT closed: screenshots will show it" : "closed";
      console.log(`   startup dialog ${startupDialogs.keys.join(", ")} (${state}): ${startupDialogs.texts.join(" | ").slice(0, 100)}`);
    }

    for (const file of args.files) {
      const name = basename(file, ".json");
      const workflow = JSON.parse(readFileSync(file, "utf8"));
      events.length = 0;
      let result;
      try {
        result = await page.call(pageLoadWorkflow, workflow, `${name}.json`);
      } catch (error) {
        result = { error: String(error.message || error) };
      }
      result.pageMessages = events.splice(0);
      const shot = await page.send("Page.captureScreenshot", { format: "png" });
      writeNew(join(args.out, `${name}.png`), Buffer.from(shot.data, "base64"));
      await closeDialogs(page);
      const apiFile = join(dirname(file), "api", `${name}.json`);
      if (result.prompt) {
        writeNew(join(args.out, `${name}.json`), JSON.stringify(result.prompt, null, 2) + "\n");
        result.apiDifferences = existsSync(apiFile)
          ? promptDifferences(result.prompt, JSON.parse(readFileSync(apiFile, "utf8")))
          : [`no ${apiFile} to compare with`];
      }
      const { prompt, ...report } = result;
      writeNew(join(args.out, `${name}.report.json`), JSON.stringify(report, null, 2) + "\n");
      const problems = [
        ...(report.error ? [`load failed: ${report.error}`] : []),
        ...(report.unknown || []).map((t) => `unknown node type ${t}`),
        ...(report.flagged || []).map((n) => `node ${n.id} (${n.type}) flagged with errors`),
        ...(report.dialogs || []).map((d) => `dialog: ${d.replace(/\s+/g, " ").slice(0, 300)}`),
        ...(report.toasts || []).map((t) => `toast: ${t.replace(/\s+/g, " ").slice(0, 300)}`),
        ...(report.widgetChanges || []).map((c) => `node ${c.id} (${c.type}) widgets changed on load: file ${JSON.stringify(c.file)} -> frontend ${JSON.stringify(c.frontend)}`),
        ...(report.apiDifferences || []),
      ];
      if (report.counts && (report.counts.nodes[0] !== report.counts.nodes[1] || report.counts.links[0] !== report.counts.links[1])) {
        problems.push(`nodes/links file ${report.counts.nodes[0]}/${report.counts.links[0]} -> loaded ${report.counts.nodes[1]}/${report.counts.links[1]}`);
      }
      failures += problems.length ? 1 : 0;
      console.log(`== ${name}: ${problems.length ? "PROBLEMS" : "loads cleanly, prompt matches the API file"}`);
      for (const line of problems) console.log(`   ! ${line}`);
      for (const line of report.pageMessages) console.log(`   page ${line}`);
    }
    console.log(`${args.files.length - failures} of ${args.files.length} workflows loaded cleanly; files in ${args.out}`);
  } finally {
    child.kill();
    rmSync(profile, { recursive: true, force: true });
  }
  return failures ? 1 : 0;
}

main().then((code) => process.exit(code), (error) => {
  console.error(`error: ${error.message}`);
  process.exit(2);
});
